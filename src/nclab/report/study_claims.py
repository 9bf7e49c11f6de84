"""The study's claims, decided from the run table (:mod:`nclab.report.study_data`).

Pure computation over rows (plain dicts with the ``runs.csv`` columns); no I/O. The rules are
written out in ``docs/method.md`` §5; in short:

* **every run counts**: verdicts use every completed run, whatever its accuracy; a diverged
  run leaves its pair out, and each claim says how many pairs (or runs) it left out
  (``n_excluded``);
* **one number per seed** (the unit; :mod:`nclab.report.verdicts`), a t-interval over seeds,
  a Wilson interval over seeds for fractions; Holm-adjusted verdicts beside the unadjusted
  ones; per-cell verdicts are exploratory;
* **sensitivity**: each headline claim again on the pairs (runs, for per-loss claims) where
  both runs reached the terminal phase, with the number left out and whether the verdict
  changes;
* **geometry strata** (H1, H2): the same claim within pairs where both runs end as an
  orthogonal frame, and where both end with a dead class.

Headline claims
    ``H1-<loss>-<dataset>``: dilation grows with memorization across noise rates. Per seed, the
    least-squares slope of normalized dilation on normalized memorization over that seed's
    noisy runs of one loss and one dataset; the mean over seeds, claimed > 0. No pooling of
    datasets (binary and 10-class tasks differ in scale).
    ``H2-dilation``, ``H2-test-dilation``, ``H2-test-acc``: at equal noise LS ends with less
    (training / test) dilation and a higher test accuracy than CE. Per seed, the paired
    differences LS - CE of the noisy cells (every dataset, every noise rate), averaged with
    **equal weight per cell**; the mean over seeds.
    ``H2-slope-<dataset>``: LS has a lower memorization-to-dilation slope: per seed,
    slope(LS) - slope(CE) (paired per-seed slopes), claimed < 0.
    ``H2-curve-<dataset>``: at equal memorization LS dilates less: per seed, the mean over its
    LS runs of ``D_LS - (a + b M_LS)``, where ``a + b M`` is the same seed's CE line, at the
    LS runs whose memorization lies within the CE runs' range (no extrapolation), claimed < 0.
    ``H3-bias``, ``H3-nobias``: without noise the class means form an orthogonal frame. The
    fraction of noise-free runs (with / without a classifier bias) classified as an orthogonal
    frame, per (dataset, seed) first (a seed's CE and LS runs share their initialisation), with
    the Wilson interval over those units; claimed > 0.5.
    ``Q-memorization`` (an open question): at equal noise LS memorizes less (pooled as H2).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from nclab.metrics.frames import DEAD, FRAME, KINDS
from nclab.report import verdicts as V

__all__ = ["STATEMENTS", "decide_claims"]

Row = dict[str, Any]
RowOk = Callable[[Row], bool]

STATEMENTS: dict[str, str] = {
    "H1": "{loss}, {dataset}: dilation grows with memorization across noise rates (per-seed slope > 0)",
    "H2-dilation": "at equal noise, LS ends with less training dilation than CE (LS - CE < 0)",
    "H2-test-dilation": "at equal noise, LS ends with less test dilation than CE (LS - CE < 0; train-centroid scale)",
    "H2-test-acc": "at equal noise, LS has higher test accuracy than CE (LS - CE > 0)",
    "H2-slope": "{dataset}: LS has a lower memorization-to-dilation slope than CE (per-seed slope LS - CE < 0)",
    "H2-curve": "{dataset}: at equal memorization, LS dilates less than CE (LS dilation minus CE's line < 0)",
    "H3-bias": "without noise, the class means form an orthogonal frame (classifier with bias; fraction > 0.5)",
    "H3-nobias": "without noise, the class means form an orthogonal frame (classifier without bias; fraction > 0.5)",
    "Q-memorization": "(open question, not a claim) at equal noise LS memorizes less than CE (LS - CE < 0)",
}
SENSITIVITY = "pairs where both runs reached the terminal phase"
STRATA = {"orthogonal frame": FRAME, "dead class": DEAD}


def _completed(r: Row) -> bool:
    return r.get("status") == "completed"


def _terminal(r: Row) -> bool:
    return bool(r.get("reached_terminal"))


def _geometry_is(kind: str) -> RowOk:
    return lambda r: r.get("geometry") == kind


def _datasets(rows: Sequence[Row]) -> list[str]:
    return sorted({r["dataset"] for r in rows if r["variant"] == "main" and r["noise_rate"] > 0})


# --------------------------------------------------------------------------- paired differences
def _pairs(rows: Sequence[Row], metric: str) -> tuple[dict[tuple, tuple[Row, Row]], int]:
    """Complete CE/LS pairs of the main noisy cells ``{(dataset, rate, seed): (ce, ls)}`` and
    how many potential pairs were left out (a run missing, diverged, or without ``metric``)."""
    by: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        if r["variant"] != "main" or r["noise_rate"] <= 0 or r["loss"] not in ("ce", "ls"):
            continue
        slot = by.setdefault((r["dataset"], r["noise_rate"], r["seed"]), {})
        if r["loss"] in slot:
            raise ValueError(f"two {r['loss']} runs for {r['dataset']} noise {r['noise_rate']} seed {r['seed']}")
        slot[r["loss"]] = r
    out, left = {}, 0
    for k, v in sorted(by.items()):
        ce, ls = v.get("ce"), v.get("ls")
        if ce and ls and _completed(ce) and _completed(ls) and ce.get(metric) is not None and ls.get(metric) is not None:
            out[k] = (ce, ls)
        else:
            left += 1
    return out, left


def _pooled(pairs: dict[tuple, tuple[Row, Row]], metric: str) -> dict[int, float]:
    """Per seed: the mean over its cells of LS - CE (each cell weighted equally)."""
    per: dict[int, list[float]] = {}
    for (_, _, seed), (ce, ls) in pairs.items():
        per.setdefault(seed, []).append(ls[metric] - ce[metric])
    return {s: sum(v) / len(v) for s, v in per.items()}


def _paired_claim(cid: str, rows: Sequence[Row], metric: str, *, direction: str) -> V.ClaimResult:
    pairs, left = _pairs(rows, metric)
    quantity = f"LS - CE of {metric}, per seed the mean over its noisy cells (equal weight per cell)"
    cells = []
    for ds, rate in sorted({(k[0], k[1]) for k in pairs}):
        sub = {k[2]: ls[metric] - ce[metric] for k, (ce, ls) in pairs.items() if k[:2] == (ds, rate)}
        etas = [ce["realized_noise"] for k, (ce, _) in pairs.items() if k[:2] == (ds, rate) and ce.get("realized_noise") is not None]
        cells.append({"dataset": ds, "noise_rate": rate, "realized_noise": sum(etas) / len(etas) if etas else None,
                      "n_pairs": len(sub), **V.summarize(sub, direction=direction), "exploratory": True})
    sens_pairs = {k: p for k, p in pairs.items() if _terminal(p[0]) and _terminal(p[1])}
    strata = {}
    for name, kind in STRATA.items():
        sp = {k: p for k, p in pairs.items() if p[0].get("geometry") == kind and p[1].get("geometry") == kind}
        strata[name] = {"n_pairs": len(sp), **V.summarize(_pooled(sp, metric), direction=direction)}
    n_cells = len({k[:2] for k in pairs})
    res = V.seed_claim(cid, STATEMENTS[cid], _pooled(pairs, metric), direction=direction, quantity=quantity,
                       n_pairs=len(pairs), n_runs=2 * len(pairs), n_excluded=left, cells=cells, strata=strata,
                       weights=f"each of the {n_cells} noisy cells weighs equally within a seed",
                       reason=(f"{left} pair(s) left out (a run diverged or lacks {metric})" if left else ""))
    res.sensitivity = _sensitivity(res, V.summarize(_pooled(sens_pairs, metric), direction=direction),
                                   n_used=len(sens_pairs), n_left=len(pairs) - len(sens_pairs), unit="pairs")
    return res


def _sensitivity(res: V.ClaimResult, s: dict[str, Any], *, n_used: int, n_left: int, unit: str) -> dict[str, Any]:
    return {"subset": SENSITIVITY if unit == "pairs" else f"{unit} that reached the terminal phase",
            f"n_{unit}": n_used, "n_left_out": n_left, **s, "changes": s["verdict"] != res.verdict}


# --------------------------------------------------------------------------- slopes
def _points(rows: Sequence[Row], ds: str, loss: str, ok: RowOk) -> dict[int, list[tuple[float, float]]]:
    out: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        if (r["dataset"] == ds and r["variant"] == "main" and r["loss"] == loss and r["noise_rate"] > 0
                and _completed(r) and r.get("memorization") is not None and r.get("dilation") is not None and ok(r)):
            out.setdefault(r["seed"], []).append((r["memorization"], r["dilation"]))
    return out


def _slopes(rows: Sequence[Row], ds: str, loss: str, ok: RowOk = lambda r: True) -> dict[int, float]:
    out = {}
    for s, pts in _points(rows, ds, loss, ok).items():
        b = V.ols_slope([p[0] for p in pts], [p[1] for p in pts])
        if b is not None:
            out[s] = b
    return out


def _noisy_runs(rows: Sequence[Row], ds: str, loss: str | None = None) -> list[Row]:
    return [r for r in rows if r["dataset"] == ds and r["variant"] == "main" and r["noise_rate"] > 0
            and (loss is None or r["loss"] == loss)]


def _h1(rows: Sequence[Row], ds: str, loss: str) -> V.ClaimResult:
    runs = _noisy_runs(rows, ds, loss)
    used = sum(len(v) for v in _points(rows, ds, loss, lambda r: True).values())
    per_seed = _slopes(rows, ds, loss)
    strata = {name: {"n_runs": sum(len(v) for v in _points(rows, ds, loss, _geometry_is(k)).values()),
                     **V.summarize(_slopes(rows, ds, loss, _geometry_is(k)), direction="greater")}
              for name, k in STRATA.items()}
    res = V.seed_claim(f"H1-{loss}-{ds}", STATEMENTS["H1"].format(loss=loss.upper(), dataset=ds), per_seed,
                       direction="greater", n_runs=len(runs), n_excluded=len(runs) - used, strata=strata,
                       quantity=f"per-seed slope of normalized dilation on normalized memorization ({loss}, {ds}, "
                                "noisy runs), mean over seeds",
                       reason=f"{len(runs) - used} run(s) left out (diverged or no metric)" if len(runs) > used else "")
    sens_pts = sum(len(v) for v in _points(rows, ds, loss, _terminal).values())
    res.sensitivity = _sensitivity(res, V.summarize(_slopes(rows, ds, loss, _terminal), direction="greater"),
                                   n_used=sens_pts, n_left=used - sens_pts, unit="runs")
    return res


def _slope_diffs(rows: Sequence[Row], ds: str, ok: RowOk = lambda r: True) -> dict[int, float]:
    ce, ls = _slopes(rows, ds, "ce", ok), _slopes(rows, ds, "ls", ok)
    return {s: ls[s] - ce[s] for s in sorted(set(ce) & set(ls))}


def _pair_ok(rows: Sequence[Row], ok: RowOk) -> RowOk:
    """A row passes when it and its CE/LS partner both pass ``ok`` (pairs stay pairs)."""
    partner = {(r["dataset"], r["variant"], r["noise_rate"], r["seed"], r["loss"]): r for r in rows}

    def f(r: Row) -> bool:
        other = partner.get((r["dataset"], r["variant"], r["noise_rate"], r["seed"], "ls" if r["loss"] == "ce" else "ce"))
        return ok(r) and other is not None and ok(other)

    return f


def _h2_slope(rows: Sequence[Row], ds: str) -> V.ClaimResult:
    per_seed = _slope_diffs(rows, ds)
    runs = _noisy_runs(rows, ds)
    strata = {name: V.summarize(_slope_diffs(rows, ds, _pair_ok(rows, _geometry_is(k))), direction="less")
              for name, k in STRATA.items()}
    res = V.seed_claim(f"H2-slope-{ds}", STATEMENTS["H2-slope"].format(dataset=ds), per_seed, direction="less",
                       quantity=f"per-seed slope(LS) - slope(CE) of dilation on memorization ({ds})",
                       n_pairs=len(per_seed), n_runs=len(runs), strata=strata,
                       n_excluded=len({r["seed"] for r in runs}) - len(per_seed),
                       reason="seeds without both slopes are left out")
    sens = _slope_diffs(rows, ds, _pair_ok(rows, _terminal))
    res.sensitivity = _sensitivity(res, V.summarize(sens, direction="less"), n_used=len(sens),
                                   n_left=len(per_seed) - len(sens), unit="seeds")
    return res


def _curve_gaps(rows: Sequence[Row], ds: str, ok: RowOk = lambda r: True, *,
                extrapolate: bool = False) -> dict[int, float]:
    """Per seed: mean over LS runs (within the CE runs' memorization range, unless
    ``extrapolate``) of D_LS minus the seed's CE least-squares line at M_LS."""
    ce, ls = _points(rows, ds, "ce", ok), _points(rows, ds, "ls", ok)
    out = {}
    for s in sorted(set(ce) & set(ls)):
        xs, ys = [p[0] for p in ce[s]], [p[1] for p in ce[s]]
        b = V.ols_slope(xs, ys)
        if b is None:
            continue
        a = sum(ys) / len(ys) - b * sum(xs) / len(xs)
        gaps = [d - (a + b * m) for m, d in ls[s] if extrapolate or min(xs) <= m <= max(xs)]
        if gaps:
            out[s] = sum(gaps) / len(gaps)
    return out


