"""Stacked training: K runs of one architecture trained together in one process.

A small model's optimizer step is mostly per-call overhead (Python, dispatch, kernel
launches), not arithmetic. :func:`train_stack` trains K runs that share an architecture
and a data shape as one :class:`~nclab.train.stacked_model.StackedModel`: each step is
one batched computation for all K members, so the overhead is paid once.

What stays per member — everything that defines a run:

* its data (its own subsample, noise draw and clean labels: ``prepare_data`` per member),
  its batch order (its own ``"batches"`` generator, the same permutations a solo run draws),
  its initialisation (its own ``"init"`` generator), loss, learning-rate schedule,
  optimizer hyperparameters and state, stop rule, epoch cap;
* its run directory, written exactly as a solo run writes it (``config.yaml``,
  ``env.json``, ``metrics.jsonl`` with the same keys, solo-format checkpoints,
  ``noise.npz``, ``features.npz``, ``dynamics/``, ``status.json``) and locked for the
  stack's life. A member's checkpoint resumes solo or in a stack.

Members leave the stack when they finish (epoch cap or terminal phase), diverge (alone:
the others go on) or reach ``max_epochs``. Evaluation, checkpoints and features use the
solo code on a solo copy of the member, so the records are the solo records.

Equivalence: a member's arithmetic is the solo run's (same batches, same formulas), up
to floating-point summation order inside the batched kernels; in float64 a member
matches its solo run to ~1e-12 after a few epochs (tested), and a stack of one equals a
solo run.

Compatible runs (:func:`stack_key`): same model config, batch size, dataset (name,
classes, per-class count, preprocessing, validation fraction), optimizer kind, Nesterov
flag, device, threads, checkpoint cadence. Seeds, noise, losses, learning rates,
momentum, weight decay, schedules, stop rules and epoch caps may differ.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from nclab.config import ConfigError
from nclab.losses import get_loss
from nclab.models import build_model
from nclab.seeding import torch_generator
from nclab.store.files import append_jsonl, atomic_write_json, read_jsonl
from nclab.train import rundir
from nclab.train.checkpoint import CheckpointError
from nclab.train.config import TrainConfig
from nclab.train.loop import (
    RunData,
    RunResult,
    _check_noise_file,
    _diverged_message,
    _finite_logits,
    _evaluate,
    _ordered,
    batch_bounds,
    make_optimizer,
    open_session,
    prepare_data,
    resolve_device,
    restore_checkpoint,
    save_features,
    write_checkpoint,
)
from nclab.train.schedule import lr_at
from nclab.train.stacked_model import StackedModel, StackedOptimizer, stacked_ce_ls_loss
from nclab.train.stop import StopTracker
from nclab.train.threads import thread_scope

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


@dataclass
class _Member:
    """One run's bookkeeping inside a stack."""

    config: TrainConfig
    run_dir: Path
    lock: Any
    data: RunData
    model: nn.Module  # solo copy: initial weights, then the target of evaluation/export
    optimizer: torch.optim.Optimizer  # solo optimizer: the checkpoint format
    loss_fn: nn.Module
    batches: torch.Generator
    stopper: StopTracker
    start: int
    elapsed: float
    recorder: Any = None
    loggers: list[Any] = field(default_factory=list)
    epoch: int = 0
    end: int = 0
    status: str = "running"
    message: str = ""
    diverged_epoch: int | None = None
    lr: float = 0.0
    t_session: float = field(default_factory=time.perf_counter)

    @property
    def ckpt(self) -> Path:
        return self.run_dir / rundir.CHECKPOINT


