"""Study data from a results store: per-run records, per-cell aggregates, claim checks.

Pure computation over the store's completed runs (no plotting). A *cell* is
``(dataset, variant, loss, noise rate)``; ``variant`` is ``"main"`` or ``"latent"``
(``noise.latent_fraction > 0``). Aggregates are mean and sample std (ddof=1) over seeds.

Memorization and dilation are taken in their *normalized* form when the run has it
(``train.memorization_normalized`` / ``train.dilation_normalized``: divided by the distance
between the clean class centroids, so CE and LS features of different scale compare), and
raw otherwise; the report says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nclab.store.index import RunStore

__all__ = ["METRICS", "load_records", "aggregate", "fit_line", "check_claims", "Claim", "md_keys"]

#: report name -> (label, candidate final-metric keys in order of preference)
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "test_acc": ("test accuracy", ("test_acc", "test.accuracy")),
    "memorization": ("memorization (normalized)", ("train.memorization_normalized", "train.memorization")),
    "dilation": ("dilation (normalized)", ("train.dilation_normalized", "train.dilation")),
    "test_dilation": ("test dilation (normalized)", ("test.dilation_normalized", "test.dilation")),
    "nc1": ("NC1 (train)", ("train.nc1",)),
    "orth_error": ("orthogonal-frame error of class means (train)", ("train.nc2_orthogonal_error_means",)),
    "etf_error": ("simplex-ETF error of class means (train)", ("train.nc2_etf_error_means",)),
    "realized_rate": ("realized noise rate", ("train.realized_noise_rate",)),
    "train_acc_clean": ("train accuracy vs clean labels", ("train.accuracy_clean", "train_acc_clean")),
}


def md_keys(records: list[dict[str, Any]]) -> dict[str, str]:
    """Which final keys fed ``memorization``/``dilation`` (normalized or raw)."""
    out = {}
    for m in ("memorization", "dilation"):
        # rate-0 runs have no noisy samples (memorization None): take the first run that has it
        out[m] = next((r["_keys"][m] for r in records if m in r["_keys"]), "n/a")
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def load_records(store: RunStore | str | Path, *, sweep: str | None = None) -> list[dict[str, Any]]:
    """One flat record per completed run: dataset, variant, loss, rate, seed, hash and the
    :data:`METRICS` values (None when missing or non-finite)."""
    if not isinstance(store, RunStore):
        store = RunStore(store, create=False)
    out = []
    for row in store.rows(status="completed", sweep=sweep):
        cfg, fin = row["config"], row["final"] or {}
        noise = cfg.get("noise") or {}
        rec: dict[str, Any] = {
            "hash": row["hash"],
            "dataset": (cfg.get("dataset") or {}).get("name", "?"),
            "variant": "latent" if float(noise.get("latent_fraction") or 0) > 0 else "main",
            "loss": (cfg.get("loss") or {}).get("name", "?"),
            "rate": float(noise.get("rate") or 0.0),
            "seed": int(cfg.get("seed", 0)),
            "outcome": row.get("outcome"),
            "_keys": {},
        }
        for name, (_, keys) in METRICS.items():
            rec[name] = None
            for k in keys:
                if _num(fin.get(k)) is not None:
                    rec[name] = _num(fin.get(k))
                    rec["_keys"][name] = k
                    break
        out.append(rec)
    return out


def aggregate(records: list[dict[str, Any]], metric: str) -> dict[tuple, dict[str, float]]:
    """``{(dataset, variant, loss, rate): {mean, std, n}}`` over seeds (std: ddof 1; 0 if n=1)."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r.get(metric) is None:
            continue
        groups.setdefault((r["dataset"], r["variant"], r["loss"], r["rate"]), []).append(r[metric])
    out = {}
    for k, vals in sorted(groups.items()):
        a = np.asarray(vals, dtype=float)
        out[k] = {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}
    return out


