"""Stacks: which runs may train together, and how a sweep groups them.

A small model's optimizer step is mostly per-call overhead (Python, dispatch, kernel
launches), not arithmetic. :func:`train_stack` trains K runs that share an architecture
and a data shape together; for nclab's MLP that is one
:class:`~nclab.train.stacked_model.StackedModel` whose every step is one batched
computation for all K members, so the overhead is paid once.

What stays per member — everything that defines a run: its data (its own subsample,
noise draw and clean labels), its batch order (its own ``"batches"`` generator), its
initialisation (its own ``"init"`` generator), loss, learning-rate schedule, optimizer
hyperparameters and state, stop rule, epoch cap, and its run directory, written exactly
as a solo run writes it. A solo run is a stack of one (:func:`nclab.train.train` calls
:func:`train_stack`), and a member's arithmetic does not depend on the stack's size, so a
run gives the same bits alone or in any stack.

Compatible runs (:func:`stack_key`): same model config, batch size, dataset (name,
classes, per-class count, preprocessing, validation fraction), optimizer kind, Nesterov
flag, device, threads, checkpoint cadence. Seeds, noise, losses, learning rates,
momentum, weight decay, schedules, stop rules and epoch caps may differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from nclab.train.config import TrainConfig
from nclab.train.loop import train_stack

__all__ = ["train_stack", "stack_key", "group_stacks"]


def stack_key(config: TrainConfig | dict) -> str:
    """Runs with equal keys can share a stack (see the module docstring)."""
    c = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    d = c.dataset.model_dump(mode="json")
    key = {
        "model": c.model.model_dump(mode="json"), "batch_size": c.batch_size, "dataset": d,
        "optim": [c.optim.name, c.optim.nesterov], "device": c.device, "threads": c.threads,
        "checkpoint_every": c.checkpoint_every, "eval_batch_size": c.eval_batch_size,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def group_stacks(items: Sequence[Any], *, size: int, config_of=lambda r: r, key=None) -> list[list[Any]]:
    """Split ``items`` into stacks of at most ``size`` compatible runs (order kept within a key);
    ``key(config)`` defaults to :func:`stack_key`."""
    if size < 1:
        raise ValueError(f"stack size must be >= 1; got {size}")
    key = key or stack_key
    groups: dict[str, list[Any]] = {}
    for it in items:
        groups.setdefault(key(config_of(it)), []).append(it)
    out: list[list[Any]] = []
    for members in groups.values():
        out.extend(members[i : i + size] for i in range(0, len(members), size))
    return out