def _h2_curve(rows: Sequence[Row], ds: str) -> V.ClaimResult:
    per_seed = _curve_gaps(rows, ds)
    runs = _noisy_runs(rows, ds)
    seeds = {r["seed"] for r in runs}
    strata = {name: V.summarize(_curve_gaps(rows, ds, _pair_ok(rows, _geometry_is(k))), direction="less")
              for name, k in STRATA.items()}
    res = V.seed_claim(f"H2-curve-{ds}", STATEMENTS["H2-curve"].format(dataset=ds), per_seed, direction="less",
                       quantity=f"per seed, mean of LS dilation minus the seed's CE line at the LS memorization ({ds})",
                       n_pairs=len(per_seed), n_runs=len(runs), n_excluded=len(seeds) - len(per_seed), strata=strata,
                       reason=(f"{len(seeds) - len(per_seed)} seed(s) left out: no CE line, or no LS run within the "
                               "CE runs' memorization range" if len(seeds) > len(per_seed) else ""))
    sens = _curve_gaps(rows, ds, _pair_ok(rows, _terminal))
    res.sensitivity = _sensitivity(res, V.summarize(sens, direction="less"), n_used=len(sens),
                                   n_left=len(per_seed) - len(sens), unit="seeds")
    res.secondary = {"what": "every LS run against the seed's CE line extended linearly beyond the CE runs' "
                             "memorization range (an extrapolation; not a headline verdict)",
                     **V.summarize(_curve_gaps(rows, ds, extrapolate=True), direction="less")}
    return res


