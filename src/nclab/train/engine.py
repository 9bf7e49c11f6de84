"""Engines: what trains the members of a stack for one epoch.

An engine owns the arithmetic of training (forward, backward, optimizer step) for K
runs at once; everything else about a run (its files, its schedule, evaluation, the
stop rule) is the run session's and the epoch policy's. Which engine trains a run
depends only on its model, never on how many runs share the stack, so a run's numbers
do not depend on its scheduling:

* :class:`StackEngine`: models the stacked model can interpret (nclab's MLP) train as
  one :class:`~nclab.train.stacked_model.StackedModel` with batched kernels, whether
  the stack holds one member or many;
* :class:`ModuleEngine`: any other model trains as its own ``nn.Module`` with its
  torch optimizer, member after member.

Both draw each member's batch order from the member's own ``"batches"`` generator and
expose the same five operations: ``train_epoch``, ``params_finite``, ``train_logits``,
``export`` (member ``k``'s weights and optimizer state into its solo model and
optimizer, the checkpoint format) and ``remove``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from nclab.losses import get_loss
from nclab.models import build_model
from nclab.seeding import torch_generator
from nclab.train.config import OptimConfig, TrainConfig
from nclab.train.evaluate import eval_logits
from nclab.train.schedule import lr_at
from nclab.train.stacked_model import StackedModel, StackedOptimizer, stackable, stacked_ce_ls_loss

__all__ = ["Member", "ModuleEngine", "StackEngine", "TrainingSet", "batch_bounds", "fit", "make_engine", "make_optimizer",
           "train_one_epoch"]


def make_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, L2 weight decay) or Adam (``momentum``/``nesterov`` unused).

    ``cfg.fused`` selects PyTorch's fused implementation (the same update rule; results
    differ from the per-tensor loop only by floating-point rounding order).
    """
    impl = {"fused": True} if cfg.fused else {"foreach": False}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov, **impl)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each batch; a trailing batch of one sample joins the previous one
    (BatchNorm cannot normalise a single sample in train mode)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module, x: Tensor, y: Tensor, *,
    batch_size: int, generator: torch.Generator,
) -> float:
    """One pass over ``x`` in a random order drawn from ``generator``; returns the mean batch loss
    (sample-weighted). No Python work per sample: batches are index slices of in-memory tensors."""
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator).to(x.device)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for s, e in batch_bounds(n, batch_size):
        idx = perm[s:e]
        loss = loss_fn(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().double() * (e - s)
    return float(total / n)


def make_engine(members: Sequence[Any]) -> "StackEngine | ModuleEngine":
    """The engine for ``members`` (run sessions with ``model``, ``optimizer``, ``loss_fn``,
    ``batches``, ``data``, ``config``): chosen by the model alone."""
    return StackEngine(members) if stackable(members[0].model) else ModuleEngine(members)


class ModuleEngine:
    """Members trained one after another, each as a plain ``nn.Module`` with its torch optimizer."""

    def __init__(self, members: Sequence[Any]):
        self.members = list(members)

    def train_epoch(self, lrs: Sequence[float]) -> list[float]:
        losses = []
        for m, lr in zip(self.members, lrs):
            for group in m.optimizer.param_groups:
                group["lr"] = lr
            losses.append(train_one_epoch(m.model, m.optimizer, m.loss_fn, m.data.x_train, m.data.y_train,
                                          batch_size=m.config.batch_size, generator=m.batches))
        return losses

    def params_finite(self) -> list[bool]:
        return [all(bool(torch.isfinite(p).all()) for p in m.model.parameters()) for m in self.members]

    def train_logits(self) -> list[Tensor]:
        """Eval-mode logits of every member on its own training inputs."""
        return [eval_logits(m.model, m.data.x_train, batch_size=m.config.eval_batch_size) for m in self.members]

    def export(self, k: int) -> None:
        """Nothing to copy: each member trains its solo model and optimizer."""

    def remove(self, gone: set[int]) -> None:
        self.members = [m for k, m in enumerate(self.members) if k not in gone]


class StackEngine:
    """The members as one stacked model + stacked optimizer + stacked data."""

    def __init__(self, members: Sequence[Any]):
        self.members = list(members)
        self.model = StackedModel([m.model for m in members])
        c0 = members[0].config
        self.optimizer = StackedOptimizer(
            self.model.parameters(), name=c0.optim.name,
            lr=torch.tensor([m.config.optim.lr for m in members], dtype=torch.float64),
            momentum=torch.tensor([m.config.optim.momentum if m.config.optim.name == "sgd" else 0.0 for m in members],
                                  dtype=torch.float64),
            weight_decay=torch.tensor([m.config.optim.weight_decay for m in members], dtype=torch.float64),
            nesterov=c0.optim.nesterov, transposed=self.model.transposed_flags(),
        )
        for k, m in enumerate(members):
            st = m.optimizer.state_dict()["state"]
            if st:
                self.optimizer.load_member(k, st)
        self.lrs = [m.config.optim.lr for m in members]
        self._stack_data()

    def _stack_data(self) -> None:
        xs = [m.data.x_train for m in self.members]
        self.shared_x = all(x is xs[0] or (x.shape == xs[0].shape and torch.equal(x, xs[0])) for x in xs[1:])
        self.x = xs[0] if self.shared_x else torch.stack(xs)
        # rows as a 2-D table: index_select is ~4x faster than advanced indexing here
        self.input_shape = tuple(xs[0].shape[1:])
        self.rows = self.x.reshape(-1, math.prod(self.input_shape)).contiguous()
        self.row_offset = 0 if self.shared_x else (
            torch.arange(len(xs), device=xs[0].device) * xs[0].shape[0]).unsqueeze(1)
        self.y = torch.stack([m.data.y_train for m in self.members])
        losses = [m.config.loss for m in self.members]
        self.vector_loss = all(lc.name in ("ce", "ls") for lc in losses)
        self.alpha = torch.tensor([lc.alpha if lc.name == "ls" else 0.0 for lc in losses], dtype=torch.float64,
                                  device=self.y.device)

    def remove(self, gone: set[int]) -> None:
        if not gone:  # the common case, every epoch: nothing to re-stack
            return
        keep = [k for k in range(len(self.members)) if k not in gone]
        self.members = [self.members[k] for k in keep]
        self.lrs = [self.lrs[k] for k in keep]
        if not keep:
            return
        self.model.select(keep)
        self.optimizer.select(keep, self.model.parameters())
        self._stack_data()

    def _gather(self, idx: Tensor) -> Tensor:
        """Inputs ``(K, B, ...)`` for per-member row indices ``idx`` ``(K, B)``."""
        rows = torch.index_select(self.rows, 0, (idx + self.row_offset).reshape(-1))
        return rows.view(*idx.shape, *self.input_shape)

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """``(K,)`` per-member mean losses of one batch."""
        if self.vector_loss:
            return stacked_ce_ls_loss(logits, y, self.alpha.to(logits.dtype))
        return torch.stack([m.loss_fn(logits[k], y[k]) for k, m in enumerate(self.members)])

    def train_epoch(self, lrs: Sequence[float]) -> list[float]:
        """One epoch for every member (its own permutation); sample-weighted mean losses."""
        self.lrs = list(lrs)
        self.optimizer.set_lr(torch.tensor(self.lrs, dtype=torch.float64))
        self.model.train()
        n = self.y.shape[1]
        dev = self.y.device
        perms = torch.stack([torch.randperm(n, generator=m.batches).to(dev) for m in self.members])
        total = torch.zeros(len(self.members), dtype=torch.float64, device=dev)
        bs = self.members[0].config.batch_size
        for s, e in batch_bounds(n, bs):
            idx = perms[:, s:e]
            self.optimizer.zero_grad()
            losses = self._loss(self.model(self._gather(idx)), self.y.gather(1, idx))
            losses.sum().backward()  # members are independent: d(sum)/d(theta_k) = d(L_k)/d(theta_k)
            self.optimizer.step()
            total += losses.detach().double() * (e - s)
        return (total / n).tolist()

    def params_finite(self) -> list[bool]:
        return self.model.finite().tolist()

    @torch.no_grad()
    def train_logits(self) -> Tensor:
        """Eval-mode logits of every member on its own training inputs, ``(K, n, C)``."""
        self.model.eval()
        n = self.y.shape[1]
        batch_size = self.members[0].config.eval_batch_size
        outs = []
        for i in range(0, n, batch_size):
            idx = torch.arange(i, min(i + batch_size, n), device=self.y.device).expand(len(self.members), -1)
            outs.append(self.model(self._gather(idx)))
        self.model.train()
        return torch.cat(outs, dim=1)

    def export(self, k: int) -> None:
        """Copy member ``k``'s weights and optimizer state into its solo model/optimizer."""
        m = self.members[k]
        m.model.load_state_dict(self.model.member_state(k))
        sd = m.optimizer.state_dict()
        sd["state"] = self.optimizer.member_state(k)
        for g in sd["param_groups"]:
            g["lr"] = self.lrs[k]
        m.optimizer.load_state_dict(sd)


@dataclass
class TrainingSet:
    """The training inputs and labels an engine reads (``RunData`` has the same two fields)."""

    x_train: Tensor
    y_train: Tensor


@dataclass
class Member:
    """What an engine needs of one run (a :class:`~nclab.train.session.RunSession` has the same fields)."""

    config: TrainConfig
    data: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    batches: torch.Generator


def fit(config: TrainConfig, x: Tensor, y: Tensor, *, num_classes: int, input_shape: tuple[int, ...],
        init_stream: str = "init", batches_stream: str = "batches",
        on_epoch: Callable[[int, Tensor], None] | None = None) -> nn.Module:
    """Train ``config``'s model on ``(x, y)`` in memory, without a run directory: the trainer's
    engine, optimizer, loss and learning-rate schedule, initialised from stream ``init_stream``
    with batches from ``batches_stream``. ``on_epoch(epoch, logits)`` gets the eval-mode logits
    of ``x`` after each epoch. Returns the model in eval mode; a non-finite loss or parameter
    raises ``RuntimeError``."""
    model = build_model(config.model.name, input_shape=input_shape, num_classes=num_classes,
                        generator=torch_generator(config.seed, init_stream), **config.model.options()).to(x.device)
    member = Member(config=config, data=TrainingSet(x_train=x, y_train=y), model=model,
                    optimizer=make_optimizer(config.optim, model.parameters()),
                    loss_fn=get_loss(config.loss.name, **config.loss.params()),
                    batches=torch_generator(config.seed, batches_stream))
    engine = make_engine([member])
    for epoch in range(1, config.epochs + 1):
        lr = lr_at(config.schedule, base_lr=config.optim.lr, epoch=epoch, total_epochs=config.epochs)
        (loss,) = engine.train_epoch([lr])
        if not (math.isfinite(loss) and engine.params_finite()[0]):
            raise RuntimeError(f"training diverged in epoch {epoch} (lr {lr}); lower optim.lr")
        if on_epoch is not None:
            on_epoch(epoch, engine.train_logits()[0])
    engine.export(0)
    return model.eval()
