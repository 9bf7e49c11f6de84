"""Learning-rate schedules as pure functions of the epoch.

Because the rate of epoch ``e`` depends only on ``(config, e)``, a resumed run
needs no scheduler state and cannot drift from an uninterrupted one.
"""

from __future__ import annotations

import math

from nclab.train.config import ScheduleConfig


def lr_at(schedule: ScheduleConfig, *, base_lr: float, epoch: int, total_epochs: int) -> float:
    """Learning rate used during (1-based) ``epoch``.

    - ``none``: ``base_lr``;
    - ``step``: ``base_lr * gamma ** floor((epoch - 1) / step_size)`` (PyTorch ``StepLR``);
    - ``multistep``: ``base_lr * gamma ** #{m in milestones : m <= epoch - 1}`` (``MultiStepLR``);
    - ``cosine``: ``min_lr + (base_lr - min_lr) (1 + cos(pi (epoch - 1) / total_epochs)) / 2``.
    """
    if epoch < 1:
        raise ValueError(f"epoch is 1-based; got {epoch}")
    done = epoch - 1  # completed epochs, PyTorch's scheduler counter
    if schedule.name == "none":
        return base_lr
    if schedule.name == "step":
        return base_lr * schedule.gamma ** (done // schedule.step_size)
    if schedule.name == "multistep":
        return base_lr * schedule.gamma ** sum(1 for m in schedule.milestones if m <= done)
    if schedule.name == "cosine":
        return schedule.min_lr + (base_lr - schedule.min_lr) * (1 + math.cos(math.pi * done / total_epochs)) / 2
    raise ValueError(f"unknown schedule {schedule.name!r}")
