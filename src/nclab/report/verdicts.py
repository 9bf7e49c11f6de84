"""Three-valued verdicts from paired seeds, with bootstrap confidence intervals.

Pure computation over the per-run rows of :mod:`nclab.report.study_data` (plain dicts with
``dataset``, ``variant``, ``loss``, ``rate``, ``seed`` and metric values); no I/O.

Pairing
    In the study, the CE run and the LS run of one ``(dataset, variant, noise rate, seed)``
    share the noise draw, the initial weights and the batch order (the random streams derive
    from the seed only). A *pair* is such a CE/LS couple where both runs are eligible
    (terminal phase reached, not diverged) and both have the metric. The paired difference
    is ``d = value(LS) - value(CE)``.

Intervals
    95 % bootstrap intervals (:func:`scipy.stats.bootstrap`, BCa, 9999 resamples, an
    explicit :class:`numpy.random.Generator`). The resampling unit is the *seed*: a claim
    pooled over cells first averages a seed's differences over the cells it has (so one
    seed is one draw), then resamples seeds. Slopes resample seeds and refit.

Verdicts (:func:`decide`)
    With a claimed direction (``"less"``: LS - CE < 0, or ``"greater"``):
    ``held`` when the interval excludes 0 on the claimed side, ``did not hold`` when it
    excludes 0 on the other side, ``inconclusive`` when it contains 0, and
    ``insufficient data`` with fewer than :data:`MIN_PAIRS` pairs (seeds for pooled claims and
    slopes) or when the cells a claim needs are missing. A claim never gets ``held`` or
    ``did not hold`` from fewer than :data:`MIN_PAIRS` seeds.

Fractions (H3)
    The fraction of runs whose class means form an orthogonal frame, with the Wilson 95 %
    score interval; ``held`` when the lower bound exceeds :data:`FRACTION_THRESHOLD` (most
    runs reach the frame), ``did not hold`` when the upper bound is below it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "HELD", "NOT_HELD", "INCONCLUSIVE", "INSUFFICIENT", "VERDICTS", "MIN_PAIRS", "CONFIDENCE", "FRACTION_THRESHOLD",
    "ClaimResult", "bootstrap_ci", "decide", "pair_differences", "paired_claim", "pooled_slope", "slope_claim",
    "slope_difference_claim", "wilson_interval", "fraction_claim",
]

HELD, NOT_HELD, INCONCLUSIVE, INSUFFICIENT = "held", "did not hold", "inconclusive", "insufficient data"
VERDICTS: tuple[str, ...] = (HELD, NOT_HELD, INCONCLUSIVE, INSUFFICIENT)
MIN_PAIRS = 5
CONFIDENCE = 0.95
N_RESAMPLES = 9999
FRACTION_THRESHOLD = 0.5


@dataclass
class ClaimResult:
    """One decided claim. ``estimate``/``ci`` are ``None`` when there is nothing to estimate
    (paired claims and slopes with ``insufficient data``; a fraction of 1-4 runs is shown but
    decides nothing).

    ``n_pairs`` counts complete CE/LS pairs (paired claims) or ``None`` (unpaired: slopes per
    loss, fractions), ``n_seeds`` the resampled seeds, ``n`` the runs or points used.
    """

    id: str
    statement: str
    verdict: str
    estimate: float | None
    ci: tuple[float, float] | None
    n_pairs: int | None
    direction: str  # "less" / "greater": the claimed sign of the estimate (fractions: "greater" than threshold)
    quantity: str
    n_seeds: int | None = None
    n: int | None = None
    reason: str = ""
    cells: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = None if self.ci is None else [float(self.ci[0]), float(self.ci[1])]
        return d


# --------------------------------------------------------------------------- primitives
def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    rng: np.random.Generator,
    statistic: Callable[..., float] | None = None,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    vectorized: bool | None = None,
) -> tuple[float, float]:
    """Bootstrap ``confidence`` interval of ``statistic`` (default: the mean) of ``values``.

    BCa (:func:`scipy.stats.bootstrap`); falls back to the percentile method when BCa is
    undefined (e.g. a statistic that is constant under resampling, where the interval
    collapses to that constant).
    """
    from scipy import stats  # noqa: PLC0415

    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(f"bootstrap needs a 1-D sample of at least 2 values; got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap sample has non-finite values")
    if statistic is None and np.ptp(x) == 0:
        return float(x[0]), float(x[0])
    stat = statistic if statistic is not None else (lambda a, axis=-1: np.mean(a, axis=axis))
    vectorized = statistic is None if vectorized is None else vectorized
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the fallback
            res = stats.bootstrap((x,), stat, vectorized=vectorized, confidence_level=confidence,
                                  n_resamples=n_resamples, method=method, rng=rng)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if math.isfinite(lo) and math.isfinite(hi):
            return lo, hi
    v = float(np.asarray(stat(x)).reshape(-1)[0])
    return v, v


def decide(ci: tuple[float, float] | None, *, n: int, direction: str, min_n: int = MIN_PAIRS,
           threshold: float = 0.0) -> str:
    """The three-valued verdict (plus ``insufficient data``) of an interval against ``threshold``.

    ``direction="less"`` claims the quantity is below ``threshold``; ``"greater"`` above it.
    """
    if direction not in ("less", "greater"):
        raise ValueError(f"direction must be 'less' or 'greater'; got {direction!r}")
    if ci is None or n < min_n:
        return INSUFFICIENT
    lo, hi = ci
    below, above = hi < threshold, lo > threshold
    if direction == "less":
        return HELD if below else NOT_HELD if above else INCONCLUSIVE
    return HELD if above else NOT_HELD if below else INCONCLUSIVE


def _cell_key(r: dict[str, Any]) -> tuple:
    return (r["dataset"], r.get("variant", "main"), float(r["rate"]))


def pair_differences(rows: Iterable[dict[str, Any]], metric: str, *, a: str = "ls", b: str = "ce") -> dict[tuple, dict[int, float]]:
    """``{(dataset, variant, rate): {seed: value(a) - value(b)}}`` over complete pairs.

    A pair needs one row per loss for the same cell and seed with a finite ``metric``.
    Duplicate rows for one (cell, loss, seed) are a data error and raise.
    """
    by: dict[tuple, dict[str, float]] = {}
    for r in rows:
        v = r.get(metric)
        if v is None or not math.isfinite(float(v)) or r["loss"] not in (a, b):
            continue
        k = (*_cell_key(r), int(r["seed"]))
        slot = by.setdefault(k, {})
        if r["loss"] in slot:
            raise ValueError(f"two {r['loss']} runs for cell {k[:3]} seed {k[3]}: cannot pair them")
        slot[r["loss"]] = float(v)
    out: dict[tuple, dict[int, float]] = {}
    for (ds, var, rate, seed), vals in sorted(by.items()):
        if a in vals and b in vals:
            out.setdefault((ds, var, rate), {})[seed] = vals[a] - vals[b]
    return out


def _cell_dict(cell: tuple, seeds_diff: dict[int, float], *, rng: np.random.Generator, direction: str) -> dict[str, Any]:
    d = np.array([seeds_diff[s] for s in sorted(seeds_diff)])
    ci = bootstrap_ci(d, rng=rng) if d.size >= 2 else None
    return {"dataset": cell[0], "variant": cell[1], "rate": cell[2], "n_pairs": int(d.size),
            "estimate": float(d.mean()) if d.size else None, "ci": None if ci is None else [ci[0], ci[1]],
            "verdict": decide(ci, n=int(d.size), direction=direction)}


def paired_claim(
    cid: str, statement: str, rows: Sequence[dict[str, Any]], metric: str, *, direction: str,
    rng: np.random.Generator, cells: Callable[[tuple], bool] | None = None, quantity: str | None = None,
) -> ClaimResult:
    """A claim about ``LS - CE`` of ``metric`` pooled over the cells ``cells`` selects.

    Per cell: mean paired difference, its interval and verdict. Pooled: each seed's
    differences averaged over its cells, the mean over seeds, bootstrap over seeds. Cells
    with fewer than :data:`MIN_PAIRS` pairs are listed but left out of the pooled estimate.
    """
    diffs = {c: v for c, v in pair_differences(rows, metric).items() if cells is None or cells(c)}
    cell_rows = [_cell_dict(c, v, rng=rng, direction=direction) for c, v in diffs.items()]
    usable = {c: v for c, v in diffs.items() if len(v) >= MIN_PAIRS}
    quantity = quantity or f"LS - CE of {metric}"
    n_pairs = sum(len(v) for v in usable.values())
    if not usable:
        reason = ("no cell with CE/LS pairs" if not diffs
                  else f"no cell has {MIN_PAIRS} complete pairs (most: {max(len(v) for v in diffs.values())})")
        return ClaimResult(cid, statement, INSUFFICIENT, None, None, sum(len(v) for v in diffs.values()), direction,
                           quantity, n_seeds=0, reason=reason, cells=cell_rows)
    per_seed: dict[int, list[float]] = {}
    for v in usable.values():
        for s, d in v.items():
            per_seed.setdefault(s, []).append(d)
    x = np.array([np.mean(per_seed[s]) for s in sorted(per_seed)])
    ci = bootstrap_ci(x, rng=rng)
    verdict = decide(ci, n=x.size, direction=direction)
    skipped = len(diffs) - len(usable)
    reason = f"{len(usable)} cells pooled" + (f"; {skipped} cells with < {MIN_PAIRS} pairs left out" if skipped else "")
    return ClaimResult(cid, statement, verdict, float(x.mean()), ci, n_pairs, direction, quantity,
                       n_seeds=int(x.size), n=2 * n_pairs, reason=reason, cells=cell_rows)


# --------------------------------------------------------------------------- slopes
def pooled_slope(points: Sequence[tuple[Any, float, float]]) -> float:
    """Least-squares slope of ``y`` on ``x`` with one intercept per group
    (``points``: ``(group, x, y)``): both centred within their group, then
    ``b = sum x'y' / sum x'^2``. NaN when ``x`` has no within-group spread."""
    groups: dict[Any, list[tuple[float, float]]] = {}
    for g, x, y in points:
        groups.setdefault(g, []).append((x, y))
    sxy = sxx = 0.0
    for pts in groups.values():
        a = np.asarray(pts, dtype=float)
        xc, yc = a[:, 0] - a[:, 0].mean(), a[:, 1] - a[:, 1].mean()
        sxy += float(xc @ yc)
        sxx += float(xc @ xc)
    return sxy / sxx if sxx > 0 else math.nan


