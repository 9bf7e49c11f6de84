"""Run-directory layout and the rules for reusing one.

::

    run_dir/
      config.yaml              resolved config, every default written out
      env.json                 versions, seed, device, git commit, hostname
      metrics.jsonl            one flat record per evaluation
      noise.npz                noisy/clean labels, transition, train/val indices
      status.json              completed | stopped | diverged, with the last epoch
      checkpoints/last.pt      (+ last.pt.json: sha256, epoch, config hash)
"""

from __future__ import annotations

import io
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from nclab.config import ConfigError
from nclab.store.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from nclab.train.config import TrainConfig

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
NOISE = "noise.npz"
FEATURES = "features.npz"
STATUS = "status.json"
CHECKPOINT = Path("checkpoints") / "last.pt"

# Files this module writes; ``overwrite`` removes exactly these, never anything else.
_OWNED = (CONFIG, ENV, METRICS, NOISE, FEATURES, STATUS, str(CHECKPOINT), str(CHECKPOINT) + ".json")


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked (different config, existing run...)."""


def prepare_run_dir(run_dir: Path, config: TrainConfig, *, resume: bool, overwrite: bool) -> bool:
    """Check ``run_dir`` against ``config``; returns True when there is a run to resume.

    - empty / new folder: fresh run;
    - holds ``config.yaml`` of a *different* config: refused unless ``overwrite``;
    - holds a run of the same config: ``resume`` continues it, otherwise refused
      unless ``overwrite`` (which deletes nclab's files there and starts over).
    """
    if resume and overwrite:
        raise RunDirError("choose either resume or overwrite, not both")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / CONFIG
    if overwrite:
        for name in _OWNED:
            try:
                os.unlink(run_dir / name)
            except FileNotFoundError:
                pass
        return False
    if not cfg_path.exists():
        if resume:
            raise RunDirError(f"nothing to resume in {run_dir}: no {CONFIG} there")
        if (run_dir / METRICS).exists() or (run_dir / CHECKPOINT).exists():
            raise RunDirError(f"{run_dir} holds run files but no {CONFIG}; use overwrite to start over")
        return False
    try:
        old = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as exc:
        raise RunDirError(f"{cfg_path} is not valid YAML ({exc}); use overwrite to start over") from None
    new = config.to_dict()
    if old != new:
        diff = _dict_diff(old if isinstance(old, dict) else {}, new)
        raise RunDirError(
            f"{run_dir} already holds a run with a different config ({'; '.join(diff[:5])}); "
            "choose another run directory or pass overwrite"
        )
    if not resume:
        raise RunDirError(f"{run_dir} already holds a run of this config; pass resume to continue it or overwrite")
    return True


def _dict_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _dict_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def write_config(run_dir: Path, config: TrainConfig) -> None:
    atomic_write_text(run_dir / CONFIG, config.to_yaml())


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(config: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Versions, seed, device, git commit and host of this process."""
    import nclab

    env = {
        "nclab": getattr(nclab, "__version__", None),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "seed": config.seed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "git_commit": _git_commit(),
        "config_hash": config.config_hash(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_env(run_dir: Path, env: dict[str, Any]) -> None:
    atomic_write_json(run_dir / ENV, env)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
