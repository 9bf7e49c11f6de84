"""The study report's model-vs-runs section: a ratio test of the M-D model on orthogonal-frame runs.

``section(rows, out_dir, *, seed=0) -> (markdown, summary)``. ``rows``: every run of the study,
one dict each (``dataset``, ``classes``, ``variant``, ``loss``, ``alpha``, ``noise_rate`` (nominal
p), ``realized_noise`` (eta), ``seed``, ``status``, ``geometry``, normalized ``memorization`` and
``dilation``, ``test_acc``, ...; None where missing). The section

1. keeps the runs the model describes: main variant, completed, noisy (p > 0), CE or LS, class
   means in an orthogonal frame, with eta, M and D known; every other run is counted by reason;
2. per dataset, fits the soft-constraint model's lambda (and a length scale) to the CE runs
   (:mod:`nclab.theory.md_fit`), per nominal-rate cell at the cell's mean realized eta;
3. predicts LS as ratios ``M_LS/M_CE``, ``D_LS/D_CE`` and ``(D/M)_LS/(D/M)_CE``; the prediction's
   interval comes from refitting lambda on seed-bootstrap resamples of the CE runs;
4. measures the same ratios per seed on the pairs (same dataset, rate and seed, both runs kept):
   mean of the per-seed ratios with a 95% t-interval;
5. calls a prediction *consistent* when its interval and the measured interval overlap, and
   states per mechanism (ratio below or above 1) whether the runs support or contradict the
   model's direction.

The model's test-error proxy is compared (as the direction of LS − CE) only where it is not
degenerate (>= ``PROXY_FLOOR`` for both losses in every cell); otherwise the text says why not.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nclab.report.study_data import finite_float
from nclab.stats import mean_interval

__all__ = ["section", "select_runs", "t_interval", "MECHANISMS"]

FIGURE = "model_vs_runs.png"
DEFAULT_LS_ALPHA = 0.1
#: below this the model's test-error proxy is treated as numerically zero (no comparison)
PROXY_FLOOR = 1e-3
#: coarse lambda grid of the model table (refined around the full-data fit)
LAMBDA_GRID = tuple(float(v) for v in np.geomspace(0.02, 4.0, 7))
LEVEL = 0.95

#: (key, ratio label, what a value below the reference means, what above means, reference)
MECHANISMS = (
    ("memorization", "M_LS/M_CE", "LS memorizes less", "LS memorizes more", 1.0),
    ("dilation", "D_LS/D_CE", "LS dilates less", "LS dilates more", 1.0),
    ("dm", "(D/M)_LS/(D/M)_CE", "LS dilates less per unit of memorization",
     "LS dilates more per unit of memorization", 1.0),
)
TEST_ERROR = ("test_error", "err_LS − err_CE", "LS has the lower test error", "LS has the higher test error", 0.0)


def t_interval(values: Sequence[float], *, level: float = LEVEL) -> tuple[float, tuple[float, float] | None]:
    """``(mean, (lo, hi))``: mean with a Student-t interval; the interval is None below 2 values or
    when all values are equal (a zero-width interval carries no evidence)."""
    a = np.asarray(values, dtype=float)
    mean = float(a.mean()) if a.size else float("nan")
    if a.size < 2 or not float(a.std(ddof=1)) > 0:
        return mean, None
    iv = mean_interval(a, level=level)
    return mean, (iv.lo, iv.hi)


def select_runs(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The runs the model describes, normalized, and the counts of every run left out, by reason."""
    used, reasons = [], Counter()
    noisy_main = 0
    for r in rows:
        if r.get("variant") != "main":
            reasons["not the main variant (no-bias or latent runs)"] += 1
            continue
        p = finite_float(r.get("noise_rate"))
        if p is None or p <= 0:
            reasons["noise-free (the model needs mislabeled samples)"] += 1
            continue
        noisy_main += 1
        loss = r.get("loss")
        eta, m, d = finite_float(r.get("realized_noise")), finite_float(r.get("memorization")), finite_float(r.get("dilation"))
        if loss not in ("ce", "ls"):
            why = f"loss {loss!r} (not CE or LS)"
        elif r.get("status") != "completed":
            why = f"status {r.get('status') or 'unknown'} (not completed)"
        elif r.get("geometry") != "orthogonal frame":
            why = f"geometry: {r.get('geometry') or 'not classified'}"
        elif eta is None:
            why = "no realized noise rate"
        elif not 0 < eta < 1:
            why = "realized noise rate outside (0, 1)"
        elif m is None or d is None:
            why = "no normalized memorization or dilation"
        else:
            why = None
        if why:
            reasons[why] += 1
            continue
        acc = finite_float(r.get("test_acc"))
        used.append({"dataset": str(r.get("dataset")), "classes": int(finite_float(r.get("classes")) or 2), "loss": loss,
                     "alpha": finite_float(r.get("alpha")), "rate": p, "eta": eta, "seed": r.get("seed"),
                     "memorization": m, "dilation": d, "test_error": None if acc is None else 1.0 - acc})
    info = {"rows": len(rows), "noisy_main_runs": noisy_main, "used_runs": len(used),
            "left_out": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))}
    return used, info


