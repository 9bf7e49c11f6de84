"""Which geometry the final class means form: orthogonal frame, dead class, or other.

Pure numpy (torch tensors are accepted and copied to numpy); no I/O.

With non-negative (post-ReLU) features the class means ``mu_c`` cannot form a centred
simplex; the candidate optimum is an *orthogonal frame* (equal norms, pairwise orthogonal).
A second outcome seen in practice is a *dead class*: one class's features sit at (or near)
the origin, so its mean has almost no norm while the other classes stay large.

Classification of the ``C`` means (rows of ``M``), with ``n_c = ||mu_c||`` and
``cos_ij = <mu_i, mu_j> / (n_i n_j)``:

* ``dead class``      ``min_c n_c <= dead_ratio * max_c n_c`` (default 0.1): some class's
  mean is at most a tenth of the largest; the classes meeting this are listed;
* ``orthogonal frame`` otherwise, when ``max_{i != j} |cos_ij| <= cos_tol`` (default 0.1:
  every pair of means at an angle of at least arccos 0.1 = 84.3 degrees) **and** ``min_c n_c >= norm_ratio * max_c n_c`` (default 0.8: equal norms
  within 20 %);
* ``other`` for everything else (e.g. means at an acute angle, or unequal norms).

``orth_error`` is also returned: ``||G/||G||_F - I/sqrt(C)||_F`` with ``G = M M^T`` (the
uncentred Gram), the same quantity as ``nc2_orthogonal_error_means``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FRAME", "DEAD", "OTHER", "KINDS", "FrameThresholds", "FrameGeometry", "class_means", "classify_means",
           "classify_features"]

FRAME, DEAD, OTHER = "orthogonal frame", "dead class", "other"
KINDS: tuple[str, ...] = (FRAME, DEAD, OTHER)


@dataclass(frozen=True)
class FrameThresholds:
    """The stated thresholds (see the module docstring)."""

    cos_tol: float = 0.1
    norm_ratio: float = 0.8
    dead_ratio: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.cos_tol < 1:
            raise ValueError(f"cos_tol must lie in [0, 1); got {self.cos_tol}")
        if not 0 < self.norm_ratio <= 1:
            raise ValueError(f"norm_ratio must lie in (0, 1]; got {self.norm_ratio}")
        if not 0 <= self.dead_ratio < self.norm_ratio:
            raise ValueError(f"dead_ratio must lie in [0, norm_ratio); got {self.dead_ratio}")


@dataclass
class FrameGeometry:
    """The classification and the numbers it was decided from."""

    kind: str
    max_abs_cos: float
    norm_ratio: float  # min_c n_c / max_c n_c
    orth_error: float
    norms: list[float]
    dead_classes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_abs_cos": self.max_abs_cos, "norm_ratio": self.norm_ratio,
                "orth_error": self.orth_error, "norms": self.norms, "dead_classes": self.dead_classes}


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor; no torch import needed
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def class_means(features: Any, labels: Any, *, num_classes: int | None = None) -> np.ndarray:
    """``(C, d)`` means of ``features`` (``(n, d)``) grouped by integer ``labels``.

    A class without samples raises (its mean is undefined)."""
    x, y = _np(features), np.asarray(labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"features must be (n, d) and labels (n,); got {x.shape} and {y.shape}")
    if y.size and (y.min() < 0 or not np.issubdtype(y.dtype, np.integer)):
        raise ValueError("labels must be non-negative integers")
    C = int(y.max()) + 1 if num_classes is None else int(num_classes)
    counts = np.bincount(y, minlength=C)[:C]
    if np.any(counts == 0):
        raise ValueError(f"class(es) {np.flatnonzero(counts == 0).tolist()} have no samples; their means are undefined")
    sums = np.zeros((C, x.shape[1]))
    np.add.at(sums, y, x)
    return sums / counts[:, None]


def classify_means(means: Any, *, thresholds: FrameThresholds | None = None) -> FrameGeometry:
    """Classify ``C >= 2`` class means (rows) as orthogonal frame / dead class / other."""
    t = thresholds or FrameThresholds()
    m = _np(means)
    if m.ndim != 2 or m.shape[0] < 2:
        raise ValueError(f"means must be (C, d) with C >= 2; got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("means have non-finite entries")
    C = m.shape[0]
    norms = np.linalg.norm(m, axis=1)
    top = float(norms.max())
    if top == 0:  # every mean at the origin: nothing to classify but a collapse of all classes
        return FrameGeometry(DEAD, float("nan"), float("nan"), float("nan"), norms.tolist(), list(range(C)))
    ratio = float(norms.min() / top)
    safe = np.where(norms > 0, norms, 1.0)
    cos = (m @ m.T) / np.outer(safe, safe)
    off = np.abs(cos[~np.eye(C, dtype=bool)])
    max_cos = float(off.max())
    g = m @ m.T
    orth = float(np.linalg.norm(g / np.linalg.norm(g) - np.eye(C) / np.sqrt(C)))
    dead = [int(c) for c in np.flatnonzero(norms <= t.dead_ratio * top)]
    if dead:
        kind = DEAD
    elif max_cos <= t.cos_tol and ratio >= t.norm_ratio:
        kind = FRAME
    else:
        kind = OTHER
    return FrameGeometry(kind, max_cos, ratio, orth, norms.tolist(), dead)


def classify_features(features: Any, labels: Any, *, num_classes: int | None = None,
                      thresholds: FrameThresholds | None = None) -> FrameGeometry:
    """:func:`classify_means` of :func:`class_means` (the classes' mean features)."""
    return classify_means(class_means(features, labels, num_classes=num_classes), thresholds=thresholds)