def fit_line(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Least squares ``y = a + b x``; R² = 1 - SS_res/SS_tot; Spearman rho and its p-value."""
    from scipy import stats  # noqa: PLC0415

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 3 or np.ptp(x) == 0:
        return {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "rho": math.nan, "p": math.nan, "n": int(x.size)}
    b, a = np.polyfit(x, y, 1)
    res = y - (a + b * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((res**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    rho, p = stats.spearmanr(x, y)
    return {"slope": float(b), "intercept": float(a), "r2": r2, "rho": float(rho), "p": float(p), "n": int(x.size)}


@dataclass
class Claim:
    """One hypothesis check: ``held`` is True/False/None (not enough data) with its evidence."""

    key: str
    statement: str
    held: bool | None
    summary: str
    details: list[str] = field(default_factory=list)


def _fmt(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}g}"


def check_claims(records: list[dict[str, Any]], *, alpha: float = 0.05, orth_tol: float = 0.1) -> list[Claim]:
    """H1, H2, H3 of paper-notes §5, decided from ``records`` (main variant only).

    * H1 holds for a (dataset, loss) group when the dilation-on-memorization slope over its
      noisy runs (rate > 0) is positive and Spearman's rho is significant (p < ``alpha``);
      overall it holds when it holds in every group with >= 3 runs.
    * H2 compares LS with CE per (dataset, rate > 0) cell on seed means: LS dilation lower
      (train, and test when measured), LS test accuracy higher; and per dataset LS slope
      lower. It holds when each comparison holds in a majority of cells/datasets.
      LS-vs-CE memorization is reported, not judged (an open question).
    * H3 holds when the mean orthogonal-frame error of the train class means at noise 0 is
      below ``orth_tol`` in every (dataset, loss) group (and it is compared with the
      simplex-ETF error).
    """
    main = [r for r in records if r["variant"] == "main"]
    claims = []

    # H1
    det, verdicts = [], []
    fits: dict[tuple[str, str], dict[str, float]] = {}
    for ds in sorted({r["dataset"] for r in main}):
        for loss in sorted({r["loss"] for r in main if r["dataset"] == ds}):
            pts = [(r["memorization"], r["dilation"]) for r in main
                   if r["dataset"] == ds and r["loss"] == loss and r["rate"] > 0 and r["memorization"] is not None and r["dilation"] is not None]
            if len(pts) < 3:
                det.append(f"{ds}/{loss}: only {len(pts)} noisy runs, not judged")
                continue
            f = fit_line(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))
            fits[(ds, loss)] = f
            ok = f["slope"] > 0 and f["p"] < alpha
            verdicts.append(ok)
            det.append(f"{ds}/{loss}: slope {_fmt(f['slope'])}, R² {_fmt(f['r2'])}, Spearman rho {_fmt(f['rho'])} "
                       f"(p {_fmt(f['p'], 2)}, n {f['n']}) -> {'holds' if ok else 'does not hold'}")
    held = None if not verdicts else all(verdicts)
    claims.append(Claim("H1", "dilation grows with memorization across noise levels (roughly linearly)", held,
                        f"held in {sum(verdicts)} of {len(verdicts)} dataset/loss groups" if verdicts else "not enough noisy runs", det))

    # H2
    det, c_dil, c_tdil, c_acc, c_slope, mem_notes = [], [], [], [], [], []
    agg = {m: aggregate(main, m) for m in ("dilation", "test_dilation", "test_acc", "memorization")}
    cells = sorted({(r["dataset"], r["rate"]) for r in main if r["rate"] > 0})
    for ds, rate in cells:
        g = {m: (agg[m].get((ds, "main", "ce", rate)), agg[m].get((ds, "main", "ls", rate))) for m in agg}
        parts = []
        if all(g["dilation"]):
            ok = g["dilation"][1]["mean"] < g["dilation"][0]["mean"]
            c_dil.append(ok)
            parts.append(f"dilation LS {_fmt(g['dilation'][1]['mean'])} vs CE {_fmt(g['dilation'][0]['mean'])}")
        if all(g["test_dilation"]):
            c_tdil.append(g["test_dilation"][1]["mean"] < g["test_dilation"][0]["mean"])
            parts.append(f"test dilation LS {_fmt(g['test_dilation'][1]['mean'])} vs CE {_fmt(g['test_dilation'][0]['mean'])}")
        if all(g["test_acc"]):
            c_acc.append(g["test_acc"][1]["mean"] > g["test_acc"][0]["mean"])
            parts.append(f"test acc LS {_fmt(g['test_acc'][1]['mean'])} vs CE {_fmt(g['test_acc'][0]['mean'])}")
        if all(g["memorization"]):
            less = g["memorization"][1]["mean"] < g["memorization"][0]["mean"]
            mem_notes.append(less)
            parts.append(f"memorization LS {_fmt(g['memorization'][1]['mean'])} vs CE {_fmt(g['memorization'][0]['mean'])}")
        if parts:
            det.append(f"{ds} @ rate {rate:g}: " + "; ".join(parts))
    for ds in sorted({d for d, _ in fits}):
        if (ds, "ce") in fits and (ds, "ls") in fits:
            ok = fits[(ds, "ls")]["slope"] < fits[(ds, "ce")]["slope"]
            c_slope.append(ok)
            det.append(f"{ds}: M-D slope LS {_fmt(fits[(ds, 'ls')]['slope'])} vs CE {_fmt(fits[(ds, 'ce')]['slope'])}")

    def maj(v: list[bool]) -> bool | None:
        return None if not v else sum(v) > len(v) / 2

    comps = {"LS dilates less (train)": maj(c_dil), "LS dilates less (test)": maj(c_tdil),
             "LS has higher test accuracy": maj(c_acc), "LS has a lower M-D slope": maj(c_slope)}
    judged = [v for v in comps.values() if v is not None]
    held = None if not judged else all(judged)
    counts = {"LS dilates less (train)": c_dil, "LS dilates less (test)": c_tdil,
              "LS has higher test accuracy": c_acc, "LS has a lower M-D slope": c_slope}
    summary = "; ".join(f"{k}: {sum(v)}/{len(v)}" for k, v in counts.items() if v)
    if mem_notes:
        summary += f"; (open question) LS memorizes less in {sum(mem_notes)}/{len(mem_notes)} cells"
    claims.append(Claim("H2", "at the same noise LS ends with less dilation than CE and better test accuracy "
                        "(a lower memorization-to-dilation slope)", held, summary or "no CE/LS pairs", det))

    # H3
    det, verdicts = [], []
    orth, etf = aggregate(main, "orth_error"), aggregate(main, "etf_error")
    for (ds, var, loss, rate), o in orth.items():
        if rate != 0:
            continue
        e = etf.get((ds, var, loss, rate))
        ok = o["mean"] < orth_tol
        verdicts.append(ok)
        det.append(f"{ds}/{loss} @ rate 0: orthogonal-frame error {_fmt(o['mean'])} ± {_fmt(o['std'])} "
                   f"(simplex-ETF error {_fmt(e['mean']) if e else 'n/a'}; n {o['n']}) -> {'holds' if ok else 'does not hold'} (tolerance {orth_tol})")
    held = None if not verdicts else all(verdicts)
    claims.append(Claim("H3", "with non-negative features the collapse is an orthogonal frame", held,
                        f"held in {sum(verdicts)} of {len(verdicts)} noise-free dataset/loss groups" if verdicts else "no noise-free runs", det))
    return claims