def _pairs(rows, used) -> tuple[dict[tuple, tuple[dict, dict]], Counter, int]:
    """Pairs (dataset, rate, seed) -> (CE run, LS run) among the used runs; plus the reasons the
    other noisy main-variant pairs (both losses present) were left out, and their total."""
    key = lambda r: (str(r.get("dataset")), finite_float(r.get("noise_rate")), r.get("seed"))  # noqa: E731
    by: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        p = finite_float(r.get("noise_rate"))
        if r.get("variant") == "main" and p is not None and p > 0 and r.get("loss") in ("ce", "ls"):
            by[key(r)][r["loss"]] = r
    used_by = {(u["dataset"], u["rate"], u["seed"], u["loss"]): u for u in used}
    pairs, left, total = {}, Counter(), 0
    for k, both in by.items():
        if len(both) < 2:
            continue
        total += 1
        ce, ls = used_by.get((*k, "ce")), used_by.get((*k, "ls"))
        if ce and ls:
            pairs[k] = (ce, ls)
            continue
        geo = [both[x].get("geometry") for x in ("ce", "ls")]
        if any(both[x].get("status") != "completed" for x in ("ce", "ls")):
            left["a run not completed"] += 1
        elif any(g != "orthogonal frame" for g in geo):
            left["not both orthogonal (" + " / ".join(f"{x.upper()} {g or 'unclassified'}" for x, g in
                                                       zip(("ce", "ls"), geo)) + ")"] += 1
        else:
            left["a run without realized noise, M or D"] += 1
    return pairs, left, total


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def _ci(ci) -> str:
    return "n/a" if ci is None else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _side(ci, ref: float) -> str | None:
    """'below' / 'above' when the interval lies strictly on one side of ``ref``; 'contains' otherwise."""
    if ci is None:
        return None
    if ci[1] < ref:
        return "below"
    if ci[0] > ref:
        return "above"
    return "contains"


