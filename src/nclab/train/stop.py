"""The terminal-phase stop rule, shared by the solo and the stacked trainer.

The claims about neural collapse concern the terminal phase of training: the network
fits its (noisy) training labels. A run configured with ``stop.train_acc = a`` and
``stop.patience = p`` stops at the end of the first epoch ``e`` such that the eval-mode
accuracy on the noisy training labels was ``>= a`` in each of the epochs ``e-p+1 .. e``;
``terminal_epoch = e - p + 1`` is the epoch it entered the terminal phase. ``epochs`` is
the cap: a run that reaches it first has ``stop_reason = "epochs"`` and, if the streak never
completed, ``terminal_epoch = None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["StopTracker", "train_accuracy"]


@dataclass
class StopTracker:
    """Counts the streak of epochs at or above ``train_acc``; checkpointed with the run."""

    train_acc: float | None
    patience: int = 1
    streak: int = 0
    terminal_epoch: int | None = None  # first epoch of a completed streak

    @classmethod
    def from_config(cls, stop: Any) -> "StopTracker":
        return cls(train_acc=stop.train_acc, patience=stop.patience)

    @property
    def active(self) -> bool:
        return self.train_acc is not None

    @property
    def fired(self) -> bool:
        return self.terminal_epoch is not None

    def update(self, epoch: int, acc: float) -> bool:
        """Feed epoch ``epoch``'s accuracy; True when the rule fires at this epoch."""
        if not self.active or self.fired:
            return False
        self.streak = self.streak + 1 if acc >= self.train_acc else 0
        if self.streak >= self.patience:
            self.terminal_epoch = epoch - self.patience + 1
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"streak": self.streak, "terminal_epoch": self.terminal_epoch}

    def load(self, state: dict[str, Any] | None) -> None:
        if state:
            self.streak = int(state.get("streak", 0))
            te = state.get("terminal_epoch")
            self.terminal_epoch = None if te is None else int(te)

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
