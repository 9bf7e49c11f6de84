"""The tiny synthetic training run the reliability and signal tests interrupt, resume and
compare: 2 classes of 4x4 inputs, a 2-layer MLP, 20 % symmetric noise, dynamics recorded."""

from __future__ import annotations

import copy
from typing import Any

from nclab.train import TrainConfig

TINY: dict[str, Any] = {
    "epochs": 4, "batch_size": 16, "device": "cpu", "threads": 1, "record_dynamics": True,
    "dataset": {"name": "synthetic", "classes": 2,
                "options": {"train_per_class": 20, "test_per_class": 10, "shape": [1, 4, 4]}},
    "noise": {"kind": "symmetric", "rate": 0.2},
    "model": {"depth": 2, "width": 8},
    "optim": {"lr": 0.05},
}


def tiny_dict(**over: Any) -> dict[str, Any]:
    """A copy of :data:`TINY` with ``over`` applied; a dotted key (``"model.width"``) sets one
    nested field."""
    data = copy.deepcopy(TINY)
    for k, v in over.items():
        cur = data
        *head, last = k.split(".")
        for h in head:
            cur = cur.setdefault(h, {})
        cur[last] = v
    return data


def tiny_config(**over: Any) -> TrainConfig:
    return TrainConfig.from_dict(tiny_dict(**over))