def _slope_points(rows: Sequence[dict[str, Any]], loss: str, x: str, y: str) -> dict[int, list[tuple[Any, float, float]]]:
    """Per seed: the ``(dataset, x, y)`` points of ``loss``'s noisy runs (rate > 0)."""
    out: dict[int, list] = {}
    for r in rows:
        if r["loss"] != loss or float(r["rate"]) <= 0 or r.get(x) is None or r.get(y) is None:
            continue
        out.setdefault(int(r["seed"]), []).append((r["dataset"], float(r[x]), float(r[y])))
    return out


class _SeedStats:
    """Per-seed, per-group sufficient statistics ``(n, Sx, Sy, Sxx, Sxy)`` of ``(group, x, y)``
    points, so the pooled slope of any multiset of seeds is one matrix product (the bootstrap
    evaluates it for 9999 resamples at once)."""

    def __init__(self, per_seed: dict[int, list[tuple[Any, float, float]]], seeds: list[int]):
        groups = sorted({p[0] for s in seeds for p in per_seed.get(s, [])}, key=str)
        gi = {g: i for i, g in enumerate(groups)}
        self.arr = np.zeros((len(seeds), max(1, len(groups)), 5))
        for si, s in enumerate(seeds):
            for g, x, y in per_seed.get(s, []):
                self.arr[si, gi[g]] += (1.0, x, y, x * x, x * y)

    def slope(self, counts: np.ndarray) -> np.ndarray:
        """Slopes for ``counts`` (``(..., S)``: how often each seed is drawn)."""
        t = np.tensordot(counts, self.arr, axes=([-1], [0]))  # (..., G, 5)
        n = t[..., 0]
        safe = np.where(n > 0, n, 1.0)
        sxy = np.where(n > 0, t[..., 4] - t[..., 1] * t[..., 2] / safe, 0.0).sum(-1)
        sxx = np.where(n > 0, t[..., 3] - t[..., 1] ** 2 / safe, 0.0).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(sxx > 1e-300, sxy / np.where(sxx > 1e-300, sxx, 1.0), np.nan)