def _verdict(model_side: str | None, runs_side: str | None) -> str:
    if model_side is None or runs_side is None:
        return "insufficient data"
    if model_side == "contains":
        return "no clear prediction"
    if runs_side == "contains":
        return "inconclusive"
    return "supported" if model_side == runs_side else "contradicted"


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _dataset(ds, runs, pairs, *, rng, n_boot, penalty, lambdas, notes) -> dict[str, Any] | None:
    """Fit, bootstrap and compare one dataset; None (with a note) when it cannot be fitted."""
    from nclab.theory.md_fit import fit_lambda, ratios, refine, tabulate  # noqa: PLC0415

    ce = [r for r in runs if r["loss"] == "ce"]
    if not ce:
        notes.append(f"{ds}: no CE run with an orthogonal frame; the model is not fitted")
        return None
    n_cls = max(r["classes"] for r in runs)
    alphas = sorted({r["alpha"] for r in runs if r["loss"] == "ls" and r["alpha"] is not None})
    if len(alphas) == 1:
        alpha = alphas[0]
    else:
        alpha = alphas[0] if alphas else DEFAULT_LS_ALPHA
        notes.append(f"{ds}: LS alpha {'ambiguous ' + str(alphas) if alphas else 'not in the rows'}; "
                     f"the model uses {alpha:g}")
    rates = sorted({r["rate"] for r in ce})
    # one eta per nominal-rate cell: the mean realized eta of the cell's kept runs (both losses)
    etas = [float(np.mean([r["eta"] for r in runs if r["rate"] == p])) for p in rates]
    seeds = sorted({r["seed"] for r in ce}, key=str)
    vm = np.full((len(seeds), len(rates)), np.nan)
    vd = np.full_like(vm, np.nan)
    for i, s in enumerate(seeds):
        for j, p in enumerate(rates):
            cell = [r for r in ce if r["seed"] == s and r["rate"] == p]
            if cell:
                vm[i, j] = np.mean([r["memorization"] for r in cell])
                vd[i, j] = np.mean([r["dilation"] for r in cell])
    ce_mean_m, ce_mean_d = np.nanmean(vm, axis=0), np.nanmean(vd, axis=0)
    opts = dict(alpha=alpha, num_classes=n_cls, penalty=penalty, constraint="soft")
    table = tabulate(etas, lambdas, **opts)
    lam0 = float(fit_lambda(table, ce_mean_m, ce_mean_d)[0][0])
    table = refine(table, lam0)
    lam_arr, scale_arr, _ = fit_lambda(table, ce_mean_m, ce_mean_d)
    lam, scale = float(lam_arr[0]), float(scale_arr[0])
    at_edge = lam <= table.lambdas[0] * 1.0001 or lam >= table.lambdas[-1] / 1.0001

    # seed bootstrap of the CE fit: resample seeds, refit lambda on the table (no new solves)
    draws = rng.integers(0, len(seeds), size=(n_boot, len(seeds)))
    counts = np.stack([np.bincount(d, minlength=len(seeds)) for d in draws]).astype(float)  # (B, S)
    have = np.isfinite(vm)
    with np.errstate(invalid="ignore", divide="ignore"):
        bm = (counts @ np.where(have, vm, 0.0)) / (counts @ have)
        bd = (counts @ np.where(have, vd, 0.0)) / (counts @ have)
    lam_b = fit_lambda(table, bm, bd)[0]
    ok = np.isfinite(lam_b)
    pred0 = ratios(table, lam)
    pred_b = ratios(table, lam_b[ok])
    lo_q, hi_q = (1 - LEVEL) / 2, (1 + LEVEL) / 2

    def pinterval(arr_b):
        col = arr_b[np.isfinite(arr_b)]
        if col.size < 10:
            return None
        return float(np.quantile(col, lo_q)), float(np.quantile(col, hi_q))

    # CE fit check: fitted s * model against the CE seed means (t-interval over seeds)
    mod0 = table.at(lam)["ce"]
    ce_check = []
    for j, p in enumerate(rates):
        for q, arr in (("memorization", vm), ("dilation", vd)):
            vals = arr[np.isfinite(arr[:, j]), j]
            mean, ci = t_interval(vals)
            fitted = scale * float(mod0[q][j])
            ce_check.append({"rate": p, "eta": etas[j], "quantity": q, "fitted": fitted, "measured": mean, "ci": ci,
                             "n": int(vals.size),
                             "inside": None if ci is None else bool(ci[0] <= fitted <= ci[1])})

    proxy_min = float(min(np.min(pred0["proxy_ce"]), np.min(pred0["proxy_ls"])))
    proxy_max = float(max(np.max(pred0["proxy_ce"]), np.max(pred0["proxy_ls"])))
    use_err = proxy_min >= PROXY_FLOOR
    mechs = MECHANISMS + ((TEST_ERROR,) if use_err else ())

    cells = []
    for j, p in enumerate(rates):
        prs = [v for k, v in sorted(pairs.items(), key=lambda kv: str(kv[0][2])) if k[0] == ds and k[1] == p]
        cell = {"rate": p, "eta": etas[j], "n_pairs": len(prs), "quantities": {}}
        for key, label, below, above, ref in mechs:
            if key == "test_error":
                pv = float(pred0["proxy_ls"][j] - pred0["proxy_ce"][j])
                pci = pinterval(pred_b["proxy_ls"][:, j] - pred_b["proxy_ce"][:, j])
                vals = [ls["test_error"] - c["test_error"] for c, ls in prs
                        if c["test_error"] is not None and ls["test_error"] is not None]
            else:
                pv = float(pred0[key][j])
                pci = pinterval(pred_b[key][:, j])
                vals = []
                for c, ls in prs:
                    if key == "dm":
                        den = c["dilation"] * ls["memorization"]
                        v = ls["dilation"] * c["memorization"] / den if den > 0 else None
                    else:
                        v = ls[key] / c[key] if c[key] > 0 else None
                    if v is not None and math.isfinite(v):
                        vals.append(v)
            mean, mci = t_interval(vals) if vals else (None, None)
            overlap = None if pci is None or mci is None else bool(pci[0] <= mci[1] and mci[0] <= pci[1])
            ms, rs = _side(pci, ref), _side(mci, ref)
            cell["quantities"][key] = {
                "label": label, "predicted": pv, "predicted_ci": pci, "measured": mean, "measured_ci": mci,
                "n": len(vals), "consistent": overlap, "model_side": ms, "runs_side": rs, "verdict": _verdict(ms, rs)}
        cells.append(cell)
    return {
        "dataset": ds, "classes": n_cls, "ls_alpha": alpha, "n_ce_runs": len(ce), "n_ls_runs": len(runs) - len(ce),
        "n_seeds": len(seeds), "n_pairs": sum(c["n_pairs"] for c in cells),
        "fit": {"lambda": lam, "scale": scale, "lambda_ci": pinterval(lam_b[ok]), "at_grid_edge": bool(at_edge),
                "lambda_grid": [float(table.lambdas[0]), float(table.lambdas[-1])],
                "bootstrap_ok": int(ok.sum()), "n_boot": int(n_boot)},
        "ce_check": ce_check, "proxy_range": [proxy_min, proxy_max], "test_error_compared": bool(use_err),
        "cells": cells,
    }


