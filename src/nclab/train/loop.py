"""The trainer: one run (:func:`train`) or a stack of compatible runs (:func:`train_stack`).

A solo run is a stack of one: both go through :func:`train_stack`, so a run's numbers do
not depend on how it was scheduled. Read top to bottom:

1. open one :class:`~nclab.train.session.RunSession` per run (lock, run directory, data,
   model, optimizer, resume, session files);
2. group the runs whose training sets have one shape, and give each group an engine
   (:func:`~nclab.train.engine.make_engine`: chosen by the model, never by the group's size);
3. per epoch: each run's learning rate, one engine epoch for the whole group, then the
   epoch policy (:mod:`nclab.train.policy`) per run: divergence, dynamics, stop rule,
   evaluation, checkpoint, stop request; runs that are done leave the group;
4. each run finishes (features, ``status.json``, lock released) as it leaves.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Sequence

from nclab.config import ConfigError
from nclab.store import rundir
from nclab.train import policy
from nclab.store.checkpoint import CheckpointError
from nclab.train.config import TrainConfig
from nclab.train.data import resolve_device
from nclab.train.engine import make_engine
from nclab.train.progress import Progress
from nclab.train.signals import StopSignals
from nclab.train.session import TIMING_KEYS, RunResult, RunSession, copy_model
from nclab.train.threads import thread_scope

__all__ = ["TIMING_KEYS", "RunResult", "train", "train_stack"]


def train(
    config: TrainConfig | Mapping[str, Any],
    *,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    max_epochs: int | None = None,
    handle_signals: bool = False,
    dataset: Any = None,
    model: Any = None,
    loggers: list[Any] | None = None,
) -> RunResult:
    """Train one model as ``config`` says (a :class:`TrainConfig` or a nested dict of the same
    keys, validated as a YAML file is) and record it in ``run_dir`` (a stack of one).

    ``loggers``: objects with ``log(record)`` and ``close(status=...)`` (e.g. from
    :func:`nclab.integrations.loggers.make_loggers`), given each record as it is
    appended to ``metrics.jsonl`` and closed once with the final status.

    ``resume=True`` continues the run in ``run_dir`` from its last checkpoint
    (records after the checkpoint epoch are dropped and recomputed); on CPU the
    result is bit-identical to an uninterrupted run. ``overwrite=True`` deletes
    nclab's files in ``run_dir`` and starts over; without either, a ``run_dir``
    that already holds a run is refused. ``max_epochs`` stops after that epoch
    (status ``"stopped"``, resumable) — for time-boxed sessions and tests.
    A non-finite loss, parameter or logit stops the run with status ``"diverged"``,
    keeping the last good checkpoint. The run directory is locked
    (:class:`~nclab.store.rundir.RunLock`) for the whole call: a second process gets
    ``RunLockError`` naming this one's pid. ``handle_signals=True`` (the CLI) turns
    the first SIGINT/SIGTERM into a clean stop after the current epoch: checkpoint,
    ``status.json`` = ``interrupted``, status ``"interrupted"`` returned.

    Your own data and model from Python: ``dataset`` — an ``nclab.data.ArrayDataset``
    (``x``, ``y``, optional ``x_test``/``y_test``/``clean_y``/``class_names``), a mapping
    with those keys, or ``(x, y)`` — replaces ``config.dataset.name`` (``classes`` and
    ``per_class`` still apply; without test arrays 20 % is held out). ``model`` — an
    ``nn.Module`` (trained from its current parameters) or a factory
    ``factory(*, input_shape, num_classes[, generator])`` — replaces ``config.model``;
    its forward returns logits (b×C) and its classifier is the last ``nn.Linear``
    with C outputs (see ``nclab.models.make_model``). ``env.json`` records
    ``data.source = "python"`` / ``data.model``; ``nclab detect`` and ``nclab analyze``
    work on such runs from the run directory's files (``features.npz``, ``noise.npz``,
    ``dynamics/``). Pass the same data and model again to resume.
    """
    if isinstance(config, Mapping):
        config = TrainConfig.from_dict(dict(config))
    (result,) = train_stack([config], run_dirs=[run_dir], resume=resume, overwrite=overwrite, progress=progress,
                            max_epochs=max_epochs, handle_signals=handle_signals, dataset=dataset, model=model,
                            loggers=[loggers])
    return result


def train_stack(
    configs: Sequence[TrainConfig],
    *,
    run_dirs: Sequence[str | Path],
    resume: bool | Sequence[bool] = False,
    overwrite: bool | Sequence[bool] = False,
    max_epochs: int | None = None,
    progress: bool = False,
    handle_signals: bool = False,
    dataset: Any = None,
    model: Any = None,
    loggers: Sequence[list[Any] | None] | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
    restart_unusable: bool = False,
) -> list[RunResult]:
    """Train ``configs[k]`` into ``run_dirs[k]`` for every k, as one stack.

    Every option means what it means for :func:`train`, per run; ``resume``/``overwrite``
    may be one flag per run, ``loggers[k]`` are run k's loggers. ``dataset`` is every run's
    data; ``model`` every run's model (a module is copied per run after the first; a factory
    is called per run). ``restart_unusable``: a run whose checkpoint cannot be resumed
    (corrupt, another config) starts over instead of failing the stack (what a sweep wants;
    a locked run directory is never overwritten). ``on_epoch(k, epoch)`` is called after
    each epoch of run k (k: the index into ``configs``).

    All configs must share :func:`~nclab.train.stacked.stack_key`; runs whose training
    sets differ in size (a stratified validation split on different noisy labels) train in
    separate groups. Runs leave the stack when they finish (epoch cap or terminal phase),
    diverge (alone: the others go on), reach ``max_epochs`` or are interrupted. Returns one
    :class:`RunResult` per config, in order.
    """
    from nclab.train.stacked import stack_key

    configs = list(configs)
    run_dirs = [Path(d) for d in run_dirs]
    n = len(configs)
    if len(run_dirs) != n or not configs:
        raise ValueError(f"need one run_dir per config; got {n} configs and {len(run_dirs)} run_dirs")
    if len({str(d.resolve()) for d in run_dirs}) != n:
        raise ValueError("two stack members share a run directory")
    if len({stack_key(c) for c in configs}) != 1:
        raise ConfigError("these runs cannot share a stack: they differ in model, batch size, dataset, optimizer "
                          "kind, device, threads or checkpoint cadence (see nclab.train.stacked.stack_key)")
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1; got {max_epochs}")
    device = resolve_device(configs[0].device)  # before touching any run directory
    resumes = [resume] * n if isinstance(resume, bool) else list(resume)
    overwrites = [overwrite] * n if isinstance(overwrite, bool) else list(overwrite)
    models = [model] + [copy_model(model) for _ in range(n - 1)]
    stack = {"size": n, "members": [c.config_hash() for c in configs]} if n > 1 else None
    with thread_scope(configs[0].threads), StopSignals(enabled=handle_signals) as signals:
        sessions: list[RunSession] = []
        try:
            for k in range(n):
                open_run = functools.partial(
                    RunSession.open, configs[k], run_dirs[k], device=device, max_epochs=max_epochs, dataset=dataset,
                    model=models[k], loggers=(loggers or [None] * n)[k], stack=stack)
                try:
                    sessions.append(open_run(resume=resumes[k], overwrite=overwrites[k]))
                except rundir.RunLockError:
                    raise
                except (CheckpointError, rundir.RunDirError):
                    if not (restart_unusable and resumes[k]):
                        raise
                    sessions.append(open_run(resume=False, overwrite=True))
            _train_sessions(sessions, signals=signals, progress=progress, on_epoch=on_epoch)
        except KeyboardInterrupt:
            # the epoch in flight is abandoned (a second signal, or Ctrl-C without handle_signals)
            for s in sessions:
                if s.lock.held:
                    s.abandon()
            if signals.signum is None:
                raise
        finally:
            for s in sessions:
                if s.lock.held:  # an error stopped the trainer before this run left it
                    if s.status == "running":
                        s.status, s.message = "interrupted", "the trainer stopped before this run finished"
                    with contextlib.suppress(Exception):
                        s.finish()
    return [s.result(signum=signals.signum) for s in sessions]


def _train_sessions(sessions: list[RunSession], *, signals: StopSignals, progress: bool,
                    on_epoch: Callable[[int, int], None] | None) -> None:
    bar = Progress(progress, [(s.config.name, s.config.epochs, s.start) for s in sessions])
    try:
        groups: dict[tuple, list[int]] = {}
        for k, s in enumerate(sessions):
            if s.done:
                s.finish()  # nothing left to train (finished earlier, or the stop rule already fired)
            else:
                groups.setdefault((tuple(s.data.x_train.shape), s.data.num_classes), []).append(k)
        for members in groups.values():
            _train_group(sessions, members, signals=signals, bar=bar, on_epoch=on_epoch)
    finally:
        bar.close()


def _train_group(sessions: list[RunSession], members: list[int], *, signals: StopSignals, bar: Progress,
                 on_epoch: Callable[[int, int], None] | None) -> None:
    """Train the runs ``members`` (indices into ``sessions``) together until each has left."""
    if signals.signum is not None:  # a stop was requested while an earlier group trained
        for k in members:
            sessions[k].checkpoint()
            sessions[k].interrupt(signals.name)
            sessions[k].finish()
        return
    engine = make_engine([sessions[k] for k in members])
    while members:
        active = [sessions[k] for k in members]
        lrs = [policy.learning_rate(s) for s in active]
        t0 = time.perf_counter()
        losses = engine.train_epoch(lrs)
        epoch_time = (time.perf_counter() - t0) / len(active)  # each run's share of the group's epoch
        finite = engine.params_finite()
        logits = engine.train_logits() if any(policy.needs_train_logits(s) for s in active) else None
        leaving: set[int] = set()
        for i, (k, s) in enumerate(zip(members, active)):
            record = policy.end_epoch(s, loss=losses[i], params_finite=finite[i],
                                      logits=None if logits is None else logits[i],
                                      export=functools.partial(engine.export, i), epoch_time=epoch_time,
                                      signals=signals)
            if s.status != "diverged":
                bar.update(k, s.epoch, record, losses[i])
                if on_epoch is not None:
                    on_epoch(k, s.epoch)
            if s.status != "running" or s.done:
                leaving.add(i)
        for i in sorted(leaving):
            active[i].finish()
        engine.remove(leaving)
        members = [k for i, k in enumerate(members) if i not in leaving]
