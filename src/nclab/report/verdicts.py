"""Verdicts from paired seeds: per-seed statistics, small-sample intervals, Holm adjustment.

Pure computation; no I/O. Every claim of the study reduces to **one number per seed** (the
seed is the unit: the CE and LS runs of a seed share the noisy labels, the initial weights and
the batch order, so they are not independent):

* a paired difference ``LS - CE`` of a metric, averaged over the cells the claim pools (every
  cell weighted equally within a seed);
* a per-seed slope (dilation on memorization across noise rates), or a difference of two;
* a per-seed fraction (how many of a seed's runs reached a geometry).

Intervals (:func:`mean_interval`)
    The mean of the per-seed values with a Student-t 95 % interval,
    ``mean ± t_{0.975, n-1} · sd / sqrt(n)``, and the two-sided t-test p-value against the
    claim's threshold. Unlike a bootstrap, it keeps its coverage at the study's 5-10 seeds
    (a BCa bootstrap of 5 values under-covers badly; ``tests/test_report_verdicts.py``
    measures both by simulation). Fractions use the Wilson score interval with the number of
    seeds as the sample size (:func:`fraction_interval`), which counts a seed's runs as one
    draw (conservative when they agree).

Verdicts (:func:`decide`)
    With a claimed direction (``"less"``: below the threshold, or ``"greater"``):
    ``held`` when the interval excludes the threshold on the claimed side, ``did not hold``
    when it excludes it on the other side, ``inconclusive`` when it contains it, and
    ``insufficient data`` when there are fewer than :data:`MIN_SEEDS` seeds or the interval
    is degenerate (zero width: every value equal; non-finite). No verdict is ever read off a
    degenerate interval; the claim's ``reason`` says why.

Multiplicity (:func:`holm`)
    The headline claims are a family: each gets ``verdict_holm`` beside its unadjusted
    verdict, from Holm's step-down procedure at family-wise level 0.05 on their p-values.
    Per-cell verdicts are exploratory and carry no adjustment.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nclab.stats import mean_interval as t_mean_interval

__all__ = [
    "HELD", "NOT_HELD", "INCONCLUSIVE", "INSUFFICIENT", "VERDICTS", "MIN_SEEDS", "CONFIDENCE", "FAMILY_ALPHA",
    "FRACTION_THRESHOLD", "Interval", "ClaimResult", "mean_interval", "fraction_interval", "wilson_interval",
    "bootstrap_ci", "decide", "holm", "apply_holm", "seed_claim", "ols_slope",
]

HELD, NOT_HELD, INCONCLUSIVE, INSUFFICIENT = "held", "did not hold", "inconclusive", "insufficient data"
VERDICTS: tuple[str, ...] = (HELD, NOT_HELD, INCONCLUSIVE, INSUFFICIENT)
MIN_SEEDS = 5
CONFIDENCE = 0.95
FAMILY_ALPHA = 0.05
FRACTION_THRESHOLD = 0.5


@dataclass(frozen=True)
class Interval:
    """An estimate with its interval and p-value; ``degenerate`` names why no verdict can be
    read from it (``""`` when it can)."""

    estimate: float | None
    lo: float | None
    hi: float | None
    p_value: float | None
    n: int
    method: str
    degenerate: str = ""

    @property
    def ci(self) -> tuple[float, float] | None:
        return None if self.lo is None or self.hi is None else (self.lo, self.hi)


def mean_interval(values: Sequence[float] | np.ndarray, *, threshold: float = 0.0,
                  confidence: float = CONFIDENCE) -> Interval:
    """Mean of ``values`` with the Student-t interval and the two-sided one-sample t-test
    p-value against ``threshold``. Degenerate (``degenerate`` set, ``lo``/``hi`` None) with
    fewer than 2 values, non-finite values, or zero spread."""
    from scipy import stats  # noqa: PLC0415

    x = np.asarray(values, dtype=float).reshape(-1)
    n = int(x.size)
    est = float(x.mean()) if n and np.all(np.isfinite(x)) else None
    if n < 2:
        return Interval(est, None, None, None, n, "t", f"{n} value(s): no interval")
    if not np.all(np.isfinite(x)):
        return Interval(None, None, None, None, n, "t", f"{int((~np.isfinite(x)).sum())} non-finite value(s)")
    sd = float(x.std(ddof=1))
    if not sd > 0:
        return Interval(est, None, None, None, n, "t", f"all {n} values are equal: a zero-width interval")
    iv = t_mean_interval(x, level=confidence)
    t = (est - threshold) / (sd / math.sqrt(n))
    p = float(2 * stats.t.sf(abs(t), df=n - 1))
    return Interval(est, iv.lo, iv.hi, p, n, "t")


def wilson_interval(k: float, n: int, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k / n`` (``k`` may be fractional)."""
    from scipy import stats  # noqa: PLC0415

    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1; got k={k}, n={n}")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def fraction_interval(per_seed: Sequence[float], *, threshold: float = FRACTION_THRESHOLD,
                      confidence: float = CONFIDENCE) -> Interval:
    """A fraction from per-seed fractions (each in [0, 1]): the mean, the Wilson interval with
    ``n`` = the number of seeds, and the score test's p-value against ``threshold``."""
    from scipy import stats  # noqa: PLC0415

    f = np.asarray(per_seed, dtype=float).reshape(-1)
    n = int(f.size)
    if n == 0:
        return Interval(None, None, None, None, 0, "wilson (seeds)", "no seeds")
    p = float(f.mean())
    lo, hi = wilson_interval(p * n, n, confidence=confidence)
    z = (p - threshold) / math.sqrt(threshold * (1 - threshold) / n)
    return Interval(p, lo, hi, float(2 * stats.norm.sf(abs(z))), n, "wilson (seeds)")


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, rng: np.random.Generator,
                 statistic: Callable[..., Any] | None = None, confidence: float = CONFIDENCE,
                 n_resamples: int = 9999, method: str = "BCa") -> tuple[float, float] | None:
    """Bootstrap interval of ``statistic`` (default: the mean) of ``values``, or ``None`` when
    it is degenerate (constant data, non-finite or zero-width result): callers must then say
    "insufficient data" instead of deciding. For the study's small samples prefer
    :func:`mean_interval`: BCa under-covers at n < 10."""
    from scipy import stats  # noqa: PLC0415

    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size < 2 or not np.all(np.isfinite(x)) or np.ptp(x) == 0:
        return None
    stat = statistic if statistic is not None else (lambda a, axis=-1: np.mean(a, axis=axis))
    import warnings  # noqa: PLC0415

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((x,), stat, vectorized=statistic is None, confidence_level=confidence,
                              n_resamples=n_resamples, method=method, rng=rng)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)) or not hi > lo:
        return None
    return lo, hi


