"""The study report's model-vs-runs panel: the M-D model fitted to CE runs, LS predicted.

``section(rows, out_dir) -> (markdown_text, json_summary)``. ``rows`` are per-run dicts as built
by :func:`nclab.report.study_data.load_records` (terminal-phase runs only); read per run:

* ``dataset``, ``loss`` (``"ce"`` / ``"ls"``), ``rate`` (nominal noise rate), ``seed``;
* memorization / dilation normalized by the clean-centroid distance: ``memorization`` /
  ``dilation`` (used only when ``_keys`` says they came from the ``*_normalized`` keys, or when
  ``_keys`` is absent) or ``train.memorization_normalized`` / ``train.dilation_normalized``;
* test error: ``test_error``, else ``1 - test_acc`` (or ``1 - test.accuracy``);
* the mislabeled fraction eta: ``realized_rate`` (or ``train.realized_noise_rate``), else from
  ``rate``: ``rate (N-1)/N`` for ``noise_kind == "symmetric_all"``, ``rate`` otherwise;
* ``classes`` (N, default 2), ``variant`` (only ``"main"`` is used), LS ``alpha`` (``alpha`` or
  ``loss.alpha``; default 0.1, the study presets' value).

Missing keys never raise: the runs or cells concerned are skipped and listed in the text and
under ``"missing"`` in the summary. Per dataset the model (:mod:`nclab.theory.md_fit`) is fitted
to the CE runs and LS is predicted at the LS runs' noise rates; each LS measurement is the seed
mean with a 95% percentile-bootstrap interval (seeds resampled, 2000 draws, seeded), and the
text counts how many predictions fall inside their interval. The figure goes to
``out_dir/figures/model_vs_runs.png``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nclab.report.study_data import _num
from nclab.seeding import numpy_generator

__all__ = ["section", "bootstrap_mean_ci", "run_points"]

QUANTITIES = (("memorization", "memorization M / centre distance"), ("dilation", "dilation D / centre distance"),
              ("test_error", "test error"))
DEFAULT_LS_ALPHA = 0.1
FIGURE = "model_vs_runs.png"


def _normalized(row: dict[str, Any], name: str) -> float | None:
    v = _num(row.get(f"train.{name}_normalized"))
    if v is not None:
        return v
    keys = row.get("_keys")
    if isinstance(keys, dict) and name in keys and not str(keys[name]).endswith("_normalized"):
        return None  # a raw (unnormalized) value: not comparable with the model
    return _num(row.get(name))


def run_points(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Normalize study rows to ``{dataset, loss, rate, eta, seed, classes, alpha, memorization,
    dilation, test_error}`` (values may be None) and list what was missing."""
    out, missing = [], []
    counts: dict[str, int] = defaultdict(int)
    for i, r in enumerate(rows):
        if r.get("variant", "main") != "main":
            continue
        ds, loss, rate = r.get("dataset"), r.get("loss"), _num(r.get("rate", r.get("noise_rate")))
        if ds is None or loss is None or rate is None:
            counts["dataset/loss/rate"] += 1
            continue
        n_cls = r.get("classes") if isinstance(r.get("classes"), int) else 2
        eta = _num(r.get("realized_rate", r.get("train.realized_noise_rate")))
        if eta is None:
            counts["realized_rate (eta taken from the nominal rate)"] += 1
            eta = rate * (n_cls - 1) / n_cls if r.get("noise_kind") == "symmetric_all" else rate
        err = _num(r.get("test_error"))
        if err is None:
            acc = _num(r.get("test_acc", r.get("test.accuracy")))
            err = None if acc is None else 1.0 - acc
        p = {"dataset": str(ds), "loss": str(loss), "rate": rate, "eta": eta, "seed": r.get("seed", i),
             "classes": n_cls, "alpha": _num(r.get("alpha", r.get("loss.alpha"))),
             "memorization": _normalized(r, "memorization"), "dilation": _normalized(r, "dilation"),
             "test_error": err}
        if rate > 0:
            for q in ("memorization", "dilation"):
                if p[q] is None:
                    counts[f"normalized {q}"] += 1
        if err is None:
            counts["test accuracy"] += 1
        out.append(p)
    missing += [f"{n} run(s) without {what}" for what, n in sorted(counts.items())]
    return out, missing


