"""A run's data on the training device: dataset, label noise, validation split.

``prepare_data`` loads the dataset (or takes in-memory arrays), applies label noise
(stream ``"noise"``; latent classes: ``"latent"``) and splits off a validation part
of the noisy training set (stream ``"split"``). Every trainer starts from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nclab.config import ConfigError
from nclab.seeding import numpy_generator
from nclab.store.checkpoint import CheckpointError
from nclab.train.config import TrainConfig

__all__ = ["RunData", "check_noise_file", "prepare_data", "resolve_device"]


@dataclass
class RunData:
    """Everything the loop needs about the data, on the training device."""

    x_train: Tensor
    y_train: Tensor  # noisy training labels (the ones the loss sees)
    clean_train: Tensor
    metric_clean_train: Tensor  # clean labels in the training-label space (latent: see _metric_clean)
    x_val: Tensor | None
    y_val: Tensor | None
    x_test: Tensor
    y_test: Tensor
    num_classes: int  # training labels / logits (2C with latent classes)
    input_shape: tuple[int, ...]
    label_to_class: Tensor
    noise_arrays: dict[str, np.ndarray] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False; use device=auto or cpu")
    return torch.device(name)


def _metric_clean(noisy: np.ndarray, clean: np.ndarray, label_to_class: np.ndarray) -> np.ndarray:
    # In the training-label space a correctly labelled sample keeps its label (l or l + C for
    # latent classes); a mislabelled one is assigned its true class c, so memorization is its
    # distance to the clean centroid of class c.
    return np.where(label_to_class[noisy] == clean, noisy, clean).astype(np.int64)


def _own_noise(noisy: np.ndarray, clean: np.ndarray, num_classes: int):
    """The labels of data that bring their own noise (``clean_y``): nothing is injected."""
    from nclab.noise import NoisyLabels

    counts = np.zeros((num_classes, num_classes))
    np.add.at(counts, (clean, noisy), 1)
    rows = counts.sum(axis=1, keepdims=True)
    return NoisyLabels(noisy=noisy.copy(), clean=clean.copy(), num_classes=num_classes, clean_num_classes=num_classes,
                       label_to_class=np.arange(num_classes, dtype=np.int64), spec={"kind": "dataset", "rate": None},
                       target_transition=np.divide(counts, rows, out=np.eye(num_classes), where=rows > 0))


def prepare_data(config: TrainConfig, device: torch.device, *, dataset: Any = None) -> RunData:
    """Load the dataset, apply label noise (stream ``noise``; latent classes: ``latent``),
    split off a validation part of the noisy training set (stream ``split``).

    ``dataset`` (in-memory data: an ``nclab.data.ArrayDataset``, a mapping with its keys,
    ``(x, y)`` or ``DatasetSplits``) replaces loading ``config.dataset.name``; ``classes``
    and ``per_class`` still apply. Data with their own ``clean_y`` take no injected noise."""
    from nclab.data import from_arrays, load_dataset, train_val_split
    from nclab.noise import latent_classes, make_noise

    d, nz = config.dataset, config.noise
    if dataset is not None:
        splits = from_arrays(dataset, name="python", classes=d.classes, per_class=d.per_class, seed=config.seed)
    else:
        splits = load_dataset(
            d.name, data_dir=d.data_dir, classes=d.classes, per_class=d.per_class,
            preprocess=d.preprocess, seed=config.seed, download=d.download, options=d.options or None,
            path=d.path,
        )
    y = np.asarray(splits.train_y, dtype=np.int64)
    if splits.train_clean_y is not None:
        if nz.kind != "none" or nz.latent_fraction > 0:
            raise ConfigError("the dataset brings its own noisy labels (clean_y); set noise.kind: none "
                              "(or drop clean_y to inject noise into y)")
        nl = _own_noise(y, np.asarray(splits.train_clean_y, dtype=np.int64), splits.num_classes)
    else:
        nl = make_noise(
            y, kind=nz.kind, rate=nz.rate, num_classes=splits.num_classes,
            generator=numpy_generator(config.seed, "noise"), exact=nz.exact,
            transition=nz.transition, pairs=nz.pairs,
        )
    if nz.latent_fraction > 0:
        nl = latent_classes(nl, fraction=nz.latent_fraction, generator=numpy_generator(config.seed, "latent"),
                            exact=nz.exact)
    n = y.shape[0]
    if d.val_fraction > 0:
        train_idx, val_idx = train_val_split(nl.noisy, fraction=d.val_fraction,
                                             generator=numpy_generator(config.seed, "split"))
        train_idx, val_idx = np.sort(np.asarray(train_idx)), np.sort(np.asarray(val_idx))
    else:
        train_idx, val_idx = np.arange(n), np.arange(0)
    noisy, clean = np.asarray(nl.noisy), np.asarray(nl.clean)
    l2c = np.asarray(nl.label_to_class)

    def t(a: Any, dtype=None) -> Tensor:
        # np.array copies: the noise record's arrays are read-only
        return torch.as_tensor(np.array(a) if not isinstance(a, Tensor) else a, dtype=dtype).to(device)

    x_all = torch.as_tensor(splits.train_x)
    ti, vi = torch.as_tensor(train_idx), torch.as_tensor(val_idx)
    arrays = {**nl.as_arrays(), "train_idx": train_idx.astype(np.int64), "val_idx": val_idx.astype(np.int64)}
    return RunData(
        x_train=t(x_all[ti] if len(val_idx) else x_all),  # no copy of the inputs without a split
        y_train=t(noisy[train_idx], torch.int64),
        clean_train=t(clean[train_idx], torch.int64),
        metric_clean_train=t(_metric_clean(noisy, clean, l2c)[train_idx], torch.int64),
        x_val=t(x_all[vi]) if len(val_idx) else None,
        y_val=t(noisy[val_idx], torch.int64) if len(val_idx) else None,
        x_test=t(splits.test_x),
        y_test=t(splits.test_y, torch.int64),
        num_classes=int(nl.num_classes),
        input_shape=tuple(int(s) for s in splits.input_shape),
        label_to_class=t(l2c, torch.int64),
        noise_arrays=arrays,
        info={"n_train": len(train_idx), "n_val": len(val_idx), "n_test": int(splits.test_y.shape[0]),
              "realized_noise_rate": nl.realized_rate, "class_names": list(splits.class_names),
              **({"source": "python"} if dataset is not None else {})},
    )


def check_noise_file(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A resumed run's stored labels must be the ones its config generates now."""
    from nclab.store import rundir

    old = rundir.load_npz(path)
    for key in ("noisy", "clean", "train_idx", "val_idx"):
        if key not in old or not np.array_equal(old[key], arrays[key]):
            raise CheckpointError(
                "{path}: stored {key!r} differ from the labels this config generates now "
                "(code or data changed since the run started); cannot resume bit-identically, use {overwrite}",
                options=("overwrite",), path=path, key=key)
