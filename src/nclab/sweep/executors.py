"""Executors: where a run function runs. All share one small interface.

``executor.submit(run_fn, config, run_dir) -> concurrent.futures.Future`` whose result is
an *envelope* ``{"ok": True, "final": {...}, "outcome": ...}`` or ``{"ok": False, "error":
"<traceback>"}``: a run that raises is reported, never propagated, so a sweep goes on.
``executor.capacity`` is how many runs it should hold in flight; ``shutdown(cancel=...)``.

* :class:`LocalExecutor` — a process pool. By default its workers are forked from a
  ``forkserver`` that imported torch and the trainer once (:mod:`nclab.sweep.worker_preload`),
  so N workers, and a pool rebuilt after a crash, do not each pay the import; ``spawn``
  starts every worker from a fresh interpreter. Each worker watches the driver and exits if the driver dies (SIGKILL included), so an
  orphaned worker never keeps writing to a run that a restarted sweep re-runs. A run's torch
  thread count is its config's ``threads`` (default 1) whatever the number of workers, so
  ``-j1`` and ``-j2`` give the same numbers; the workers' OpenMP/BLAS pools are set to 1
  thread so N workers never oversubscribe the cores.
* :class:`InlineExecutor` — runs in the calling process, one at a time (debugging, tests).
* :class:`RayExecutor` — one Ray task per run with ``num_cpus``/``num_gpus``; a running
  cluster (``address``) or a local runtime. Only the driver writes the store; run
  directories must be on a file system the Ray workers share with the driver.

``run_fn`` must be picklable (a module-level function) for the process and Ray executors.

Stacks: ``executor.submit_stack(stack_fn, configs, run_dirs)`` runs ``stack_fn(configs,
run_dirs) -> [final, ...]`` (one process trains all members; see
:mod:`nclab.train.stacked`) and resolves to a list of envelopes, one per member.

Signals: ``executor.interrupt(signum)`` asks the work in flight to stop after its current
epoch (the sweep driver calls it on SIGINT/SIGTERM). Local workers run in their own process
group, so a Ctrl-C in the terminal reaches only the driver, which forwards it; in a worker
the trainer turns it into a checkpoint and ``status.json`` = ``interrupted`` (a second one
abandons the epoch in flight and keeps the last checkpoint). :func:`signals_wanted` tells the
built-in run functions whether to handle signals (in a worker, or inline under a driver that
handles them) and :func:`pending_signal` whether one arrived while no run was training.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

from nclab.config import OptionError
from nclab.store.index import pid_alive, pid_start_time

__all__ = ["Executor", "LocalExecutor", "InlineExecutor", "RayExecutor", "make_executor", "call_run", "call_stack",
           "EXECUTORS", "signals_wanted", "pending_signal", "handling_signals"]

EXECUTORS: tuple[str, ...] = ("local", "inline", "ray")

RunFn = Callable[[dict, str], dict]

# Signal handling of this process (see the module docstring): whether the built-in run
# functions should let the trainer handle SIGINT/SIGTERM, and a signal a worker received
# while no trainer was handling signals (between runs).
_HANDLE_SIGNALS = False
_PENDING_SIGNAL: int | None = None


def signals_wanted() -> bool:
    """True in a sweep worker, or inline under a driver that handles SIGINT/SIGTERM."""
    return _HANDLE_SIGNALS


def pending_signal() -> int | None:
    """The SIGINT/SIGTERM this worker received while no run was training (None if none)."""
    return _PENDING_SIGNAL


@contextlib.contextmanager
def handling_signals(enabled: bool = True):
    """While active, :func:`signals_wanted` is True in this process (the inline executor)."""
    global _HANDLE_SIGNALS
    old, _HANDLE_SIGNALS = _HANDLE_SIGNALS, bool(enabled) or _HANDLE_SIGNALS
    try:
        yield
    finally:
        _HANDLE_SIGNALS = old


def call_run(run_fn: RunFn, config: dict, run_dir: str) -> dict[str, Any]:
    """Call ``run_fn(config, run_dir)`` and wrap the result in an envelope (see module doc).

    A returned ``"status"`` key (``"completed"`` or ``"diverged"``) becomes the outcome.
    """
    try:
        final = run_fn(config, run_dir)
        if final is None:
            final = {}
        if not isinstance(final, dict):
            raise TypeError(f"run function must return a dict of final metrics; got {type(final).__name__}")
        final = dict(final)
        outcome = str(final.pop("status", "completed"))
        return {"ok": True, "final": final, "outcome": outcome}
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, including SystemExit
        if isinstance(exc, KeyboardInterrupt):
            raise
        return {"ok": False, "error": traceback.format_exc()}


StackFn = Callable[[list, list], list]


def call_stack(stack_fn: StackFn, configs: list[dict], run_dirs: list[str]) -> list[dict[str, Any]]:
    """Call ``stack_fn(configs, run_dirs)``; one envelope per member (all failed if it raises)."""
    try:
        finals = stack_fn(configs, run_dirs)
        if not isinstance(finals, list) or len(finals) != len(configs):
            raise TypeError(f"stack function must return one dict per run ({len(configs)}); got {type(finals).__name__}")
        out = []
        for final in finals:
            final = dict(final or {})
            outcome = str(final.pop("status", "completed"))
            out.append({"ok": True, "final": final, "outcome": outcome})
        return out
    except BaseException as exc:  # noqa: BLE001 - recorded for every member
        if isinstance(exc, KeyboardInterrupt):
            raise
        err = traceback.format_exc()
        return [{"ok": False, "error": err} for _ in configs]


class Executor:
    """Base class: ``capacity``, ``submit``, ``shutdown``."""

    capacity: int = 1
    name: str = "base"

    def submit(self, run_fn: RunFn, config: dict, run_dir: str) -> cf.Future:
        raise NotImplementedError

    def submit_stack(self, stack_fn: StackFn, configs: list[dict], run_dirs: list[str]) -> cf.Future:
        """Run a stack; the future resolves to one envelope per member."""
        raise NotImplementedError

    def restart(self) -> None:
        """Recover after a broken pool (a worker process died)."""

    def interrupt(self, signum: int) -> None:
        """Ask the runs in flight to stop after their current epoch (checkpoint, ``interrupted``).
        Inline runs got the signal themselves; Ray tasks are not interrupted (they finish)."""

    def shutdown(self, *, cancel: bool = False) -> None:
        """Release workers; ``cancel`` drops queued work and stops running work if possible."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(cancel=exc[0] is not None)


