"""The sweep driver: register runs in the store, claim them one by one, run them on an
executor, commit each result. Safe to kill at any moment and to run twice at once.

Why it is safe:

* rows are keyed by config hash and inserted with ``INSERT OR IGNORE``: no duplicates;
* a run is executed only after this driver won the atomic ``pending -> running`` claim, so
  two drivers on one store never run the same run;
* a run counts as done only when ``complete`` commits its final metrics (one statement);
  a kill before that leaves it ``running`` under a dead pid, and the next driver's
  ``reclaim_stale`` returns it to ``pending`` (its half-written run directory is overwritten);
* worker processes exit when the driver dies, so nothing keeps writing to a reclaimed run.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from nclab.config import OptionError
from nclab.store.index import Owner, RunStore
from nclab.sweep.executors import Executor, RunFn

__all__ = ["SweepEvent", "SweepSummary", "run_sweep", "resolve_run_fn"]


@dataclass(frozen=True)
class SweepEvent:
    """A progress event: ``kind`` in start, claimed, completed, failed, tick, end."""

    kind: str
    hash: str | None = None
    name: str | None = None
    duration: float | None = None
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class SweepSummary:
    """What one call to :func:`run_sweep` did and saw."""

    total: int
    completed: int = 0  # completed by this call (trained to the end; diverged runs are counted apart)
    diverged: int = 0  # ended by divergence in this call (recorded, never counted as completed)
    failed: int = 0  # failed in this call
    already_done: int = 0  # completed before this call started
    already_diverged: int = 0  # diverged before this call started
    skipped_failed: int = 0  # failed earlier and not retried
    elsewhere: int = 0  # still running under another live driver when this call ended
    interrupted: int = 0  # stopped by SIGINT/SIGTERM after a checkpoint; released (pending) for a rerun
    locked: int = 0  # run directory locked by another live process: skipped, released (pending)
    signum: int | None = None  # the signal that stopped this call (None: it ran to the end)
    reclaimed: int = 0  # taken back from dead owners
    wall: float = 0.0
    durations: list[float] = field(default_factory=list)
    finals: dict[str, dict[str, Any]] = field(default_factory=dict)


def resolve_run_fn(spec: str | RunFn | None) -> RunFn:
    """A run function from ``"module:function"`` (or a callable); None -> the real trainer."""
    if spec is None:
        from nclab.sweep.trainer import train_run  # noqa: PLC0415

        return train_run
    if callable(spec):
        return spec
    if ":" not in spec:
        raise ValueError(f"run function must look like 'package.module:function'; got {spec!r}")
    import importlib  # noqa: PLC0415

    mod, fn = spec.split(":", 1)
    obj = getattr(importlib.import_module(mod), fn, None)
    if not callable(obj):
        raise ValueError(f"{spec!r} is not a callable")
    return obj


def run_sweep(
    store: RunStore,
    runs: Iterable[Any],
    *,
    run_fn: RunFn,
    executor: Executor,
    sweep: str | None = None,
    retry_failed: bool = False,
    heartbeat_every: float = 5.0,
    on_event: Callable[[SweepEvent], None] | None = None,
    max_new: int | None = None,
    stack: int | None = None,
    stack_fn: Callable[[list, list], list] | None = None,
    signals: Any = None,
) -> SweepSummary:
    """Run every pending run of ``runs`` (objects/dicts with hash, name, config) exactly once.

    Completed runs are skipped; failed ones are skipped unless ``retry_failed``; runs held by
    another live driver are left to it. ``max_new`` stops claiming after that many runs
    (used by the search to run one batch). ``stack=K`` trains compatible runs (same model
    and data shape, see :func:`nclab.train.stacked.stack_key`) K at a time in one process
    with ``stack_fn`` (default: the real stacked trainer; only with the default ``run_fn``
    unless ``stack_fn`` is given); each member is still claimed, completed or failed on its
    own. Returns a :class:`SweepSummary`; the results are in the store. On
    KeyboardInterrupt the claimed runs are released and workers stopped.

    ``signals``: an object whose ``signum`` becomes non-None on SIGINT/SIGTERM (the CLI's
    :class:`nclab.train.signals.StopSignals`). Then nothing new is claimed, the runs in flight
    are asked to stop after their current epoch (:meth:`Executor.interrupt`; inline, the
    trainer handles the signal itself), each stopped run is released back to ``pending``
    with its checkpoint and ``status.json`` = ``interrupted``, and the summary's ``signum``
    says which signal stopped the sweep; a rerun continues every run from its checkpoint.
    A run whose directory is locked by another live process is released and counted in
    ``locked``, never failed (nor are its stack neighbours).
    """
    if stack is not None and stack < 1:
        raise OptionError("{stack} must be >= 1; got {got}", options=("stack",), got=stack)
    stacking = stack is not None and stack > 1
    stack_key_fn = None if stack_fn is None else (lambda c: "")  # a caller's stack_fn groups as it likes
    if stacking and stack_fn is None:
        import functools  # noqa: PLC0415

        from nclab.sweep.trainer import train_run, train_stack_run  # noqa: PLC0415

        if run_fn is train_run:
            stack_fn = train_stack_run
        elif isinstance(run_fn, functools.partial) and run_fn.func is train_run and not run_fn.args:
            stack_fn = functools.partial(train_stack_run, **run_fn.keywords)  # e.g. --log bound to the trainer
        else:
            raise OptionError("{stack} > 1 needs the built-in trainer (or an explicit stack_fn); this sweep has a custom run function",
                              options=("stack",))
    t_start = time.time()
    runs = list(runs)
    by_hash = {(_f(r, "hash")): r for r in runs}
    hashes = list(by_hash)
    store.register(runs, sweep=sweep)
    if retry_failed:
        store.requeue_failed(hashes)
    summary = SweepSummary(total=len(hashes))
    summary.reclaimed = len(set(store.reclaim_stale()) & set(hashes))
    status = store.status_of(hashes)
    summary.already_done = sum(1 for h in hashes if status.get(h) == "completed")
    summary.already_diverged = sum(1 for h in hashes if status.get(h) == "diverged")
    summary.skipped_failed = sum(1 for h in hashes if status.get(h) == "failed")
    def units_of(hs: Iterable[str]) -> list[list[str]]:
        hs = list(hs)
        if not stacking:
            return [[h] for h in hs]
        from nclab.train.stacked import group_stacks  # noqa: PLC0415

        return group_stacks(hs, size=int(stack), config_of=lambda h: _f(by_hash[h], "config"), key=stack_key_fn)

    todo = deque(units_of(h for h in hashes if status.get(h) in ("pending", "running")))
    owner = Owner()
    inflight: dict[cf.Future, tuple[list[str], float, bool]] = {}
    elsewhere: set[str] = set()
    claimed = 0
    last_beat = time.time()

    def emit(kind: str, **kw: Any) -> None:
        if on_event is not None:
            on_event(SweepEvent(kind=kind, counts=_counts(summary, inflight, elsewhere), **kw))

    emit("start")
    interrupted_by: int | None = None  # the signal the sweep is stopping for, once known
    forwarded = False
    poll = min(heartbeat_every, 0.2) if signals is not None else heartbeat_every  # react to a signal promptly
    from nclab.sweep.executors import handling_signals  # noqa: PLC0415

    guard = handling_signals(signals is not None)
    guard.__enter__()
    try:
        while True:
            if signals is not None and signals.signum is not None and interrupted_by is None:
                interrupted_by = signals.signum
            if interrupted_by is not None:
                todo.clear()  # claim nothing more
                if not forwarded:
                    forwarded = True
                    executor.interrupt(interrupted_by)
            resubmit = False
            while len(inflight) < executor.capacity and todo and (max_new is None or claimed < max_new):
                unit = todo.popleft()
                got: list[str] = []
                for i, h in enumerate(unit):
                    if max_new is not None and claimed >= max_new:
                        todo.appendleft(unit[i:])  # the rest waits for the next call
                        break
                    if not store.claim(h, owner):
                        if store.status_of([h]).get(h) == "running":
                            elsewhere.add(h)
                        continue
                    claimed += 1
                    elsewhere.discard(h)
                    got.append(h)
                    emit("claimed", hash=h, name=_f(by_hash[h], "name"))
                if not got:
                    continue
                try:
                    if len(got) == 1:
                        h = got[0]
                        fut = executor.submit(run_fn, _f(by_hash[h], "config"), str(store.run_dir(h)))
                    else:
                        fut = executor.submit_stack(stack_fn, [_f(by_hash[h], "config") for h in got],
                                                    [str(store.run_dir(h)) for h in got])
                except cf.process.BrokenProcessPool:
                    # a worker died since the last wait: these runs never started; they go back and are
                    # submitted again once the runs in flight are accounted for and the pool is rebuilt
                    for h in got:
                        store.release(h, owner)
                    claimed -= len(got)
                    todo.appendleft(got)
                    resubmit = True
                    break
                inflight[fut] = (got, time.time(), len(got) > 1)
            if resubmit and not inflight:
                executor.restart()  # nothing in flight reports the broken pool: rebuild it now and resubmit
                continue
            if not inflight:
                if elsewhere and interrupted_by is None and (max_new is None or claimed < max_new):
                    # another driver holds these; take them over only if it died meanwhile
                    back = set(store.reclaim_stale()) & elsewhere
                    if back:
                        summary.reclaimed += len(back)
                        todo.extend(units_of(sorted(back)))
                        elsewhere -= back
                        continue
                    st = store.status_of(sorted(elsewhere))
                    elsewhere = {h for h in elsewhere if st.get(h) == "running"}
                break
            done, _ = cf.wait(list(inflight), timeout=poll, return_when=cf.FIRST_COMPLETED)
            broken = False
            for fut in done:
                hs, t0, is_stack = inflight.pop(fut)
                try:
                    envs = fut.result()
                except cf.process.BrokenProcessPool:
                    broken = True
                    envs = {"ok": False, "error": "worker process died (killed, out of memory or crashed) while running this run"}
                except BaseException as exc:  # noqa: BLE001 - executor-level failure of one run
                    envs = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                if isinstance(envs, dict):
                    envs = [dict(envs) for _ in hs]
                dt = (time.time() - t0) / len(hs)  # a stack's wall time, shared by its members
                for h, env in zip(hs, envs):
                    name = _f(by_hash[h], "name")
                    outcome = env.get("outcome", "completed") if env.get("ok") else None
                    if outcome in ("interrupted", "locked"):
                        # not a result: the row goes back to pending (a rerun continues the run)
                        store.release(h, owner)
                        final = env.get("final") or {}
                        if outcome == "locked":
                            summary.locked += 1
                        else:
                            summary.interrupted += 1
                            if interrupted_by is None:  # an inline run got the signal itself
                                interrupted_by = int(final.get("signum") or 15)
                        emit(outcome, hash=h, name=name, error=final.get("message"))
                    elif env.get("ok"):
                        if store.complete(h, owner, env["final"], outcome=outcome):
                            if outcome == "diverged":
                                summary.diverged += 1
                            else:
                                summary.completed += 1
                            summary.durations.append(dt)
                            summary.finals[h] = env["final"]
                            emit("completed", hash=h, name=name, duration=dt)
                    else:
                        if store.fail(h, owner, env["error"]):
                            summary.failed += 1
                            emit("failed", hash=h, name=name, duration=dt, error=env["error"])
            if broken:
                executor.restart()
            if time.time() - last_beat >= heartbeat_every:
                store.heartbeat(owner)
                last_beat = time.time()
                emit("tick")
    except BaseException:
        executor.shutdown(cancel=True)
        for hs, _, _ in inflight.values():
            for h in hs:
                store.release(h, owner)
        raise
    finally:
        guard.__exit__(None, None, None)
    summary.signum = interrupted_by
    summary.elsewhere = len(elsewhere)
    summary.wall = time.time() - t_start
    emit("end")
    return summary


def _f(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _counts(summary: SweepSummary, inflight: dict, elsewhere: set) -> dict[str, int]:
    return {
        "total": summary.total,
        "done": summary.already_done + summary.completed + summary.diverged + summary.already_diverged,
        "diverged": summary.diverged + summary.already_diverged,
        "failed": summary.failed + summary.skipped_failed,
        "running": sum(len(v[0]) for v in inflight.values()),
        "elsewhere": len(elsewhere),
        "new_done": summary.completed,
    }