def _open_member(config: TrainConfig, run_dir: Path, *, resume: bool, overwrite: bool, device: torch.device,
                 max_epochs: int | None, stack_info: dict[str, Any]) -> _Member:
    lock = rundir.RunLock(run_dir, what="train-stack").acquire()
    try:
        resuming = rundir.prepare_run_dir(run_dir, config, resume=resume, overwrite=overwrite)
        data = prepare_data(config, device)
        model = build_model(config.model.name, input_shape=data.input_shape, num_classes=data.num_classes,
                            generator=torch_generator(config.seed, "init"), **config.model.options()).to(device)
        optimizer = make_optimizer(config.optim, model.parameters())
        batches = torch_generator(config.seed, "batches")
        stopper = StopTracker.from_config(config.stop, terminal_acc=config.terminal_acc)
        start, elapsed, sessions = 0, 0.0, []
        ckpt = run_dir / rundir.CHECKPOINT
        if resuming and ckpt.exists():
            start, elapsed = restore_checkpoint(ckpt, config, model=model, optimizer=optimizer, batches=batches,
                                                stopper=stopper)
            if (run_dir / rundir.NOISE).exists():
                _check_noise_file(run_dir / rundir.NOISE, data.noise_arrays)
            with contextlib.suppress(OSError, ValueError):
                sessions = list(json.loads((run_dir / rundir.ENV).read_text()).get("sessions", []))
        else:
            rundir.write_config(run_dir, config)
        recorder = open_session(run_dir, config, device=device, data=data, start=start, sessions=sessions,
                                resuming=resuming, stack=stack_info)
        end = config.epochs if max_epochs is None else min(config.epochs, max_epochs)
        if stopper.fired:
            end = start
        atomic_write_json(run_dir / rundir.STATUS, {"status": "running", "epoch": start, "pid": os.getpid()})
        return _Member(config=config, run_dir=run_dir, lock=lock, data=data, model=model, optimizer=optimizer,
                       loss_fn=get_loss(config.loss.name, **config.loss.params()), batches=batches, stopper=stopper,
                       start=start, elapsed=elapsed, recorder=recorder, epoch=start, end=end)
    except BaseException:
        lock.release()
        raise


class _Stack:
    """The active members as one stacked model + optimizer + stacked data."""

    def __init__(self, members: list[_Member]):
        self.members = members
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
        keep = [k for k in range(len(self.members)) if k not in gone]
        self.members = [self.members[k] for k in keep]
        if not keep:
            return
        self.model.select(keep)
        self.optimizer.select(keep, self.model.parameters())
        self._stack_data()

    def gather(self, idx: Tensor) -> Tensor:
        """Inputs ``(K, B, ...)`` for per-member row indices ``idx`` ``(K, B)``."""
        rows = torch.index_select(self.rows, 0, (idx + self.row_offset).reshape(-1))
        return rows.view(*idx.shape, *self.input_shape)

    def loss(self, logits: Tensor, y: Tensor) -> Tensor:
        """``(K,)`` per-member mean losses of one batch."""
        if self.vector_loss:
            return stacked_ce_ls_loss(logits, y, self.alpha.to(logits.dtype))
        return torch.stack([m.loss_fn(logits[k], y[k]) for k, m in enumerate(self.members)])

    def train_epoch(self) -> Tensor:
        """One epoch for every member (its own permutation); ``(K,)`` sample-weighted mean losses."""
        self.model.train()
        n = self.y.shape[1]
        dev = self.y.device
        perms = torch.stack([torch.randperm(n, generator=m.batches).to(dev) for m in self.members])
        total = torch.zeros(len(self.members), dtype=torch.float64, device=dev)
        bs = self.members[0].config.batch_size
        # the MLP with CE/LS losses takes the explicit (closed-form) backward
        explicit = self.vector_loss and self.model.explicit_grad
        for s, e in batch_bounds(n, bs):
            idx = perms[:, s:e]
            if explicit:  # overwrites the gradients in place
                losses = self.model.loss_and_grad(self.gather(idx), self.y.gather(1, idx), self.alpha)
            else:
                self.optimizer.zero_grad()
                losses = self.loss(self.model(self.gather(idx)), self.y.gather(1, idx))
                losses.sum().backward()  # members are independent: d(sum)/d(theta_k) = d(L_k)/d(theta_k)
            self.optimizer.step()
            total += losses.detach().double() * (e - s)
        return total / n

    @torch.no_grad()
    def eval_logits(self, batch_size: int) -> Tensor:
        """Eval-mode logits of every member on its own training inputs, ``(K, n, C)``."""
        self.model.eval()
        n = self.y.shape[1]
        outs = []
        for i in range(0, n, batch_size):
            idx = torch.arange(i, min(i + batch_size, n), device=self.y.device).expand(len(self.members), -1)
            outs.append(self.model(self.gather(idx)))
        self.model.train()
        return torch.cat(outs, dim=1)

    def export(self, k: int) -> None:
        """Copy member ``k``'s weights and optimizer state into its solo model/optimizer."""
        m = self.members[k]
        m.model.load_state_dict(self.model.member_state(k))
        sd = m.optimizer.state_dict()
        sd["state"] = self.optimizer.member_state(k)
        for g in sd["param_groups"]:
            g["lr"] = m.lr
        m.optimizer.load_state_dict(sd)


def _checkpoint(m: _Member, epoch: int) -> None:
    write_checkpoint(m.ckpt, m.config, epoch=epoch, elapsed=m.elapsed + time.perf_counter() - m.t_session,
                     model=m.model, optimizer=m.optimizer, batches=m.batches, stopper=m.stopper)


