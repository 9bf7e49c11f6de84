"""Training under label noise: typed config, the loop, checkpoints and resume.

``train(config, run_dir=...)`` runs one experiment and writes ``config.yaml``,
``env.json``, ``metrics.jsonl``, ``noise.npz``, ``status.json`` and
``checkpoints/last.pt`` to the run directory (see :mod:`nclab.store.rundir`).
"""

from nclab.store.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from nclab.train.config import (
    DatasetConfig,
    LossConfig,
    ModelConfig,
    NoiseConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
)
from nclab.train.data import RunData, prepare_data, resolve_device
from nclab.train.engine import batch_bounds
from nclab.train.loop import TIMING_KEYS, RunResult, train, train_stack
from nclab.store.rundir import RunDirError
from nclab.train.schedule import lr_at

__all__ = [
    "TIMING_KEYS",
    "CheckpointError",
    "DatasetConfig",
    "LossConfig",
    "ModelConfig",
    "NoiseConfig",
    "OptimConfig",
    "RunDirError",
    "RunData",
    "RunResult",
    "ScheduleConfig",
    "TrainConfig",
    "batch_bounds",
    "load_checkpoint",
    "lr_at",
    "prepare_data",
    "resolve_device",
    "save_checkpoint",
    "train",
    "train_stack",
]
