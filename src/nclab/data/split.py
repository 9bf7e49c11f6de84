"""Index-level splits and subsampling (seeded, vectorised, stratified by class)."""

from __future__ import annotations

from typing import Any

import numpy as np


def _labels_np(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array; got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integers; got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError("labels must be >= 0")
    return y.astype(np.int64)


def _rank_within_class(y: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """A uniformly random order 0..n_c-1 of the samples inside each class."""
    keys = generator.random(y.shape[0])
    order = np.lexsort((keys, y))
    n_c = np.bincount(y)
    starts = np.concatenate(([0], np.cumsum(n_c)[:-1]))
    rank = np.empty(y.shape[0], dtype=np.int64)
    rank[order] = np.arange(y.shape[0]) - starts[y[order]]
    return rank


def train_val_split(
    labels: Any, *, fraction: float, generator: np.random.Generator, stratified: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (train_idx, val_idx), both sorted int64 arrays.

    ``fraction`` is the validation share, in (0, 1). Stratified (default): each class ``c``
    with ``n_c`` samples gives ``round(fraction * n_c)`` uniformly chosen samples to
    validation, so class proportions match in both parts. Unstratified: a uniform random
    ``round(fraction * n)`` samples (the official code's 80/20 split is ``fraction=0.2``).
    Pass the labels the model is trained on (noisy labels, as in the official tuning).
    """
    y = _labels_np(labels)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating)) or not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction (validation share) must be in (0, 1); got {fraction!r}")
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"generator must be a numpy.random.Generator; got {type(generator).__name__}")
    if stratified:
        n_c = np.bincount(y)
        k_c = np.rint(float(fraction) * n_c).astype(np.int64)
        is_val = _rank_within_class(y, generator) < k_c[y]
    else:
        k = int(np.rint(float(fraction) * y.size))
        is_val = np.zeros(y.size, dtype=bool)
        is_val[generator.permutation(y.size)[:k]] = True
    if is_val.all():  # an empty training part would train on nothing and end as a non-finite loss
        raise ValueError(f"the validation share {float(fraction):g} holds out all {y.size} samples and leaves none "
                         "to train on (for a run: lower dataset.val_fraction)")
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def subsample_per_class(labels: Any, *, per_class: int, generator: np.random.Generator) -> np.ndarray:
    """Sorted indices keeping up to ``per_class`` uniformly chosen samples of every class."""
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer; got {per_class!r}")
    y = _labels_np(labels)
    return np.flatnonzero(_rank_within_class(y, generator) < per_class)