def _mechanism_lines(results) -> tuple[list[str], list[dict[str, Any]]]:
    """Per mechanism: one line per dataset (the cells with pairs), then a tally over all datasets."""
    lines, out = [], []
    for key, label, below, above, ref in MECHANISMS + (TEST_ERROR,):
        say = {"below": below, "above": above, "contains": "no clear direction", None: "no interval"}
        tally: Counter = Counter()
        sizes = [0, 0]  # consistent, compared
        for res in results:
            cells = [c for c in res["cells"] if key in c["quantities"] and c["n_pairs"] > 0]
            if not cells:
                continue
            parts = []
            for c in cells:
                q = c["quantities"][key]
                tally[q["verdict"]] += 1
                if q["consistent"] is not None:
                    sizes[0] += q["consistent"]
                    sizes[1] += 1
                parts.append(f"η = {c['eta']:.3g}: model {_fmt(q['predicted'])} {_ci(q['predicted_ci'])} "
                             f"({say[q['model_side']]}), runs {_fmt(q['measured'])} {_ci(q['measured_ci'])} "
                             f"({say[q['runs_side']]}, {q['n']} pairs) → **{q['verdict']}**"
                             + (", sizes differ" if q["consistent"] is False else ""))
            lines.append(f"- {res['dataset']}, {label}: " + "; ".join(parts) + ".")
            out.append({"dataset": res["dataset"], "mechanism": key, "label": label,
                        "verdicts": dict(Counter(c["quantities"][key]["verdict"] for c in cells)),
                        "consistent": sum(bool(c["quantities"][key]["consistent"]) for c in cells),
                        "compared": sum(c["quantities"][key]["consistent"] is not None for c in cells)})
        if tally:
            lines.append(f"- **{label} (< {ref:g}: {below}), all datasets:** "
                         + ", ".join(f"{v} in {n} cell{'s' if n != 1 else ''}" for v, n in sorted(tally.items()))
                         + f"; the predicted size is consistent with the runs in {sizes[0]} of {sizes[1]}.")
    return lines, out