def _result(m: _Member) -> RunResult:
    history = read_jsonl(m.run_dir / rundir.METRICS)
    return RunResult(run_dir=m.run_dir, config=m.config, history=history, final=history[-1] if history else None,
                     status=m.status, epoch=m.epoch, message=m.message, diverged_epoch=m.diverged_epoch)


def _finish(m: _Member) -> None:
    """Features, status.json; the member's lock is released."""
    try:
        finished = m.epoch == m.config.epochs or m.stopper.fired
        if m.status == "running":
            m.status = "completed" if finished else "stopped"
            if not finished:
                m.message = f"stopped after epoch {m.epoch} of {m.config.epochs} (max_epochs); resume to continue"
        if m.status == "completed" and m.config.save_features:
            save_features(m.run_dir / rundir.FEATURES, m.model, m.data, batch_size=m.config.eval_batch_size)
        extra: dict[str, Any] = {"diverged_epoch": m.diverged_epoch} if m.diverged_epoch is not None else {}
        if finished and m.status == "completed":
            extra.update(m.stopper.summary(finished_by_rule=m.stopper.fired))
        atomic_write_json(m.run_dir / rundir.STATUS, {"status": m.status, "epoch": m.epoch, "message": m.message, **extra})
        for lg in m.loggers:
            lg.close(status=m.status)
    finally:
        m.lock.release()


def train_stack(
    configs: Sequence[TrainConfig],
    *,
    run_dirs: Sequence[str | Path],
    resume: bool | Sequence[bool] = False,
    overwrite: bool | Sequence[bool] = False,
    max_epochs: int | None = None,
    on_epoch: Any = None,
    restart_unusable: bool = False,
    loggers: Sequence[list[Any] | None] | None = None,
) -> list[RunResult]:
    """Train ``configs[k]`` into ``run_dirs[k]`` for every k, as one stack.

    ``resume``/``overwrite``/``max_epochs`` mean what they mean for
    :func:`nclab.train.train`, per member (a finished member is not trained again);
    ``resume``/``overwrite`` may be one flag per member. ``restart_unusable``: a member
    whose checkpoint cannot be resumed (corrupt, another config) starts over instead of
    failing the stack (what a sweep wants; a locked run directory is never overwritten).
    ``loggers[k]``: metric loggers of member k (as for :func:`nclab.train.train`).
    All configs must share :func:`stack_key`; members whose training sets differ in
    size (a stratified validation split on different noisy labels) are trained in
    separate stacks. ``on_epoch(k, epoch)`` (k: the index into ``configs``) is called after each member
    epoch (progress). Returns one :class:`RunResult` per config, in order.
    """
    configs = list(configs)
    run_dirs = [Path(d) for d in run_dirs]
    if len(configs) != len(run_dirs) or not configs:
        raise ValueError(f"need one run_dir per config; got {len(configs)} configs and {len(run_dirs)} run_dirs")
    if len({str(d.resolve()) for d in run_dirs}) != len(run_dirs):
        raise ValueError("two stack members share a run directory")
    keys = {stack_key(c) for c in configs}
    if len(keys) != 1:
        raise ConfigError("these runs cannot share a stack: they differ in model, batch size, dataset, optimizer "
                          "kind, device, threads or checkpoint cadence (see nclab.train.stacked.stack_key)")
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1; got {max_epochs}")
    device = resolve_device(configs[0].device)
    with thread_scope(configs[0].threads):
        stack_info = {"size": len(configs), "members": [c.config_hash() for c in configs]}
        members: list[_Member] = []
        try:
            flags_r = [resume] * len(configs) if isinstance(resume, bool) else list(resume)
            flags_o = [overwrite] * len(configs) if isinstance(overwrite, bool) else list(overwrite)
            for c, d, r, o in zip(configs, run_dirs, flags_r, flags_o):
                kw = dict(device=device, max_epochs=max_epochs, stack_info=stack_info)
                try:
                    members.append(_open_member(c, d, resume=r, overwrite=o, **kw))
                except rundir.RunLockError:
                    raise
                except (CheckpointError, rundir.RunDirError):
                    if not (restart_unusable and r):
                        raise
                    members.append(_open_member(c, d, resume=False, overwrite=True, **kw))
            for m, lgs in zip(members, loggers or [None] * len(members)):
                m.loggers = list(lgs or [])
            todo = [m for m in members if m.epoch < m.end]
            for m in members:
                if m.epoch >= m.end:
                    _finish(m)
            by_n: dict[tuple, list[_Member]] = {}
            for m in todo:
                by_n.setdefault((m.data.x_train.shape, m.data.num_classes), []).append(m)
            for group in by_n.values():
                _run_stack(group, on_epoch=on_epoch, index={id(m): k for k, m in enumerate(members)})
        finally:
            for m in members:
                if m.lock.held:
                    if m.status == "running":
                        m.status, m.message = "interrupted", "the stack stopped before this member finished"
                        with contextlib.suppress(Exception):
                            atomic_write_json(m.run_dir / rundir.STATUS,
                                              {"status": "interrupted", "epoch": m.epoch, "message": m.message})
                    m.lock.release()
    return [_result(m) for m in members]


