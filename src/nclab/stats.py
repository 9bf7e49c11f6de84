"""Small statistics shared by the demo and the sweep report: a mean with its t-interval and
paired differences. Pure numpy/scipy; no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["MeanInterval", "mean_interval", "paired_difference"]


@dataclass(frozen=True)
class MeanInterval:
    """``mean`` of ``n`` finite values and its two-sided ``level`` Student-t interval
    ``[lo, hi]`` (``None`` when ``n < 2``: one value has no spread to measure)."""

    mean: float
    lo: float | None
    hi: float | None
    n: int
    level: float = 0.95

    @property
    def ci(self) -> list[float] | None:
        return None if self.lo is None else [self.lo, self.hi]


def mean_interval(values: Sequence[float], *, level: float = 0.95) -> MeanInterval:
    """Mean and ``mean ± t_{(1+level)/2, n−1} · s/√n`` of the finite entries of ``values``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        raise ValueError("no finite values to average")
    m = float(x.mean())
    if n < 2:
        return MeanInterval(m, None, None, n, level)
    half = float(stats.t.ppf(0.5 + level / 2.0, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return MeanInterval(m, m - half, m + half, n, level)


def paired_difference(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> MeanInterval:
    """The mean of ``b − a`` over pairs (same index = same unit, e.g. a seed) with its t-interval."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape or a_.ndim != 1:
        raise ValueError(f"paired values must be two vectors of one length; got {a_.shape} and {b_.shape}")
    return mean_interval(b_ - a_, level=level)