def _counts(idx: np.ndarray, n_seeds: int) -> np.ndarray:
    """``(..., S)`` draw counts from ``(..., k)`` float seed indices (scipy passes floats)."""
    idx = np.asarray(idx).astype(int)
    return (idx[..., :, None] == np.arange(n_seeds)).sum(-2).astype(float)


def _seed_slope_ci(per_seed: dict[int, list], *, rng: np.random.Generator) -> tuple[float, tuple[float, float] | None]:
    seeds = sorted(per_seed)
    est = pooled_slope([p for s in seeds for p in per_seed[s]])
    if len(seeds) < 2 or not math.isfinite(est):
        return est, None
    st = _SeedStats(per_seed, seeds)
    return est, _index_bootstrap(lambda c: st.slope(c), len(seeds), rng=rng)


def _index_bootstrap(fn: Callable[[np.ndarray], np.ndarray], n_seeds: int, *, rng: np.random.Generator) -> tuple[float, float]:
    """Bootstrap over seed indices of a statistic given as ``fn(counts)`` (vectorized)."""

    def stat(idx, axis=-1):
        return fn(_counts(np.moveaxis(np.asarray(idx), axis, -1), n_seeds))

    return bootstrap_ci(np.arange(n_seeds, dtype=float), rng=rng, statistic=stat, vectorized=True)


