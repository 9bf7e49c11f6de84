"""The real run function: one training run through ``nclab.train.train``.

``train_run(config, run_dir) -> final metrics`` is what the executors call by default. A
run directory that holds a checkpoint from an interrupted attempt is resumed; otherwise (or
if resuming is refused) the directory is overwritten, so a half-written attempt never mixes
with the new one.

In a sweep worker (or inline under a driver that handles signals) the trainer handles
SIGINT/SIGTERM: the run stops after its current epoch with a checkpoint and returns
``status`` = ``"interrupted"`` (and the ``signum``), which the driver releases for a rerun. A
run directory locked by another live process returns ``status`` = ``"locked"`` (the driver
releases it too), never touching its files.
"""

from __future__ import annotations

from pathlib import Path

from nclab.store.rundir import RunDir

__all__ = ["train_run", "train_stack_run"]


def train_run(config: dict, run_dir: str, *, log: tuple[str, ...] = (), mlflow_uri: str | None = None,
              experiment: str = "nclab") -> dict:
    """Train ``config`` into ``run_dir``; returns ``result.final`` plus ``status``
    (``"completed"`` or ``"diverged"``). ``log``/``mlflow_uri``/``experiment``: extra metrics
    loggers, as :func:`nclab.integrations.loggers.make_loggers` (bind them with ``functools.partial``)."""
    # the thread count is the config's ``threads`` (set by ``train`` itself), whatever the worker
    from nclab.store.rundir import RunLockError  # noqa: PLC0415
    from nclab.sweep.executors import pending_signal, signals_wanted  # noqa: PLC0415
    from nclab.train import CheckpointError, RunDirError, TrainConfig, train  # noqa: PLC0415

    cfg = TrainConfig.model_validate(config)
    rd = Path(run_dir)
    if pending_signal() is not None:  # this worker was told to stop before the run began
        return {"status": "interrupted", "signum": pending_signal(), "message": "not started: the sweep is stopping"}
    signals = signals_wanted()

    def loggers():  # fresh per attempt; they open at the first record
        if not log:
            return None
        from nclab.integrations.loggers import make_loggers  # noqa: PLC0415

        return make_loggers(log, run_dir=rd, name=cfg.name, params=cfg.to_dict(), mlflow_uri=mlflow_uri,
                            experiment=experiment)

    result = None
    try:
        if RunDir(rd).has_checkpoint():
            try:
                result = train(cfg, run_dir=rd, resume=True, overwrite=False, progress=False, loggers=loggers(),
                               handle_signals=signals)
            except RunLockError:
                raise  # another live process trains it: never delete its files
            except (CheckpointError, RunDirError):  # an unusable checkpoint: start over below
                result = None  # (disk full, memory... propagate: the run is recorded as failed, files kept)
        if result is None:
            result = train(cfg, run_dir=rd, resume=False, overwrite=True, progress=False, loggers=loggers(),
                           handle_signals=signals)
    except RunLockError as exc:
        return {"status": "locked", "message": str(exc)}
    return _final(result)


def _final(result) -> dict:
    final = dict(result.final or {})  # None when the run diverged before its first evaluation
    final["status"] = result.status
    if result.diverged_epoch is not None:
        final["diverged_epoch"] = result.diverged_epoch
    if result.status == "interrupted":
        final["signum"] = result.signum
        final["message"] = result.message
    return final


def train_stack_run(configs: list[dict], run_dirs: list[str], *, log: tuple[str, ...] = (),
                    mlflow_uri: str | None = None, experiment: str = "nclab") -> list[dict]:
    """Train compatible runs as one stack (:func:`nclab.train.stacked.train_stack`); returns one
    final dict per run, as :func:`train_run` does. A member with a checkpoint resumes; one whose
    checkpoint is unusable starts over; the others start fresh (their folders overwritten).
    ``log``/``mlflow_uri``/``experiment`` as for :func:`train_run`."""
    from nclab.store.rundir import RunLockError  # noqa: PLC0415
    from nclab.sweep.executors import pending_signal, signals_wanted  # noqa: PLC0415
    from nclab.train import TrainConfig  # noqa: PLC0415
    from nclab.train.stacked import train_stack  # noqa: PLC0415

    if pending_signal() is not None:  # this worker was told to stop before the stack began
        return [{"status": "interrupted", "signum": pending_signal(), "message": "not started: the sweep is stopping"}
                for _ in configs]
    cfgs = [TrainConfig.model_validate(c) for c in configs]
    dirs = [Path(d) for d in run_dirs]
    out: list[dict | None] = [None] * len(cfgs)
    live = list(range(len(cfgs)))
    while live:
        resume = [RunDir(dirs[k]).has_checkpoint() for k in live]
        lgs = None
        if log:
            from nclab.integrations.loggers import make_loggers  # noqa: PLC0415

            lgs = [make_loggers(log, run_dir=dirs[k], name=cfgs[k].name, params=cfgs[k].to_dict(),
                                mlflow_uri=mlflow_uri, experiment=experiment) for k in live]
        try:
            results = train_stack([cfgs[k] for k in live], run_dirs=[dirs[k] for k in live], resume=resume,
                                  overwrite=[not r for r in resume], restart_unusable=True, loggers=lgs,
                                  handle_signals=signals_wanted())
        except RunLockError as exc:
            # one member's directory is held by another live process: skip it, train its neighbours
            held = [k for k in live if exc.run_dir is not None and dirs[k] == Path(exc.run_dir)]
            if not held:
                raise
            out[held[0]] = {"status": "locked", "message": str(exc)}
            live.remove(held[0])
            continue
        for k, r in zip(live, results):
            out[k] = _final(r)
        break
    return out  # type: ignore[return-value]


# a process pool's forkserver imports torch and the trainer once for all its workers
train_run.worker_preload = train_stack_run.worker_preload = ("nclab.sweep.worker_preload",)  # type: ignore[attr-defined]
