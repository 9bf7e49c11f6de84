"""Training under label noise: typed config, the loop, checkpoints and resume.

``train(config, run_dir=...)`` runs one experiment and writes ``config.yaml``,
``env.json``, ``metrics.jsonl``, ``noise.npz``, ``status.json`` and
``checkpoints/last.pt`` to the run directory (see :mod:`nclab.store.rundir`).

The names below load on first use (PEP 562), so the torch-free parts of this package (its
config and signal handling, which a sweep driver needs) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "CheckpointError": "nclab.store.checkpoint",
    "load_checkpoint": "nclab.store.checkpoint",
    "save_checkpoint": "nclab.store.checkpoint",
    "DatasetConfig": "nclab.train.config",
    "LossConfig": "nclab.train.config",
    "ModelConfig": "nclab.train.config",
    "NoiseConfig": "nclab.train.config",
    "OptimConfig": "nclab.train.config",
    "ScheduleConfig": "nclab.train.config",
    "TrainConfig": "nclab.train.config",
    "RunData": "nclab.train.data",
    "prepare_data": "nclab.train.data",
    "resolve_device": "nclab.train.data",
    "batch_bounds": "nclab.train.engine",
    "TIMING_KEYS": "nclab.train.loop",
    "RunResult": "nclab.train.loop",
    "train": "nclab.train.loop",
    "train_stack": "nclab.train.loop",
    "RunDirError": "nclab.store.rundir",
    "lr_at": "nclab.train.schedule",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    raise AttributeError(f"module 'nclab.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from nclab.store.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from nclab.store.rundir import RunDirError
    from nclab.train.config import (
        DatasetConfig,
        LossConfig,
        ModelConfig,
        NoiseConfig,
        OptimConfig,
        ScheduleConfig,
        TrainConfig,
    )
    from nclab.train.data import RunData, prepare_data, resolve_device
    from nclab.train.engine import batch_bounds
    from nclab.train.loop import TIMING_KEYS, RunResult, train, train_stack
    from nclab.train.schedule import lr_at