def decide(ci: tuple[float, float] | None, *, n: int, direction: str, min_n: int = MIN_SEEDS,
           threshold: float = 0.0) -> str:
    """The three-valued verdict (plus ``insufficient data``) of an interval against
    ``threshold``; a missing, non-finite or zero-width interval is ``insufficient data``."""
    if direction not in ("less", "greater"):
        raise ValueError(f"direction must be 'less' or 'greater'; got {direction!r}")
    if ci is None or n < min_n:
        return INSUFFICIENT
    lo, hi = float(ci[0]), float(ci[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or not hi > lo:
        return INSUFFICIENT
    below, above = hi < threshold, lo > threshold
    if direction == "less":
        return HELD if below else NOT_HELD if above else INCONCLUSIVE
    return HELD if above else NOT_HELD if below else INCONCLUSIVE


def holm(p_values: Mapping[str, float | None], *, alpha: float = FAMILY_ALPHA) -> set[str]:
    """Ids whose null hypothesis Holm's step-down procedure rejects at family-wise ``alpha``
    (ids with a missing p-value count in the family size and are never rejected)."""
    m = len(p_values)
    ordered = sorted(((p, k) for k, p in p_values.items() if p is not None and math.isfinite(p)))
    out: set[str] = set()
    for i, (p, k) in enumerate(ordered):
        if p > alpha / (m - i):
            break
        out.add(k)
    return out


def ols_slope(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Least-squares slope of ``y`` on ``x``; None without two points or without spread in ``x``."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    if a.size < 2:
        return None
    xc = a - a.mean()
    sxx = float(xc @ xc)
    if not sxx > 1e-300:
        return None
    return float(xc @ (b - b.mean())) / sxx


@dataclass
class ClaimResult:
    """One decided claim.

    ``n_pairs``: complete CE/LS pairs used (paired claims; None for per-loss slopes and
    fractions); ``n_seeds``: the seeds (units) behind the interval; ``n_runs``: the runs the
    claim concerns; ``n_excluded``: pairs (or runs, or seeds) of the claim's cells left out,
    with ``reason`` saying why. ``sensitivity``: the same claim on the pairs where both runs
    reached the terminal phase. ``strata``: the same claim within geometry strata.
    ``secondary``: a labelled variant of the estimate under a stated extra assumption.
    ``cells``: exploratory per-cell results (no multiplicity control).
    """

    id: str
    statement: str
    verdict: str
    estimate: float | None
    ci: tuple[float, float] | None
    direction: str
    quantity: str
    p_value: float | None = None
    verdict_holm: str | None = None
    interval: str = "t"
    threshold: float = 0.0
    n_pairs: int | None = None
    n_seeds: int | None = None
    n_runs: int | None = None
    n_excluded: int = 0
    reason: str = ""
    weights: str = ""
    sensitivity: dict[str, Any] | None = None
    strata: dict[str, Any] | None = None
    secondary: dict[str, Any] | None = None
    cells: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = None if self.ci is None else [float(self.ci[0]), float(self.ci[1])]
        return d


def _verdict(iv: Interval, direction: str, threshold: float) -> tuple[str, str]:
    if iv.degenerate:
        return INSUFFICIENT, iv.degenerate
    if iv.n < MIN_SEEDS:
        return INSUFFICIENT, f"{iv.n} seeds (need {MIN_SEEDS})"
    return decide(iv.ci, n=iv.n, direction=direction, threshold=threshold), ""


def summarize(per_seed: Mapping[Any, float], *, direction: str, threshold: float = 0.0,
              fraction: bool = False) -> dict[str, Any]:
    """An estimate, interval, p-value and verdict from per-seed values (a compact dict: what
    sensitivity analyses, strata and cells carry)."""
    vals = [per_seed[k] for k in sorted(per_seed, key=str)]
    iv = fraction_interval(vals, threshold=threshold) if fraction else mean_interval(vals, threshold=threshold)
    verdict, why = _verdict(iv, direction, threshold)
    return {"estimate": iv.estimate, "ci": None if iv.ci is None else [iv.lo, iv.hi], "p_value": iv.p_value,
            "n_seeds": iv.n, "verdict": verdict, **({"reason": why} if why else {})}


def seed_claim(cid: str, statement: str, per_seed: Mapping[Any, float], *, direction: str, quantity: str,
               threshold: float = 0.0, fraction: bool = False, **extra: Any) -> ClaimResult:
    """A headline claim from one value per seed (see the module doc for the interval)."""
    s = summarize(per_seed, direction=direction, threshold=threshold, fraction=fraction)
    reason = "; ".join(x for x in (s.get("reason", ""), extra.pop("reason", "")) if x)
    ci = None if s["ci"] is None else (s["ci"][0], s["ci"][1])
    return ClaimResult(cid, statement, s["verdict"], s["estimate"], ci, direction, quantity, p_value=s["p_value"],
                       interval="wilson (seeds)" if fraction else "t", threshold=threshold, n_seeds=s["n_seeds"],
                       reason=reason, **extra)


def apply_holm(claims: Sequence[ClaimResult], *, alpha: float = FAMILY_ALPHA) -> None:
    """Set ``verdict_holm`` on every claim (in place): held / did not hold where Holm rejects
    the claim's null hypothesis (the side from the estimate), inconclusive where it does not,
    insufficient data where the unadjusted verdict is."""
    rejected = holm({c.id: (None if c.verdict == INSUFFICIENT else c.p_value) for c in claims}, alpha=alpha)
    for c in claims:
        if c.verdict == INSUFFICIENT:
            c.verdict_holm = INSUFFICIENT
        elif c.id in rejected and c.estimate is not None:
            on_claimed_side = c.estimate < c.threshold if c.direction == "less" else c.estimate > c.threshold
            c.verdict_holm = HELD if on_claimed_side else NOT_HELD
        else:
            c.verdict_holm = INCONCLUSIVE