def bootstrap_mean_ci(values: Sequence[float], *, rng: np.random.Generator, n_boot: int = 2000,
                      level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean (resampling the values); None below 2 values."""
    a = np.asarray(values, dtype=float)
    if a.size < 2:
        return None
    means = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _cells(points, loss, rng, n_boot):
    """Per rate: eta (mean), n, and per quantity (mean, ci)."""
    by: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for p in points:
        if p["loss"] == loss:
            by[p["rate"]].append(p)
    out = {}
    for rate, ps in sorted(by.items()):
        cell = {"eta": float(np.mean([p["eta"] for p in ps])), "n": len(ps)}
        for q, _ in QUANTITIES:
            vals = [p[q] for p in ps if p[q] is not None]
            ci = bootstrap_mean_ci(vals, rng=rng, n_boot=n_boot) if vals else None
            cell[q] = (float(np.mean(vals)), ci, len(vals)) if vals else None
        out[rate] = cell
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _plot(results, path: Path) -> None:
    from nclab.report.style import LOSS_COLORS, apply_style, plt, save  # noqa: PLC0415

    apply_style()
    fig, axes = plt.subplots(len(results), 3, figsize=(12.0, 3.3 * len(results)), squeeze=False)
    for row, res in zip(axes, results):
        for ax, (q, label) in zip(row, QUANTITIES):
            for loss, cells, curve, style in (("ce", res["ce_cells"], res["ce_curve"], "-"),
                                             ("ls", res["ls_cells"], res["ls_curve"], "--")):
                color = LOSS_COLORS.get(loss, "k")
                pts = [(rate, c[q]) for rate, c in cells.items() if c.get(q)]
                if pts:
                    x = np.array([p[0] for p in pts])
                    m = np.array([p[1][0] for p in pts])
                    lo = np.array([p[1][1][0] if p[1][1] else p[1][0] for p in pts])
                    hi = np.array([p[1][1][1] if p[1][1] else p[1][0] for p in pts])
                    ax.errorbar(x, m, yerr=[m - lo, hi - m], fmt="o", color=color, capsize=3, markersize=4,
                                label=f"{loss.upper()} runs (mean, 95% CI)")
                cx = [c["rate"] for c in curve if c.get(q) is not None]
                if cx:
                    what = "model fit" if loss == "ce" else "model prediction"
                    ax.plot(cx, [c[q] for c in curve if c.get(q) is not None], style, color=color, lw=1.6,
                            label=f"{loss.upper()} {what}")
            ax.set_xlabel("noise rate")
            ax.set_ylabel(label)
            ax.set_title(f"{res['dataset']}: {q.replace('_', ' ')}")
        row[0].legend(fontsize=7)
    fig.suptitle("M-D model fitted to CE, predicting LS (λ, scale and error calibration from CE only)", y=1.0)
    save(fig, path)


def section(rows: Sequence[dict[str, Any]], out_dir: str | Path, *, ls_alpha: float | None = None,
            constraint: str = "hard", penalty: float = 10.0, n_boot: int = 2000, seed: int = 0,
            fit_options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Markdown text and a JSON-ready summary of the model-vs-runs comparison (module docstring).

    ``ls_alpha`` overrides the LS smoothing read from the rows; ``constraint`` / ``penalty``
    select the model variant; ``fit_options`` go to :func:`nclab.theory.md_fit.fit_md`.
    """
    from nclab.theory.md_fit import fit_md, predict_md  # noqa: PLC0415

    out_dir = Path(out_dir)
    points, missing = run_points(rows)
    rng = numpy_generator(seed, "report.model_vs_runs")
    lines = ["## The M-D model against the runs", "",
             "The memorization-dilation model (our reconstruction, `docs/theory-md-model.md`; "
             f"{constraint} expressivity constraint) is fitted per dataset to the CE runs only: its "
             "expressivity λ and one length scale (M and D are both divided by the clean-centre distance, "
             "so only a common factor remains), plus a linear map from the model's test-error proxy to the "
             "runs' test error. LS is then *predicted* at each noise rate; each measurement is the seed "
             "mean with a 95% bootstrap interval (seeds resampled).", ""]
    summary: dict[str, Any] = {"constraint": constraint, "penalty": penalty if constraint == "soft" else None,
                               "datasets": [], "missing": missing, "figure": None}
    results = []
    for ds in sorted({p["dataset"] for p in points}):
        pts = [p for p in points if p["dataset"] == ds]
        ce = [p for p in pts if p["loss"] == "ce"]
        ls = [p for p in pts if p["loss"] == "ls"]
        if not ce or not ls:
            missing.append(f"{ds}: no {'CE' if not ce else 'LS'} runs, not compared")
            continue
        alphas = sorted({p["alpha"] for p in ls if p["alpha"] is not None})
        if ls_alpha is not None:
            alpha = float(ls_alpha)
        elif len(alphas) == 1:
            alpha = alphas[0]
        else:
            alpha = DEFAULT_LS_ALPHA
            missing.append(f"{ds}: LS alpha {'ambiguous ' + str(alphas) if alphas else 'not in the rows'}; "
                           f"assumed {alpha:g}")
        n_cls = max(p["classes"] for p in pts)
        opts = {"num_classes": n_cls, "constraint": constraint, "penalty": penalty, **(fit_options or {})}
        try:
            fit = fit_md([{"eta": p["eta"], "memorization": p["memorization"], "dilation": p["dilation"],
                           "test_error": p["test_error"]} for p in ce], **opts)
        except ValueError as exc:
            missing.append(f"{ds}: model not fitted ({exc})")
            continue
        ce_cells, ls_cells = _cells(ce, "ce", rng, n_boot), _cells(ls, "ls", rng, n_boot)
        ce_pred = {c["eta"]: c for c in predict_md(fit, [c["eta"] for c in ce_cells.values()], loss="ce")}
        ls_pred = {c["eta"]: c for c in predict_md(fit, [c["eta"] for c in ls_cells.values()], loss="ls", alpha=alpha)}
        ce_curve = [{"rate": r, **ce_pred[c["eta"]]} for r, c in ce_cells.items()]
        ls_curve = [{"rate": r, **ls_pred[c["eta"]]} for r, c in ls_cells.items()]
        compared, inside, cells = 0, 0, []
        for (rate, cell), pred in zip(ls_cells.items(), ls_curve):
            for q, _ in QUANTITIES:
                meas = cell.get(q)
                if rate == 0 and q != "test_error":
                    continue  # no noisy samples: M and D are not defined by the model at eta = 0
                entry = {"rate": rate, "eta": cell["eta"], "quantity": q, "predicted": pred[q],
                         "measured": None if meas is None else meas[0],
                         "ci": None if meas is None or meas[1] is None else list(meas[1]),
                         "n": 0 if meas is None else meas[2], "inside": None}
                if entry["ci"] is not None:
                    entry["inside"] = bool(entry["ci"][0] <= pred[q] <= entry["ci"][1])
                    compared += 1
                    inside += entry["inside"]
                cells.append(entry)
        fitd = fit.to_dict()
        summary["datasets"].append({"dataset": ds, "num_classes": n_cls, "ls_alpha": alpha, "fit": fitd,
                                    "cells": cells, "compared": compared, "inside": inside})
        results.append({"dataset": ds, "ce_cells": ce_cells, "ls_cells": ls_cells, "ce_curve": ce_curve,
                        "ls_curve": ls_curve})
        lines += [f"### {ds}", "",
                  f"Fit on {fit.n_runs} CE runs (noisy rates η = {', '.join(f'{e:.3g}' for e in fit.etas)}): "
                  f"λ = {fit.expressivity:.3g}, scale = {fit.scale:.3g}, test error ≈ {fit.err_offset:.3g} + "
                  f"{fit.err_slope:.3g} × proxy (N = {n_cls}, LS α = {alpha:g}). "
                  f"LS predictions inside the runs' 95% interval: **{inside} of {compared}**.", "",
                  "| noise rate | quantity | LS predicted | LS measured (mean) | 95% CI | n | inside |",
                  "|---|---|---|---|---|---|---|"]
        for c in cells:
            ci = "n/a" if c["ci"] is None else f"[{c['ci'][0]:.3g}, {c['ci'][1]:.3g}]"
            mark = "–" if c["inside"] is None else ("yes" if c["inside"] else "no")
            lines.append(f"| {c['rate']:g} | {c['quantity'].replace('_', ' ')} | {_fmt(c['predicted'])} | "
                         f"{_fmt(c['measured'])} | {ci} | {c['n']} | {mark} |")
        lines.append("")
    if results:
        fig_path = out_dir / "figures" / FIGURE
        fig_path.parent.mkdir(parents=True, exist_ok=True)
        _plot(results, fig_path)
        summary["figure"] = str(Path("figures") / FIGURE)
        lines[4:4] = [f"![model vs runs](figures/{FIGURE})", ""]
    else:
        lines += ["No dataset has both CE and LS runs with the needed values; no comparison.", ""]
    if missing:
        lines += ["Missing or skipped:", ""] + [f"- {m}" for m in missing] + [""]
    return "\n".join(lines), summary
