"""The terminal phase: recorded as an outcome, and optionally a stop rule.

The claims about neural collapse concern the terminal phase of training: the network
fits its (noisy) training labels. Two uses, shared by the solo and the stacked trainer:

Outcome (``terminal_acc = a``, or ``stop.train_acc`` when only that is set)
    every epoch the eval-mode accuracy on the *noisy* training labels is measured, and the
    final record carries ``terminal_epoch``: the first epoch from which that accuracy stayed
    ``>= a`` up to the run's last epoch, or ``None`` ("never": it was below ``a`` at the
    end). Recording it never changes how the run trains.
Stop rule (``stop.train_acc = a``, ``stop.patience = p``)
    the run stops at the end of the first epoch ``e`` such that the accuracy was ``>= a`` in
    each of the epochs ``e-p+1 .. e`` (``stop_reason = "terminal"``); its ``terminal_epoch``
    is then ``e - p + 1``. ``epochs`` is the cap (``stop_reason = "epochs"``).

The study trains every run to the end of its schedule and uses only the outcome, so the
two runs of a CE/LS pair are always measured at the same epoch and learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["StopTracker", "train_accuracy"]


@dataclass
class StopTracker:
    """Tracks the terminal phase (outcome) and the optional stop rule; checkpointed with the run.

    ``train_acc``/``patience``: the stop rule (``train_acc=None``: never stops).
    ``track_acc``: the outcome's threshold (defaults to ``train_acc``).
    """

    train_acc: float | None
    patience: int = 1
    track_acc: float | None = None
    streak: int = 0
    since: int | None = None  # first epoch of the current streak at or above track_acc
    stopped_at: int | None = None  # first epoch of the streak that fired the stop rule

    def __post_init__(self) -> None:
        if self.track_acc is None:
            self.track_acc = self.train_acc

    @classmethod
    def from_config(cls, stop: Any, *, terminal_acc: float | None = None) -> "StopTracker":
        if stop is None:
            return cls(train_acc=None, track_acc=terminal_acc)
        return cls(train_acc=stop.train_acc, patience=stop.patience, track_acc=terminal_acc)

    @property
    def active(self) -> bool:
        """Whether the trainer must measure the noisy-label train accuracy every epoch."""
        return self.track_acc is not None

    @property
    def fired(self) -> bool:
        """Whether the stop rule ended the run."""
        return self.stopped_at is not None

    @property
    def terminal_epoch(self) -> int | None:
        """First epoch from which the accuracy held at or above ``track_acc`` (so far)."""
        return self.stopped_at if self.fired else self.since

    def update(self, epoch: int, acc: float) -> bool:
        """Feed epoch ``epoch``'s accuracy; True when the stop rule fires at this epoch."""
        if not self.active or self.fired:
            return False
        if acc >= self.track_acc:
            self.since = epoch if self.since is None else self.since
        else:
            self.since = None
        if self.train_acc is None:
            return False
        self.streak = self.streak + 1 if acc >= self.train_acc else 0
        if self.streak >= self.patience:
            self.stopped_at = epoch - self.patience + 1
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"streak": self.streak, "since": self.since, "stopped_at": self.stopped_at,
                "terminal_epoch": self.terminal_epoch}

    def load(self, state: dict[str, Any] | None) -> None:
        if state:
            self.streak = int(state.get("streak", 0))
            opt = lambda v: None if v is None else int(v)  # noqa: E731
            if "stopped_at" in state:
                self.stopped_at, self.since = opt(state.get("stopped_at")), opt(state.get("since"))
            else:  # a checkpoint written before the outcome existed: its terminal_epoch was the stop
                self.stopped_at = opt(state.get("terminal_epoch"))

    def summary(self, *, finished_by_rule: bool) -> dict[str, Any]:
        """The keys every final record carries."""
        return {"stop_reason": "terminal" if finished_by_rule else "epochs", "terminal_epoch": self.terminal_epoch}


@torch.no_grad()
def train_accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int) -> float:
    """Eval-mode accuracy of ``model`` on ``(x, y)`` (the noisy training labels); mode restored."""
    was = model.training
    model.eval()
    try:
        hits = sum(int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
                   for i in range(0, x.shape[0], batch_size))
    finally:
        model.train(was)
    return hits / max(1, x.shape[0])