def _rates_ok(per_seed: dict[int, list], rows: Sequence[dict[str, Any]], loss: str) -> bool:
    """A slope needs at least two distinct noisy rates in some dataset."""
    by_ds: dict[str, set] = {}
    for r in rows:
        if r["loss"] == loss and float(r["rate"]) > 0:
            by_ds.setdefault(r["dataset"], set()).add(float(r["rate"]))
    return any(len(v) >= 2 for v in by_ds.values())


def slope_claim(cid: str, statement: str, rows: Sequence[dict[str, Any]], *, loss: str, x: str, y: str,
                rng: np.random.Generator, direction: str = "greater") -> ClaimResult:
    """The slope of ``y`` on ``x`` over ``loss``'s noisy runs, one intercept per dataset,
    with a bootstrap interval over seeds (all of a seed's runs move together)."""
    per_seed = _slope_points(rows, loss, x, y)
    n = sum(len(v) for v in per_seed.values())
    quantity = f"slope of {y} on {x} ({loss}, noisy runs, per-dataset intercepts)"
    cells = []
    for ds in sorted({p[0] for v in per_seed.values() for p in v}):
        sub = {s: [p for p in v if p[0] == ds] for s, v in per_seed.items()}
        sub = {s: v for s, v in sub.items() if v}
        est, ci = _seed_slope_ci(sub, rng=rng) if len(sub) >= MIN_PAIRS else (pooled_slope([p for v in sub.values() for p in v]), None)
        cells.append({"dataset": ds, "loss": loss, "n_seeds": len(sub), "n": sum(len(v) for v in sub.values()),
                      "estimate": est if math.isfinite(est) else None, "ci": None if ci is None else list(ci),
                      "verdict": decide(ci, n=len(sub), direction=direction)})
    if len(per_seed) < MIN_PAIRS or not _rates_ok(per_seed, rows, loss):
        why = (f"{len(per_seed)} seeds with noisy {loss} runs (need {MIN_PAIRS})" if len(per_seed) < MIN_PAIRS
               else "fewer than two noisy rates per dataset")
        return ClaimResult(cid, statement, INSUFFICIENT, None, None, None, direction, quantity,
                           n_seeds=len(per_seed), n=n, reason=why, cells=cells)
    est, ci = _seed_slope_ci(per_seed, rng=rng)
    if not math.isfinite(est) or ci is None:
        return ClaimResult(cid, statement, INSUFFICIENT, None, None, None, direction, quantity,
                           n_seeds=len(per_seed), n=n, reason="no spread in the x values", cells=cells)
    return ClaimResult(cid, statement, decide(ci, n=len(per_seed), direction=direction), est, ci, None, direction,
                       quantity, n_seeds=len(per_seed), n=n, cells=cells)