class InlineExecutor(Executor):
    """Runs each run synchronously in this process at submit time (capacity 1)."""

    name = "inline"

    def __init__(self) -> None:
        self.capacity = 1

    def submit(self, run_fn: RunFn, config: dict, run_dir: str) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_result(call_run(run_fn, config, run_dir))
        return fut

    def submit_stack(self, stack_fn: StackFn, configs: list[dict], run_dirs: list[str]) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_result(call_stack(stack_fn, configs, run_dirs))
        return fut


def worker_preload(fn: Callable) -> list[str]:
    """The modules a forkserver imports for workers that will call ``fn``: those ``fn`` names in
    its ``worker_preload`` attribute (the built-in trainer: :mod:`nclab.sweep.worker_preload`),
    then its own module. ``functools.partial`` objects are looked through."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    mods = [str(m) for m in getattr(fn, "worker_preload", ())]
    mod = getattr(fn, "__module__", None)
    if mod and mod != "__main__" and mod not in mods:
        mods.append(mod)
    return mods


def _watch_driver(driver_pid: int, driver_start: int | None, period: float) -> None:
    while True:
        time.sleep(period)
        if not pid_alive(driver_pid, driver_start):
            os._exit(70)  # driver gone: stop now, the restarted sweep re-runs this run


def _worker_signal(signum: int, frame: Any) -> None:
    global _PENDING_SIGNAL
    _PENDING_SIGNAL = signum  # between runs: the next run returns at once (the trainer handles it during one)


_worker_signal.nclab_stop_request = True  # type: ignore[attr-defined]  (a trainer's StopSignals passes its signal on)


def _worker_init(driver_pid: int, driver_start: int | None, threads: int) -> None:
    global _HANDLE_SIGNALS
    # read by torch/BLAS when a spawned worker imports them; a forked worker has them already
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    # a Ctrl-C in the terminal goes to the driver only (it forwards it once): a worker that got
    # it too would count the forwarded copy as a second signal and abandon its epoch
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    _HANDLE_SIGNALS = True
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _worker_signal)
    threading.Thread(target=_watch_driver, args=(driver_pid, driver_start, 0.5), daemon=True).start()


class LocalExecutor(Executor):
    """A process pool of ``workers`` processes (default ``os.cpu_count()``).

    ``context``: ``"forkserver"`` (default: workers forked from one warm, single-threaded
    server; see :mod:`nclab.sweep.worker_preload`) or ``"spawn"`` (a fresh interpreter per
    worker). Plain ``fork`` is refused: the driver may hold torch threads.
    ``threads_per_worker``: OpenMP/BLAS pool size of each worker (default 1); a run's torch
    intra-op threads are its config's ``threads``.
    """

    name = "local"

    def __init__(self, workers: int | None = None, *, context: str = "forkserver", threads_per_worker: int | None = None):
        ncpu = os.cpu_count() or 1
        workers = ncpu if workers is None else int(workers)
        if workers < 1:
            raise OptionError("{workers} must be >= 1; got {got}", options=("workers",), got=workers)
        if context not in ("spawn", "forkserver"):
            raise ValueError(f"context must be 'spawn' or 'forkserver' (fork is unsafe with torch threads); got {context!r}")
        self.capacity = workers
        self.context = context
        self.threads = threads_per_worker or 1
        self._pool: cf.ProcessPoolExecutor | None = None

    def _make(self, fn: Callable) -> cf.ProcessPoolExecutor:
        pid = os.getpid()
        ctx = mp.get_context(self.context)
        if self.context == "forkserver":
            # read when this process's server starts (once per driver, so the first pool's run
            # function decides); "__main__" as multiprocessing's default, so run functions
            # defined in a script still unpickle in the workers
            ctx.set_forkserver_preload(["__main__", *worker_preload(fn)])
        return cf.ProcessPoolExecutor(
            max_workers=self.capacity,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(pid, pid_start_time(pid), self.threads),
        )

    def submit(self, run_fn: RunFn, config: dict, run_dir: str) -> cf.Future:
        if self._pool is None:
            self._pool = self._make(run_fn)
        return self._pool.submit(call_run, run_fn, config, run_dir)

    def submit_stack(self, stack_fn: StackFn, configs: list[dict], run_dirs: list[str]) -> cf.Future:
        if self._pool is None:
            self._pool = self._make(stack_fn)
        return self._pool.submit(call_stack, stack_fn, configs, run_dirs)

    def restart(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def interrupt(self, signum: int) -> None:
        for p in self._workers():
            with contextlib.suppress(OSError):
                os.kill(p.pid, signum)

    def _workers(self) -> list[Any]:
        return [p for p in getattr(self._pool, "_processes", {}).values() if p.is_alive()]

    def shutdown(self, *, cancel: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if cancel:
            # stop running work too: SIGTERM (a worker's trainer abandons its epoch and keeps the last
            # checkpoint), then SIGKILL for any worker still alive after 5 s; then reap the pool
            procs = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    p.terminate()
            deadline = time.time() + 5.0
            for p in procs:
                p.join(timeout=max(0.0, deadline - time.time()))
                if p.is_alive():
                    p.kill()
                    p.join(timeout=5)
        else:
            pool.shutdown(wait=True)


class RayExecutor(Executor):
    """One Ray task per run (``num_cpus``/``num_gpus`` each).

    ``address``: a running cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``);
    None starts a local runtime with ``local_cpus`` CPUs (default all). ``capacity`` defaults
    to how many tasks the cluster's resources fit at once.
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        capacity: int | None = None,
        local_cpus: int | None = None,
    ):
        try:
            import ray  # noqa: PLC0415
        except ImportError as exc:
            raise RuntimeError(
                "the ray executor needs Ray, which is not installed; install it with "
                "`pip install 'nclab[ray]'` or use --executor local"
            ) from exc
        self._ray = ray
        self._owns_runtime = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = local_cpus or os.cpu_count() or 1
                kwargs["num_gpus"] = 0 if num_gpus == 0 else None
                kwargs = {k: v for k, v in kwargs.items() if v is not None}
            ray.init(address=address, **kwargs)
            self._owns_runtime = True
        self._remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(call_run)
        self._remote_stack = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(call_stack)
        if capacity is None:
            res = ray.cluster_resources()
            fits = [int(res.get("CPU", 1) // num_cpus)] if num_cpus > 0 else []
            if num_gpus > 0:
                fits.append(int(res.get("GPU", 0) // num_gpus))
            capacity = max(1, min(fits) if fits else 1)
        self.capacity = int(capacity)
        self._refs: list[Any] = []

    def submit(self, run_fn: RunFn, config: dict, run_dir: str) -> cf.Future:
        ref = self._remote.remote(run_fn, config, run_dir)
        self._refs = [r for r in self._refs if not _ray_done(self._ray, r)] + [ref]
        return _ray_future(self._ray, ref)

    def submit_stack(self, stack_fn: StackFn, configs: list[dict], run_dirs: list[str]) -> cf.Future:
        ref = self._remote_stack.remote(stack_fn, configs, run_dirs)
        self._refs = [r for r in self._refs if not _ray_done(self._ray, r)] + [ref]
        return _ray_future(self._ray, ref, members=len(configs))

    def shutdown(self, *, cancel: bool = False) -> None:
        if cancel:
            for ref in self._refs:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - already finished or gone
                    pass
        self._refs = []
        if self._owns_runtime:
            self._ray.shutdown()
            self._owns_runtime = False


def _ray_done(ray: Any, ref: Any) -> bool:
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


def _ray_future(ray: Any, ref: Any, *, members: int | None = None) -> cf.Future:
    """A concurrent.futures.Future for an ObjectRef; task/worker crashes become failed envelopes
    (one per member for a stack)."""
    out: cf.Future = cf.Future()
    src = ref.future()

    def _done(f: cf.Future) -> None:
        try:
            out.set_result(f.result())
        except BaseException:  # noqa: BLE001 - RayTaskError, WorkerCrashedError, cancellation
            env = {"ok": False, "error": traceback.format_exc()}
            out.set_result(env if members is None else [dict(env) for _ in range(members)])

    src.add_done_callback(_done)
    return out


def make_executor(
    kind: str,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    context: str = "forkserver",
) -> Executor:
    """Build an executor by name: ``local`` (process pool), ``inline`` or ``ray``."""
    if kind == "local":
        return LocalExecutor(workers, context=context)
    if kind == "inline":
        return InlineExecutor()
    if kind == "ray":
        return RayExecutor(address=ray_address, num_cpus=num_cpus, num_gpus=num_gpus, capacity=workers, local_cpus=workers)
    raise ValueError(f"unknown executor {kind!r}; one of {', '.join(EXECUTORS)}")