def _plot(results, path: Path) -> None:
    from nclab.report.style import LOSS_COLORS, apply_style, plt, save  # noqa: PLC0415

    apply_style()
    fig, axes = plt.subplots(len(results), len(MECHANISMS), figsize=(12.0, 3.4 * len(results) + 0.6), squeeze=False,
                             layout="constrained")
    for row, res in zip(axes, results):
        for ax, (key, label, below, _, ref) in zip(row, MECHANISMS):
            cells = [c for c in res["cells"] if c["n_pairs"] > 0]
            for who, color, off, mk in (("model", LOSS_COLORS["ls"], -0.15, "s"), ("runs", "k", 0.15, "o")):
                pts = []
                for c in cells:
                    q = c["quantities"][key]
                    v, ci = (q["predicted"], q["predicted_ci"]) if who == "model" else (q["measured"], q["measured_ci"])
                    if v is not None and math.isfinite(v):
                        pts.append((c["eta"], v, ci))
                if not pts:
                    continue
                span = max(p[0] for p in pts) - min(p[0] for p in pts)
                dx = off * 0.05 * (span if span > 0 else max(p[0] for p in pts))
                x = np.array([p[0] for p in pts]) + dx
                y = np.array([p[1] for p in pts])
                lo = np.array([p[2][0] if p[2] else p[1] for p in pts])
                hi = np.array([p[2][1] if p[2] else p[1] for p in pts])
                lab = "model (CE fit, 95% seed bootstrap)" if who == "model" else "runs (mean of pairs, 95% t)"
                # a bootstrap interval need not contain the full-data fit (e.g. one seed): clip the bars at the point
                ax.errorbar(x, y, yerr=[np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)], fmt=mk, color=color, capsize=3, markersize=4, label=lab,
                            ls="-" if who == "model" and len(pts) > 1 else "none", lw=1.2)
            ax.axhline(ref, color="0.6", lw=0.8, ls=":")
            ax.set_xlabel("realized noise η")
            ax.set_ylabel(label)
            ax.set_title(f"{res['dataset']}: {label}")
        row[0].legend(fontsize=7)
    fig.suptitle("M-D model (soft constraint) fitted to CE, LS/CE ratios predicted; orthogonal-frame runs only")
    save(fig, path)