def _run_stack(members: list[_Member], *, on_epoch: Any, index: dict[int, int]) -> None:
    stack = _Stack(members)
    while stack.members:
        for m in stack.members:
            m.lr = lr_at(m.config.schedule, base_lr=m.config.optim.lr, epoch=m.epoch + 1, total_epochs=m.config.epochs)
        stack.optimizer.set_lr(torch.tensor([m.lr for m in stack.members], dtype=torch.float64))
        t0 = time.perf_counter()
        losses = stack.train_epoch()
        epoch_time = (time.perf_counter() - t0) / len(stack.members)  # this member's share of the stack's epoch
        finite = stack.model.finite()
        # one eval-mode pass for all members when a stop rule or dynamics needs it (it also
        # catches non-finite logits early; otherwise they surface at evaluation, as in a solo run)
        need = any(m.stopper.active or m.recorder is not None for m in stack.members)
        logits = stack.eval_logits(members[0].config.eval_batch_size) if need else None
        gone: set[int] = set()
        for k, m in enumerate(stack.members):
            m.epoch += 1
            epoch = m.epoch
            loss_k = float(losses[k])
            if not (np.isfinite(loss_k) and bool(finite[k]) and (logits is None or bool(torch.isfinite(logits[k]).all()))):
                m.status, m.diverged_epoch = "diverged", epoch
                what = "the logits" if np.isfinite(loss_k) and bool(finite[k]) else "the loss or the parameters"
                m.message = _diverged_message(epoch, m.lr, what, m.ckpt)
                m.epoch -= 1
                gone.add(k)
                continue
            t1 = time.perf_counter()
            if m.recorder is not None:
                m.recorder.record(epoch, logits[k], m.data.y_train)
            full_eval = epoch % m.config.eval_every == 0 or epoch == m.config.epochs
            fired = False
            if m.stopper.active and not full_eval:
                acc = float((logits[k].argmax(1) == m.data.y_train).double().mean())
                fired = m.stopper.update(epoch, acc)
                full_eval = fired
            done = fired or epoch >= m.end
            need_export = full_eval or done or epoch % m.config.checkpoint_every == 0
            if need_export:
                stack.export(k)
            if full_eval:
                try:
                    ev = _evaluate(m.model, m.data, m.loss_fn, m.config, final=done or epoch == m.config.epochs)
                except (ValueError, RuntimeError):
                    if _finite_logits(m.model, m.data.x_train, batch_size=m.config.eval_batch_size):
                        raise
                    m.status, m.diverged_epoch = "diverged", epoch
                    m.message = _diverged_message(epoch, m.lr, "the logits", m.ckpt)
                    m.epoch -= 1
                    gone.add(k)
                    continue
                if m.stopper.active and not fired:
                    fired = m.stopper.update(epoch, float(ev["train_acc_noisy"]))
                    if fired and m.config.eval_mode == "light" and not (done or epoch == m.config.epochs):
                        ev = _evaluate(m.model, m.data, m.loss_fn, m.config, final=True)  # the run ends here
                    done = done or fired
                record = {"epoch": epoch, "lr": m.lr, "elapsed_s": m.elapsed + time.perf_counter() - m.t_session,
                          "epoch_time_s": epoch_time, "eval_time_s": time.perf_counter() - t1,
                          "train_loss_running": loss_k, **ev}
                if fired or epoch == m.config.epochs:
                    record.update(m.stopper.summary(finished_by_rule=fired))
                record = _ordered(record)
                append_jsonl(m.run_dir / rundir.METRICS, record)
                for lg in m.loggers:
                    lg.log(record)
            if done or epoch % m.config.checkpoint_every == 0:
                _checkpoint(m, epoch)
            if on_epoch is not None:
                on_epoch(index[id(m)], epoch)
            if done:
                gone.add(k)
        for k in sorted(gone):
            m = stack.members[k]
            if m.status != "diverged":
                stack.export(k)
            _finish(m)
        if gone:
            stack.remove(gone)
