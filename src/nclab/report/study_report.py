"""The study report: claims, run counts, geometry, the model-vs-runs test and figures, as
Markdown (plus a self-contained HTML page) and a JSON summary, built from the run table only.

``build_report(source, out_dir=None)`` takes a results store or a ``runs.csv``
(:mod:`nclab.report.study_data`). From a store it first writes ``runs.csv`` and then reads it
back, so the claims always come from exactly what the table holds: ``nclab report
runs.csv --json`` prints the same ``claims.json`` as the store it came from.

Written under ``out_dir`` (default ``STORE/report``, or the folder of the ``runs.csv``):
``report.md``, ``report.html``, ``claims.json``, ``runs.csv`` (from a store) and
``figures/*.png``. The rules are in ``docs/method.md`` §5.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nclab.report.html import md_text as _md_text
from nclab.report.study_data import METRICS, aggregate, fit_line
from nclab.store.files import atomic_write_text

__all__ = ["Report", "build_report", "study_summary"]

LOSS_LABEL = {"ce": "cross-entropy (CE)", "ls": "label smoothing (LS)"}
SEED = 0  # the model-vs-runs bootstrap's seed: a report is a function of its run table


@dataclass
class Report:
    out_dir: Path | None
    markdown: Path | None
    html: Path | None
    figures: list[Path] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # what `nclab report --json` prints (= claims.json)


def _style():
    from nclab.report.style import LOSS_COLORS, OKABE_ITO, apply_style, save  # noqa: PLC0415

    apply_style()
    return LOSS_COLORS, OKABE_ITO, save


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.{nd}g}" if isinstance(v, float) else str(v)


def _ci(ci: Any) -> str:
    return "–" if not ci else f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _file_stem(value: Any) -> str:
    """A stored string as a file-name stem inside the figures folder (never a path)."""
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", str(value)).lstrip(".")
    return stem or "_"


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_md_text(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _cell_eta(rows: Sequence[dict], ds: str) -> dict[float, float]:
    """Mean realized noise rate per nominal rate (the axis of every figure)."""
    by: dict[float, list[float]] = {}
    for r in rows:
        if r["dataset"] == ds and r.get("realized_noise") is not None:
            by.setdefault(r["noise_rate"], []).append(r["realized_noise"])
    return {p: float(np.mean(v)) for p, v in by.items()}


# --------------------------------------------------------------------------- figures
def _md_scatter(rows, ds, path) -> bool:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    colors, palette, save = _style()
    pts_all = [r for r in rows if r["dataset"] == ds and r["variant"] == "main" and r["noise_rate"] > 0
               and r["status"] == "completed" and r.get("memorization") is not None and r.get("dilation") is not None]
    if not pts_all:
        return False
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    markers = {"orthogonal frame": "o", "dead class": "x", "other": "^"}
    for loss in sorted({r["loss"] for r in pts_all}):
        pts = [r for r in pts_all if r["loss"] == loss]
        c = colors.get(loss, palette[0])
        for geo, mk in markers.items():
            sub = [r for r in pts if (r.get("geometry") or "other") == geo]
            if sub:
                ax.scatter([r["memorization"] for r in sub], [r["dilation"] for r in sub], c=c, marker=mk,
                           s=14 + 200 * np.array([r["realized_noise"] or 0 for r in sub]), alpha=0.7,
                           linewidths=0.8 if mk == "x" else 0.4, edgecolors=None if mk == "x" else "white")
        x = np.array([r["memorization"] for r in pts])
        y = np.array([r["dilation"] for r in pts])
        f = fit_line(x, y)
        label = LOSS_LABEL.get(loss, loss)
        if not math.isnan(f["slope"]):  # drawn over the data's own range only
            xs = np.linspace(x.min(), x.max(), 20)
            ax.plot(xs, f["intercept"] + f["slope"] * xs, color=c, lw=1.4)
            label += f" (pooled OLS slope {f['slope']:.3g}, descriptive)"
        ax.plot([], [], color=c, lw=1.4, label=label)
    for geo, mk in markers.items():
        if any((r.get("geometry") or "other") == geo for r in pts_all):
            ax.scatter([], [], c="#777777", marker=mk, label=geo)
    ax.set_xlabel("memorization (normalized)")
    ax.set_ylabel("dilation (normalized)")
    ax.set_title(f"{ds}: one point per run")
    losses = ax.legend(loc="best", title="loss (colour), geometry (marker)")
    ax.add_artist(losses)  # the size encoding gets its own legend, outside the axes
    etas = sorted({round(float(np.mean([r["realized_noise"] for r in pts_all if r["noise_rate"] == p
                                       and r.get("realized_noise") is not None] or [0.0])), 3)
                   for p in {r["noise_rate"] for r in pts_all}})
    handles = [ax.scatter([], [], s=14 + 200 * q, c="#777777", marker="o", edgecolors="white") for q in etas]
    ax.legend(handles, [f"{q:g}" for q in etas], title="realized noise η (size)", loc="center left",
              bbox_to_anchor=(1.02, 0.5), labelspacing=1.1)
    save(fig, path)
    return True


def _vs_noise(rows, ds, metrics, path, *, logy=()) -> bool:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    colors, palette, save = _style()
    eta = _cell_eta(rows, ds)
    sub = [r for r in rows if r["dataset"] == ds and r["variant"] == "main" and r["status"] == "completed"]
    aggs = {m: aggregate(sub, m) for m in metrics}
    metrics = [m for m in metrics if aggs[m]]
    if not metrics:
        return False
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for i, loss in enumerate(sorted({k[2] for k in aggs[m]})):
            pts = sorted((k[3], v) for k, v in aggs[m].items() if k[2] == loss and k[3] in eta)
            if not pts:
                continue
            ax.errorbar([eta[p] for p, _ in pts], [v["mean"] for _, v in pts], yerr=[v["std"] for _, v in pts],
                        color=colors.get(loss, palette[i % len(palette)]), marker="os^D"[i % 4], ms=4, capsize=3,
                        lw=1.4, label=LOSS_LABEL.get(loss, loss))
        ax.set_xlabel("realized noise η")
        ax.set_title(METRICS[m][0])
        if m in logy:
            ax.set_yscale("log")
    axes[0][0].legend(loc="best")
    fig.suptitle(f"{ds} (mean ± std over seeds, every completed run)", y=1.02)
    fig.tight_layout()
    save(fig, path)
    return True


def _feature_panels(store, rows, ds: str, figdir: Path, *, prefer_rate: float = 0.2) -> list:
    """One feature scatter per loss for one noise rate and seed (runs that saved ``features.npz``)."""
    from nclab.report.features import feature_scatter  # noqa: PLC0415
    from nclab.store.rundir import RunDir  # noqa: PLC0415

    main = [r for r in rows if r["dataset"] == ds and r["variant"] == "main" and r["status"] == "completed"
            and RunDir(store.run_dir(r["hash"])).has_features()]
    if not main:
        return []
    rate = min(sorted({r["noise_rate"] for r in main}), key=lambda x: abs(x - prefer_rate))
    seed = min(r["seed"] for r in main if r["noise_rate"] == rate)
    out = []
    for r in sorted((r for r in main if r["noise_rate"] == rate and r["seed"] == seed), key=lambda r: r["loss"]):
        rd = RunDir(store.run_dir(r["hash"]))
        f = rd.features()
        names = rd.class_names()  # when the run recorded them
        path = figdir / f"{_file_stem(ds)}_features_{_file_stem(r['loss'])}.png"
        feature_scatter(path, f["features"], f["labels"], f["clean_labels"], weight=f.get("W"), bias=f.get("b"),
                        class_names=names, title=f"{ds}, {r['loss']}, η {r['realized_noise'] or 0:.3f} (p {rate:g}), "
                                                 f"seed {seed}: test acc {r.get('test_acc') or float('nan'):.3f}")
        out.append((path, r["loss"], rate, seed))
    return out


# --------------------------------------------------------------------------- summary
def study_summary(rows: Sequence[dict[str, Any]], *, out_dir: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """The JSON summary (``claims.json``) of a run table — claims, counts, cells, model-vs-runs —
    and the model-vs-runs Markdown section.

    A function of ``rows`` alone (the model-vs-runs bootstrap is seeded)."""
    from nclab.report.study_claims import decide_claims  # noqa: PLC0415
    from nclab.report.model_vs_runs import section  # noqa: PLC0415
    from nclab.report.study_data import cell_counts  # noqa: PLC0415

    claims = decide_claims(rows)
    if out_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            mvr_md, mvr = section(list(rows), Path(tmp), seed=SEED)
    else:
        mvr_md, mvr = section(list(rows), out_dir, seed=SEED)
    n = len(rows)
    summary = {
        "study": "memorization-dilation",
        "runs": {"total": n, "completed": sum(r["status"] == "completed" for r in rows),
                 "diverged": sum(r["status"] == "diverged" for r in rows),
                 "reached_terminal": sum(bool(r.get("reached_terminal")) for r in rows),
                 "with_geometry": sum(r.get("geometry") is not None for r in rows)},
        "family": {"claims": len(claims), "adjustment": "holm", "alpha": 0.05,
                   "per_cell_verdicts": "exploratory (no multiplicity control)"},
        "claims": [c.to_dict() for c in claims],
        "cells": cell_counts(rows),
        "model_vs_runs": mvr,
    }
    # a plain-JSON object: what json.loads of claims.json gives back
    return json.loads(json.dumps(summary, default=str)), mvr_md


# --------------------------------------------------------------------------- markdown
def _claims_md(claims: list[dict]) -> list[str]:
    head = ["claim", "verdict", "Holm", "estimate", "95% CI", "seeds", "pairs", "left out",
            "sensitivity: both runs terminal"]
    rows = []
    for c in claims:
        s = c.get("sensitivity") or {}
        n_key = next((k for k in s if k.startswith("n_") and k not in ("n_left_out", "n_seeds")), None)
        sens = (f"{s.get('verdict')} ({_fmt(s.get('estimate'))}, {s.get('n_left_out', 0)} {n_key[2:] if n_key else ''} "
                f"left out{'; verdict changes' if s.get('changes') else ''})") if s else "–"
        rows.append([c["id"], c["verdict"], c["verdict_holm"], _fmt(c["estimate"]), _ci(c["ci"]), _fmt(c["n_seeds"]),
                     _fmt(c["n_pairs"]), str(c["n_excluded"]), sens])
    out = [_md_table(head, rows), ""]
    extra = [[c["id"], s["what"], _fmt(s.get("n_seeds")), _fmt(s.get("estimate")), _ci(s.get("ci")), s.get("verdict", "–")]
             for c in claims if (s := c.get("secondary"))]
    if extra:
        out += ["Secondary estimates (each under the extra assumption it states; not part of the family):", "",
                _md_table(["claim", "variant", "seeds", "estimate", "95% CI", "verdict"], extra), ""]
    out += ["Statements:", ""] + ["* " + _md_text(f"{c['id']}: {c['statement']}. Estimate: {c['quantity']}"
                                                  + (f"; {c['weights']}" if c.get("weights") else "")
                                                  + (f". {c['reason']}" if c.get("reason") else "") + ".")
                                  for c in claims]
    return out


def _strata_md(claims: list[dict]) -> list[str]:
    rows = []
    for c in claims:
        for name, s in (c.get("strata") or {}).items():
            n = s.get("n_pairs", s.get("n_runs"))
            rows.append([c["id"], name, _fmt(s.get("n_seeds")), _fmt(n), _fmt(s.get("estimate")), _ci(s.get("ci")),
                         s.get("verdict", "–")])
    if not rows:
        return []
    return ["### Within geometry strata", "",
            "The same estimates within pairs where both runs end as an orthogonal frame, and where both end with "
            "a dead class (H1: within the runs of that geometry). Exploratory: no multiplicity control.", "",
            _md_table(["claim", "stratum", "seeds", "pairs / runs", "estimate", "95% CI", "verdict"], rows), ""]


def _cells_md(claims: list[dict]) -> list[str]:
    rows = [[c["id"], x["dataset"], f"{_fmt(x.get('realized_noise'))} ({_fmt(x.get('noise_rate'))})",
             _fmt(x.get("n_pairs")), _fmt(x.get("estimate")), _ci(x.get("ci")), x.get("verdict", "–")]
            for c in claims if c["id"].startswith(("H2-d", "H2-t", "Q")) for x in c.get("cells") or []]
    if not rows:
        return []
    return ["### Per cell (exploratory)", "", "Paired LS − CE differences per (dataset, noise rate); verdicts "
            "per cell are exploratory (no multiplicity control).", "",
            _md_table(["claim", "dataset", "η (p)", "pairs", "LS − CE", "95% CI", "verdict (exploratory)"], rows), ""]


def _counts_md(cells: list[dict]) -> list[str]:
    head = ["dataset", "variant", "loss", "η (p)", "runs", "diverged", "reached terminal", "median terminal epoch",
            "orthogonal frame", "dead class", "other"]
    rows = [[c["dataset"], c["variant"], c["loss"], f"{_fmt(c['realized_noise'])} ({_fmt(c['noise_rate'])})",
             str(c["runs"]), str(c["diverged"]), str(c["reached_terminal"]), _fmt(c["median_terminal_epoch"]),
             str(c["orthogonal frame"]), str(c["dead class"]), str(c["other"])] for c in cells]
    return ["## Every run: terminal phase and geometry per cell", "",
            "Every run of every cell, the noisy ones included. *Reached terminal*: the noisy-label train accuracy "
            "stayed ≥ 0.999 from some epoch to the end (its median first epoch beside); an outcome, never a filter. "
            "Geometry of the final clean centroids, the class means of the correctly labelled samples (orthogonal frame: every pair's |cos| ≤ 0.1 and "
            "norms within a ratio 0.8; dead class: a mean's norm ≤ 0.1 × the largest; other otherwise).", "",
            _md_table(head, rows), ""]


def _numbers_md(rows, ds) -> list[str]:
    metrics = [m for m in ("test_acc", "memorization", "dilation", "test_dilation", "dilation_official", "nc1",
                           "orth_error", "etf_error", "train_acc_noisy")
               if any(r.get(m) is not None for r in rows if r["dataset"] == ds)]
    out = []
    eta = _cell_eta(rows, ds)
    for variant, title in (("main", "All numbers (mean ± std over seeds, every completed run)"),
                           ("nobias", "Classifier without bias (mean ± std over seeds)"),
                           ("latent", "Latent-class variant (mean ± std over seeds)")):
        sub = [r for r in rows if r["dataset"] == ds and r["variant"] == variant and r["status"] == "completed"]
        if not sub:
            continue
        aggs = {m: aggregate(sub, m) for m in metrics}
        keys = sorted({k for a in aggs.values() for k in a}, key=lambda k: (k[2], k[3]))
        body = []
        for k in keys:
            n = max((aggs[m][k]["n"] for m in metrics if k in aggs[m]), default=0)
            body.append([k[2], f"{_fmt(eta.get(k[3]))} ({k[3]:g})", str(n)]
                        + [f"{aggs[m][k]['mean']:.4g} ± {aggs[m][k]['std']:.2g}" if k in aggs[m] else "–" for m in metrics])
        out += [f"### {title}", "", _md_table(["loss", "η (p)", "seeds"] + [METRICS[m][0] for m in metrics], body), ""]
    return out


def _markdown(rows, summary, mvr_md, *, source: str, figures: dict[str, list[tuple[str, str]]]) -> str:
    claims = summary["claims"]
    runs = summary["runs"]
    md = ["# Memorization-dilation study report", "",
          f"Built from {source}: {runs['total']} runs ({runs['completed']} completed, {runs['diverged']} diverged). "
          "Every run trained its whole schedule; CE and LS of a pair are measured at the same epoch and learning rate. "
          f"{runs['reached_terminal']} runs reached the terminal phase (recorded, never used to select runs). "
          "Every completed run enters the verdicts; a diverged run leaves its pair out, counted under *left out*. "
          "Memorization and dilation are normalized by the mean distance between the clean training centroids; "
          "test dilation uses the same run's training scale. Noise is given as the realized rate η with the nominal "
          "rate p beside it. How verdicts are decided: docs/method.md §5.", "",
          "## Claims", "",
          "One number per seed (the unit), the mean over seeds with a Student-t 95% interval (fractions: Wilson over "
          "seeds). held / did not hold when the interval excludes the threshold on the claimed / other side, "
          "inconclusive when it contains it, insufficient data below 5 seeds or when the interval is degenerate. "
          f"*Holm*: the verdict after Holm's adjustment over the {len(claims)} headline claims (family-wise 0.05). "
          "*Sensitivity*: the same claim on the pairs (runs) where both runs reached the terminal phase.", ""]
    md += _claims_md(claims) + [""]
    md += _strata_md(claims) + _cells_md(claims)
    md += _counts_md(summary["cells"])
    if mvr_md:
        md += [mvr_md.strip(), ""]
    for ds, figs in figures.items():
        md += [f"## {_md_text(ds)}", ""]
        for rel, caption in figs:
            md += [f"![{caption}]({rel})", f"*{caption}.*", ""]
        md += _numbers_md(rows, ds)
    return "\n".join(md) + "\n"


# --------------------------------------------------------------------------- entry point
def _load(source: Path, sweep: str | None):
    """``(rows, store or None, is_study)`` from a store directory or a runs.csv."""
    from nclab.report.study_data import is_study_store, read_runs_csv, runs_table  # noqa: PLC0415
    from nclab.store.index import RunStore  # noqa: PLC0415

    if source.is_file() or source.suffix == ".csv":
        if not source.exists():
            raise FileNotFoundError(f"no such runs table: {source}")
        return read_runs_csv(source), None, True
    store = RunStore(source, create=False)
    study = is_study_store(store) if sweep is None else sweep.startswith("md-")
    return runs_table(store, sweep=sweep), store, study


def build_report(source: str | Path, *, out_dir: str | Path | None = None, sweep: str | None = None,
                 write: bool = True) -> Report:
    """Build the study report from a store or a ``runs.csv`` (no training); see the module doc.

    ``write=False`` computes the summary only (nothing is written; figures are skipped).
    A store that is not a study is refused here: :func:`nclab.report.build_report` gives it
    the sweep report (:mod:`nclab.report.sweep_report`).
    """
    from nclab.report.study_data import read_runs_csv, runs_csv_text  # noqa: PLC0415

    source = Path(source)
    rows, store, study = _load(source, sweep)
    if not rows:
        raise ValueError(f"{source}: no completed runs to report on")
    if not study:
        raise ValueError(f"{source}: not a study store (no sweep named md-*); `nclab report` gives it the sweep report")
    out = Path(out_dir) if out_dir is not None else (source.parent if store is None else source / "report")
    text = runs_csv_text(rows)
    if write:
        (out / "figures").mkdir(parents=True, exist_ok=True)
        if store is not None:
            atomic_write_text(out / "runs.csv", text)
    # the claims always come from the table's text: a store and its runs.csv give the same summary
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "runs.csv"
        p.write_text(text, encoding="utf-8")
        rows = read_runs_csv(p)
    summary, mvr_md = study_summary(rows, out_dir=out if write else None)
    verdicts = [f"{c['id']}: {c['verdict']} (Holm: {c['verdict_holm']}) — estimate {_fmt(c['estimate'])} "
                f"{_ci(c['ci'])}, {c['n_seeds']} seeds, {c['n_excluded']} left out" for c in summary["claims"]]
    if not write:
        return Report(out_dir=None, markdown=None, html=None, verdicts=verdicts, summary=summary)
    figdir = out / "figures"
    figures: dict[str, list[tuple[str, str]]] = {}
    paths: list[Path] = []
    for ds in sorted({r["dataset"] for r in rows}):
        figs = figures.setdefault(ds, [])
        for fname, caption, make in (
            (f"{_file_stem(ds)}_md_scatter.png", "Memorization vs dilation, every completed noisy run (marker: geometry; lines: "
             "descriptive pooled least squares over the data's range)", lambda p: _md_scatter(rows, ds, p)),
            (f"{_file_stem(ds)}_vs_noise.png", "Test accuracy, memorization and dilation against realized noise η",
             lambda p: _vs_noise(rows, ds, ["test_acc", "memorization", "dilation"], p)),
            (f"{_file_stem(ds)}_nc_vs_noise.png", "NC1 and orthogonal-frame error against realized noise η",
             lambda p: _vs_noise(rows, ds, ["nc1", "orth_error"], p, logy=("nc1",))),
        ):
            if make(figdir / fname):
                figs.append((f"figures/{fname}", caption))
                paths.append(figdir / fname)
        if store is not None:
            panels = _feature_panels(store, rows, ds, figdir)
            for p, loss, rate, seed in panels:
                figs.append((f"figures/{p.name}", f"Final training features, {loss}, p {rate:g}, seed {seed}: crosses "
                             "are mislabeled samples in their true class's colour, stars the clean centroids"))
                paths.append(p)
    if summary.get("model_vs_runs") and isinstance(summary["model_vs_runs"], dict):
        paths += [out / f for f in summary["model_vs_runs"].get("figures") or []]
    md_text = _markdown(rows, summary, mvr_md, source=_md_text(source.name if store is None else source), figures=figures)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, md_text)
    from nclab.report.html import write_markdown_html  # noqa: PLC0415

    write_markdown_html(html_path, md_text, title="Memorization-dilation report", base_dir=out)
    atomic_write_text(out / "claims.json", json.dumps(summary, indent=1) + "\n")
    return Report(out_dir=out, markdown=md_path, html=html_path, figures=paths, verdicts=verdicts, summary=summary)