def section(rows: Sequence[dict[str, Any]], out_dir: str | Path, *, seed: int = 0, n_boot: int = 200,
            penalty: float = 10.0, lambdas: Sequence[float] = LAMBDA_GRID,
            figure: bool = True) -> tuple[str, dict[str, Any]]:
    """Markdown text and a JSON-ready summary of the model-vs-runs test (module docstring).

    ``seed`` seeds the bootstrap (the same seed gives the same summary); ``n_boot`` resamples;
    ``penalty`` is the soft constraint's mu; ``lambdas`` the coarse grid of the model table;
    ``figure=False`` skips the figure (the text and summary do not change otherwise).
    """
    if n_boot < 20:
        raise ValueError(f"n_boot must be >= 20 for a 95% percentile interval; got {n_boot}")
    out_dir = Path(out_dir)
    used, info = select_runs(rows)
    pairs, pair_left, pair_total = _pairs(rows, used)
    info.update({"pairs_total": pair_total, "pairs_used": len(pairs),
                 "pairs_left_out": dict(sorted(pair_left.items(), key=lambda kv: (-kv[1], kv[0])))})
    notes: list[str] = []
    results = []
    rng = np.random.default_rng(seed)
    for ds in sorted({r["dataset"] for r in used}):
        try:
            res = _dataset(ds, [r for r in used if r["dataset"] == ds], pairs, rng=rng, n_boot=n_boot,
                           penalty=penalty, lambdas=lambdas, notes=notes)
        except ValueError as exc:  # e.g. a lambda grid the model cannot be tabulated on
            notes.append(f"{ds}: the model is not fitted ({exc})")
            res = None
        if res is not None:
            results.append(res)

    lines = [
        "## The M-D model against the runs", "",
        "The memorization-dilation model (our reconstruction, `docs/theory-md-model.md`) is tested in its soft "
        f"expressivity variant (penalty μ = {penalty:g}), where the loss can set D/M; under the hard constraint "
        "D = λM for every loss, so the LS D/M would equal the fitted λ by construction. Per dataset the model's λ "
        "and one length scale are fitted to the CE runs only (M and D normalized by the clean-centroid distance, "
        "each nominal rate p at its mean realized noise η). LS is then predicted as scale-free ratios at equal η, "
        "M_LS/M_CE, D_LS/D_CE and (D/M)_LS/(D/M)_CE, and compared with the paired per-seed ratios of the runs "
        f"(same dataset, rate and seed): mean with a {LEVEL:.0%} t-interval. The prediction's interval comes from "
        f"refitting λ on {n_boot} seed-bootstrap resamples of the CE runs (seed {seed}). A prediction is "
        "**consistent** when its interval overlaps the measured one. A mechanism is **supported** in a cell when "
        "both intervals lie on the same side of 1, **contradicted** when on opposite sides, **inconclusive** when "
        "the runs' interval contains 1, and has **no clear prediction** when the model's does.", "",
        f"Runs used: the {info['used_runs']} noisy main-variant runs (of {info['noisy_main_runs']}; {info['rows']} "
        "rows in all) that completed with class means in an orthogonal frame, the geometry the model assumes. "
        f"Pairs used: {len(pairs)} of {pair_total}.",
    ]
    if info["left_out"]:
        lines.append("Runs left out: " + "; ".join(f"{why}: {n}" for why, n in info["left_out"].items()) + ".")
    if pair_left:
        lines.append("Pairs left out: " + "; ".join(f"{why}: {n}" for why, n in info["pairs_left_out"].items()) + ".")
    lines.append("")
    summary: dict[str, Any] = {
        "model": {"constraint": "soft", "penalty": float(penalty), "lambda_w": 5e-3, "lambda_h": 5e-3, "per_class": 10,
                  "starts": 1, "lambda_grid": [float(v) for v in lambdas]},
        "rule": {"consistent": "prediction interval and measured interval overlap",
                 "prediction_interval": f"{LEVEL:.0%} percentile of seed-bootstrap refits",
                 "measured_interval": f"mean of per-seed ratios, {LEVEL:.0%} Student-t",
                 "proxy_floor": PROXY_FLOOR},
        "seed": int(seed), "n_boot": int(n_boot), "selection": info, "datasets": results, "notes": notes,
        "figures": [],
    }
    if not any(c["n_pairs"] for res in results for c in res["cells"]):
        lines += ["No pair of CE and LS runs with both class means in an orthogonal frame: the model is not "
                  "compared with the runs.", ""]
        if notes:
            lines += [f"- {n}" for n in notes] + [""]
        summary["mechanisms"] = []
        return "\n".join(lines), _jsonable(summary)

    if figure:
        fig_path = out_dir / "figures" / FIGURE
        fig_path.parent.mkdir(parents=True, exist_ok=True)
        _plot([r for r in results if any(c["n_pairs"] for c in r["cells"])], fig_path)
        summary["figures"] = [str(Path("figures") / FIGURE)]
        lines += [f"![model vs runs](figures/{FIGURE})", ""]

    for res in results:
        f = res["fit"]
        inside = [c for c in res["ce_check"] if c["inside"] is not None]
        lines += [f"### {res['dataset']} (N = {res['classes']}, LS α = {res['ls_alpha']:g})", "",
                  f"Fit on {res['n_ce_runs']} CE runs ({res['n_seeds']} seeds): λ = {_fmt(f['lambda'])} "
                  f"(bootstrap {_ci(f['lambda_ci'])}, {f['bootstrap_ok']} of {f['n_boot']} resamples fitted), "
                  f"length scale {_fmt(f['scale'])}."
                  + (f" λ lies at the edge of the grid [{_fmt(f['lambda_grid'][0])}, {_fmt(f['lambda_grid'][1])}]: "
                     "the model cannot match CE's D/M inside it." if f["at_grid_edge"] else "")
                  + f" The fitted CE values fall inside the CE runs' {LEVEL:.0%} t-interval in "
                  f"{sum(c['inside'] for c in inside)} of {len(inside)} (cell, quantity) checks.", ""]
        lines += ["| p | η | pairs | ratio | model (95% bootstrap) | runs (95% t) | consistent | mechanism |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in res["cells"]:
            if not c["n_pairs"]:
                continue
            for q in c["quantities"].values():
                cons = "n/a" if q["consistent"] is None else ("yes" if q["consistent"] else "no")
                lines.append(f"| {c['rate']:g} | {c['eta']:.3g} | {c['n_pairs']} | {q['label']} | "
                             f"{_fmt(q['predicted'])} {_ci(q['predicted_ci'])} | {_fmt(q['measured'])} "
                             f"{_ci(q['measured_ci'])} | {cons} | {q['verdict']} |")
        lonely = [c for c in res["cells"] if not c["n_pairs"]]
        if lonely:
            rates = ", ".join(f"{c['rate']:g}" for c in lonely)
            lines.append(f"\nNo pair at p = {rates} (those cells' CE runs enter the fit only).")
        lines.append("")
        if not res["test_error_compared"]:
            lines += [f"The model's test-error proxy at the fitted λ lies in [{res['proxy_range'][0]:.2g}, "
                      f"{res['proxy_range'][1]:.2g}] (below {PROXY_FLOOR:g} somewhere): numerically degenerate, so "
                      "test error is not compared.", ""]
    mech_lines, mech_summary = _mechanism_lines(results)
    lines += ["### What the runs say about the model's mechanisms", ""] + mech_lines + [""]
    summary["mechanisms"] = mech_summary
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines), _jsonable(summary)
