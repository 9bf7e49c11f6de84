"""The real run function: one training run through ``nclab.train.train``.

``train_run(config, run_dir) -> final metrics`` is what the executors call by default. A
run directory that holds a checkpoint from an interrupted attempt is resumed; otherwise (or
if resuming is refused) the directory is overwritten, so a half-written attempt never mixes
with the new one.
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
    from nclab.train import CheckpointError, RunDirError, TrainConfig, train  # noqa: PLC0415
    from nclab.store.rundir import RunLockError  # noqa: PLC0415

    cfg = TrainConfig.model_validate(config)
    rd = Path(run_dir)

    def loggers():  # fresh per attempt; they open at the first record
        if not log:
            return None
        from nclab.integrations.loggers import make_loggers  # noqa: PLC0415

        return make_loggers(log, run_dir=rd, name=cfg.name, params=cfg.to_dict(), mlflow_uri=mlflow_uri,
                            experiment=experiment)

    result = None
    if RunDir(rd).has_checkpoint():
        try:
            result = train(cfg, run_dir=rd, resume=True, overwrite=False, progress=False, loggers=loggers())
        except RunLockError:
            raise  # another live process trains it: never delete its files
        except (CheckpointError, RunDirError):  # an unusable checkpoint: start over below
            result = None  # (disk full, memory... propagate: the run is recorded as failed, files kept)
    if result is None:
        result = train(cfg, run_dir=rd, resume=False, overwrite=True, progress=False, loggers=loggers())
    return _final(result)


def _final(result) -> dict:
    final = dict(result.final or {})  # None when the run diverged before its first evaluation
    final["status"] = result.status
    if result.diverged_epoch is not None:
        final["diverged_epoch"] = result.diverged_epoch
    return final


def train_stack_run(configs: list[dict], run_dirs: list[str], *, log: tuple[str, ...] = (),
                    mlflow_uri: str | None = None, experiment: str = "nclab") -> list[dict]:
    """Train compatible runs as one stack (:func:`nclab.train.stacked.train_stack`); returns one
    final dict per run, as :func:`train_run` does. A member with a checkpoint resumes; one whose
    checkpoint is unusable starts over; the others start fresh (their folders overwritten).
    ``log``/``mlflow_uri``/``experiment`` as for :func:`train_run`."""
    from nclab.train import TrainConfig  # noqa: PLC0415
    from nclab.train.stacked import train_stack  # noqa: PLC0415

    cfgs = [TrainConfig.model_validate(c) for c in configs]
    resume = [RunDir(d).has_checkpoint() for d in run_dirs]
    lgs = None
    if log:
        from nclab.integrations.loggers import make_loggers  # noqa: PLC0415

        lgs = [make_loggers(log, run_dir=Path(d), name=c.name, params=c.to_dict(), mlflow_uri=mlflow_uri,
                            experiment=experiment) for c, d in zip(cfgs, run_dirs)]
    results = train_stack(cfgs, run_dirs=run_dirs, resume=resume, overwrite=[not r for r in resume],
                          restart_unusable=True, loggers=lgs)
    return [_final(r) for r in results]
