"""Rebuild a trained model from an nclab run directory or from a user's state dict."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nclab.store.checkpoint import MAGIC as CKPT_MAGIC, load_checkpoint
from torch import nn

__all__ = ["LoadedRun", "load_run", "load_user_model"]


@dataclass
class LoadedRun:
    """A run's resolved config, its model (eval mode, last checkpoint) and its data (``RunData``)."""

    run_dir: Path
    config: Any
    model: nn.Module
    data: Any
    epoch: int


def load_run(run_dir: str | Path, *, device: str | torch.device = "cpu") -> LoadedRun:
    """Read ``config.yaml``, rebuild the data (``prepare_data``: same noise, same split) and the
    model, and load ``checkpoints/last.pt`` (checksum and config hash verified)."""
    from nclab.models import build_model
    from nclab.seeding import torch_generator
    from nclab.store.rundir import RunDir
    from nclab.train import TrainConfig, prepare_data

    rd = RunDir(run_dir).require_run()
    run_dir = rd.path
    config = TrainConfig.from_sources(rd.config_path)
    info = rd.data_info()
    if info.get("source") == "python" or "model" in info:
        what = "in-memory data" if info.get("source") == "python" else f"a model passed from Python ({info['model']})"
        raise ValueError(f"{run_dir} was trained on {what} (train(config, dataset=..., model=...)); nclab cannot "
                         "rebuild it from config.yaml. Its features.npz, noise.npz and dynamics/ are read instead "
                         "by nclab detect / nclab analyze")
    dev = torch.device(device)
    from nclab.data import resolve_name

    try:
        resolve_name(config.dataset.name)
    except ValueError as exc:
        raise ValueError(f"{run_dir}: {exc} (a dataset registered with nclab.data.register_dataset exists only "
                         "in the process that registered it)") from None
    data = prepare_data(config, dev)
    model = build_model(config.model.name, input_shape=data.input_shape, num_classes=data.num_classes,
                        generator=torch_generator(config.seed, "init"), **config.model.options())
    state = load_checkpoint(rd.checkpoint_path, config_hash=config.config_hash())
    model.load_state_dict(state["model"])
    return LoadedRun(run_dir=run_dir, config=config, model=model.to(dev).eval(), data=data, epoch=int(state["epoch"]))


def load_user_model(checkpoint: str | Path, class_path: str, *, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate ``pkg.module:Class(**kwargs)`` and load a state dict from ``checkpoint``
    (weights-only loading; a dict with a ``"model"`` or ``"state_dict"`` entry is unwrapped)."""
    if ":" not in class_path:
        raise ValueError(f"model class must be given as 'package.module:ClassName'; got {class_path!r}")
    mod_name, cls_name = class_path.split(":", 1)
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import {class_path!r}: {exc}") from None
    model = cls(**(kwargs or {}))
    if not isinstance(model, nn.Module):
        raise TypeError(f"{class_path} did not build a torch.nn.Module (got {type(model).__name__})")
    try:
        with open(checkpoint, "rb") as fh:
            is_nclab = fh.read(len(CKPT_MAGIC)) == CKPT_MAGIC
        # nclab's own checkpoints (record line + archive) through their checked reader
        state = load_checkpoint(checkpoint) if is_nclab else torch.load(Path(checkpoint), map_location="cpu",
                                                                         weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{checkpoint} cannot be read as a weights-only torch file: {exc}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"the state dict in {checkpoint} does not fit {class_path}: {exc}") from None
    return model.eval()