def slope_difference_claim(cid: str, statement: str, rows: Sequence[dict[str, Any]], *, x: str, y: str,
                           rng: np.random.Generator, direction: str = "less") -> ClaimResult:
    """``slope(LS) - slope(CE)``; seeds resampled jointly (a seed's CE and LS runs are paired)."""
    ce, ls = _slope_points(rows, "ce", x, y), _slope_points(rows, "ls", x, y)
    seeds = sorted(set(ce) & set(ls))
    quantity = f"slope(LS) - slope(CE) of {y} on {x}"
    if len(seeds) < MIN_PAIRS or not (_rates_ok(ce, rows, "ce") and _rates_ok(ls, rows, "ls")):
        return ClaimResult(cid, statement, INSUFFICIENT, None, None, len(seeds), direction, quantity,
                           n_seeds=len(seeds), reason=f"{len(seeds)} seeds with both losses' noisy runs (need {MIN_PAIRS}) "
                           "and two noisy rates")

    st_ls, st_ce = _SeedStats(ls, seeds), _SeedStats(ce, seeds)
    est = float(st_ls.slope(np.ones(len(seeds))) - st_ce.slope(np.ones(len(seeds))))
    if not math.isfinite(est):
        return ClaimResult(cid, statement, INSUFFICIENT, None, None, len(seeds), direction, quantity,
                           n_seeds=len(seeds), reason="no spread in the x values")
    ci = _index_bootstrap(lambda c: st_ls.slope(c) - st_ce.slope(c), len(seeds), rng=rng)
    return ClaimResult(cid, statement, decide(ci, n=len(seeds), direction=direction), est, ci, len(seeds), direction,
                       quantity, n_seeds=len(seeds), n=sum(len(ce[s]) + len(ls[s]) for s in seeds))


# --------------------------------------------------------------------------- fractions
def wilson_interval(k: int, n: int, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``."""
    from scipy import stats  # noqa: PLC0415

    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1; got k={k}, n={n}")
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def fraction_claim(cid: str, statement: str, successes: int, n: int, *, threshold: float = FRACTION_THRESHOLD,
                   quantity: str = "fraction", reason: str = "", cells: list[dict[str, Any]] | None = None) -> ClaimResult:
    """``successes / n`` with its Wilson interval, judged against ``threshold`` (claimed: above it)."""
    if n < MIN_PAIRS:
        return ClaimResult(cid, statement, INSUFFICIENT, None if n == 0 else successes / n,
                           None if n == 0 else wilson_interval(successes, n), None, "greater", quantity, n=n,
                           reason=reason or f"{n} eligible runs (need {MIN_PAIRS})", cells=cells or [])
    ci = wilson_interval(successes, n)
    return ClaimResult(cid, statement, decide(ci, n=n, direction="greater", threshold=threshold), successes / n, ci,
                       None, "greater", quantity, n=n, reason=reason or f"threshold {threshold:g}", cells=cells or [])