# --------------------------------------------------------------------------- H3
def _fractions(runs: Sequence[Row]) -> dict[tuple, float]:
    """Per (dataset, seed): the fraction of its classified runs that form an orthogonal frame."""
    per: dict[tuple, list[bool]] = {}
    for r in runs:
        if r.get("geometry") is not None:
            per.setdefault((r["dataset"], r["seed"]), []).append(r["geometry"] == FRAME)
    return {k: sum(v) / len(v) for k, v in per.items()}


def _h3(cid: str, rows: Sequence[Row], *, bias: bool) -> V.ClaimResult:
    variant = "main" if bias else "nobias"
    runs = [r for r in rows if r["variant"] == variant and r["noise_rate"] == 0]
    per_unit = _fractions(runs)
    classified = [r for r in runs if r.get("geometry") is not None]
    cells = []
    for ds, loss in sorted({(r["dataset"], r["loss"]) for r in runs}):
        rs = [r for r in runs if r["dataset"] == ds and r["loss"] == loss]
        cells.append({"dataset": ds, "loss": loss, "runs": len(rs), **{k: sum(r.get("geometry") == k for r in rs) for k in KINDS},
                      "reached_terminal": sum(_terminal(r) for r in rs), "exploratory": True})
    res = V.seed_claim(cid, STATEMENTS[cid], per_unit, direction="greater", threshold=V.FRACTION_THRESHOLD,
                       fraction=True, n_runs=len(runs), n_excluded=len(runs) - len(classified), cells=cells,
                       quantity="fraction of noise-free runs whose clean class means form an orthogonal frame "
                                "(per dataset and seed, then over those units)",
                       reason=(f"{len(runs) - len(classified)} run(s) without a geometry (diverged or no saved features)"
                               if len(runs) > len(classified) else ""))
    res.n_seeds = len(per_unit)
    sens = _fractions([r for r in classified if _terminal(r)])
    n_sens = sum(_terminal(r) for r in classified)
    res.sensitivity = _sensitivity(res, V.summarize(sens, direction="greater", threshold=V.FRACTION_THRESHOLD,
                                                    fraction=True), n_used=n_sens, n_left=len(classified) - n_sens,
                                   unit="runs")
    return res


# --------------------------------------------------------------------------- all
def decide_claims(rows: Sequence[Row]) -> list[V.ClaimResult]:
    """Every headline claim, in a fixed order, with Holm-adjusted verdicts (deterministic:
    no resampling)."""
    rows = list(rows)
    datasets = _datasets(rows)
    out: list[V.ClaimResult] = []
    for loss in ("ce", "ls"):
        out += [_h1(rows, ds, loss) for ds in datasets]
    out.append(_paired_claim("H2-dilation", rows, "dilation", direction="less"))
    out.append(_paired_claim("H2-test-dilation", rows, "test_dilation", direction="less"))
    out.append(_paired_claim("H2-test-acc", rows, "test_acc", direction="greater"))
    out += [_h2_slope(rows, ds) for ds in datasets]
    out += [_h2_curve(rows, ds) for ds in datasets]
    out.append(_h3("H3-bias", rows, bias=True))
    out.append(_h3("H3-nobias", rows, bias=False))
    out.append(_paired_claim("Q-memorization", rows, "memorization", direction="less"))
    V.apply_holm(out)
    return out

