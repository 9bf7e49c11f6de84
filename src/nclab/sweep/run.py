"""The real run function: one training run through ``nclab.train.train``.

``train_run(config, run_dir) -> final metrics`` is what the executors call by default. A
run directory that holds a checkpoint from an interrupted attempt is resumed; otherwise (or
if resuming is refused) the directory is overwritten, so a half-written attempt never mixes
with the new one.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["train_run"]


def train_run(config: dict, run_dir: str, *, log: tuple[str, ...] = (), mlflow_uri: str | None = None,
              experiment: str = "nclab") -> dict:
    """Train ``config`` into ``run_dir``; returns ``result.final`` plus ``status``
    (``"completed"`` or ``"diverged"``). ``log``/``mlflow_uri``/``experiment``: extra metrics
    loggers, as :func:`nclab.integrations.loggers.make_loggers` (bind them with ``functools.partial``)."""
    threads = os.environ.get("NCLAB_WORKER_THREADS")
    import torch  # noqa: PLC0415

    if threads:
        torch.set_num_threads(int(threads))
    from nclab.train import CheckpointError, RunDirError, TrainConfig, train  # noqa: PLC0415
    from nclab.train.rundir import RunLockError  # noqa: PLC0415

    cfg = TrainConfig.model_validate(config)
    rd = Path(run_dir)

    def loggers():  # fresh per attempt; they open at the first record
        if not log:
            return None
        from nclab.integrations.loggers import make_loggers  # noqa: PLC0415

        return make_loggers(log, run_dir=rd, name=cfg.name, params=cfg.to_dict(), mlflow_uri=mlflow_uri,
                            experiment=experiment)

    result = None
    if (rd / "checkpoints" / "last.pt").exists():
        try:
            result = train(cfg, run_dir=rd, resume=True, overwrite=False, progress=False, loggers=loggers())
        except RunLockError:
            raise  # another live process trains it: never delete its files
        except (CheckpointError, RunDirError):  # an unusable checkpoint: start over below
            result = None  # (disk full, memory... propagate: the run is recorded as failed, files kept)
    if result is None:
        result = train(cfg, run_dir=rd, resume=False, overwrite=True, progress=False, loggers=loggers())
    final = dict(result.final or {})  # None when the run diverged before its first evaluation
    final["status"] = result.status
    if result.diverged_epoch is not None:
        final["diverged_epoch"] = result.diverged_epoch
    return final
