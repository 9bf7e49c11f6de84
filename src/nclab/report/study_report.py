"""The study report: figures (matplotlib Agg, Okabe-Ito colours) and a Markdown page plus a
self-contained HTML page (figures base64-embedded), built from a results store only.

``build_report(store_dir, out_dir=None) -> Report`` writes ``report.md``, ``report.html``,
``summary.json`` and ``figures/*.png`` under ``out_dir`` (default ``STORE/report``).

Content: the claims with estimate, 95 % interval and verdict (:mod:`nclab.report.verdicts`,
decided only for a study store and only from eligible runs: terminal phase, not diverged),
the terminal-phase counts per cell and the runs left out, the class-means geometry per cell
(:mod:`nclab.metrics.frames`), the model-vs-runs section when
:mod:`nclab.report.model_vs_runs` is installed, then per dataset the figures and tables of the
eligible runs. The rules are written out in ``docs/method.md``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nclab.report.html import md_text as _md_text
from nclab.report.study_data import METRICS, aggregate, fit_line, load_records, md_keys
from nclab.store.files import atomic_write_text
from nclab.store.index import RunStore

__all__ = ["Report", "build_report"]

LOSS_LABEL = {"ce": "cross-entropy (CE)", "ls": "label smoothing (LS)"}


@dataclass
class Report:
    out_dir: Path
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)  # claims, counts, cells: what `nclab report --json` prints


def _style():
    from nclab.report.style import LOSS_COLORS, OKABE_ITO, apply_style, save  # noqa: PLC0415

    apply_style()
    return LOSS_COLORS, OKABE_ITO, save


def _color(loss: str, colors: dict, palette: list) -> str:
    return colors.get(loss, palette[hash(loss) % len(palette)])


def _md_scatter(records, ds, path) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    colors, palette, save = _style()
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    keys = md_keys(records)
    shown_rates: set[float] = set()
    for i, loss in enumerate(sorted({r["loss"] for r in records if r["dataset"] == ds})):
        pts = [r for r in records if r["dataset"] == ds and r["variant"] == "main" and r["loss"] == loss
               and r["rate"] > 0 and r["memorization"] is not None and r["dilation"] is not None]
        if not pts:
            continue
        x = np.array([r["memorization"] for r in pts])
        y = np.array([r["dilation"] for r in pts])
        c = _color(loss, colors, palette)
        marker = "os^D"[i % 4]
        sc_rates = np.array([r["rate"] for r in pts])
        shown_rates.update(float(q) for q in sc_rates)
        ax.scatter(x, y, c=c, marker=marker, s=18 + 90 * sc_rates, alpha=0.75, edgecolors="white", linewidths=0.5)
        f = fit_line(x, y)
        label = LOSS_LABEL.get(loss, loss)
        if not math.isnan(f["slope"]):
            xs = np.linspace(x.min(), x.max(), 20)
            ax.plot(xs, f["intercept"] + f["slope"] * xs, color=c, lw=1.6)
            label += f": slope {f['slope']:.3g}, R² {f['r2']:.2f}"
        ax.scatter([], [], c=c, marker=marker, label=label)
    ax.set_xlabel(f"memorization ({keys.get('memorization', '')})")
    ax.set_ylabel(f"dilation ({keys.get('dilation', '')})")
    ax.set_title(f"{ds}: memorization vs dilation (one point per run; size = noise rate)")
    losses = ax.legend(loc="best", title="loss (colour, marker)")
    if shown_rates:  # the size encoding gets its own legend, outside the axes
        ax.add_artist(losses)
        rates = sorted(shown_rates)
        handles = [ax.scatter([], [], s=18 + 90 * q, c="#777777", marker="o", edgecolors="white") for q in rates]
        ax.legend(handles, [f"{q:g}" for q in rates], title="noise rate (size)", loc="center left",
                  bbox_to_anchor=(1.02, 0.5), labelspacing=1.1)
    save(fig, path)


def _vs_noise(records, ds, metrics, path, *, logy=()) -> None:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    colors, palette, save = _style()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        agg = aggregate([r for r in records if r["dataset"] == ds and r["variant"] == "main"], m)
        for i, loss in enumerate(sorted({k[2] for k in agg})):
            pts = sorted((k[3], v) for k, v in agg.items() if k[2] == loss)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1]["mean"] for p in pts]
            es = [p[1]["std"] for p in pts]
            ax.errorbar(xs, ys, yerr=es, color=_color(loss, colors, palette), marker="os^D"[i % 4], ms=4,
                        capsize=3, lw=1.4, label=LOSS_LABEL.get(loss, loss))
        ax.set_xlabel("noise rate p")
        ax.set_title(METRICS[m][0])
        if m in logy:
            ax.set_yscale("log")
    if axes[0][0].get_legend_handles_labels()[0]:  # a metric no run has: no legend to draw
        axes[0][0].legend(loc="best")
    fig.suptitle(f"{ds} (mean ± std over seeds)", y=1.02)
    fig.tight_layout()
    save(fig, path)


def _table(records, ds, variant, metrics) -> tuple[list[str], list[list[str]]]:
    aggs = {m: aggregate([r for r in records if r["dataset"] == ds and r["variant"] == variant], m) for m in metrics}
    keys = sorted({k for a in aggs.values() for k in a}, key=lambda k: (k[2], k[3]))
    head = ["loss", "noise rate", "seeds"] + [METRICS[m][0] for m in metrics]
    rows = []
    for k in keys:
        n = max((aggs[m][k]["n"] for m in metrics if k in aggs[m]), default=0)
        cells = [f"{aggs[m][k]['mean']:.4g} ± {aggs[m][k]['std']:.2g}" if k in aggs[m] else "n/a" for m in metrics]
        rows.append([k[2], f"{k[3]:g}", str(n)] + cells)
    return head, rows


def _file_stem(value) -> str:
    """A store string as a file-name stem inside the figures folder (never a path)."""
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", str(value)).lstrip(".")
    return stem or "_"


def _md_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_md_text(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(head, rows) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def _feature_panels(store: RunStore, records, ds: str, figdir: Path, *, prefer_rate: float = 0.2) -> list:
    """One feature scatter per loss for one noise rate and seed (runs that saved ``features.npz``)."""
    from nclab.report.features import feature_scatter
    from nclab.store.rundir import RunDir

    main = [r for r in records if r["dataset"] == ds and r["variant"] == "main"
            and RunDir(store.run_dir(r["hash"])).has_features()]
    if not main:
        return []
    rates = sorted({r["rate"] for r in main})
    rate = min(rates, key=lambda x: abs(x - prefer_rate))
    seed = min(r["seed"] for r in main if r["rate"] == rate)
    out = []
    for r in sorted((r for r in main if r["rate"] == rate and r["seed"] == seed), key=lambda r: r["loss"]):
        rd = RunDir(store.run_dir(r["hash"]))
        f = rd.features()
        names = rd.class_names()  # when the run recorded them
        path = figdir / f"{_file_stem(ds)}_features_{_file_stem(r['loss'])}.png"
        feature_scatter(path, f["features"], f["labels"], f["clean_labels"], weight=f.get("W"), bias=f.get("b"),
                        class_names=names,
                        title=f"{ds}, {r['loss']}, noise {rate:g}: test acc {r.get('test_acc') or float('nan'):.3f}")
        out.append((path, r["loss"], rate, seed))
    return out


def _fmt(v, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}g}" if isinstance(v, float) else str(v)


def _claims_table(claims) -> tuple[list[str], list[list[str]]]:
    head = ["claim", "verdict", "estimate", "95% CI", "pairs", "seeds", "statement", "note"]
    rows = []
    for c in claims:
        ci = "n/a" if c.ci is None else f"[{_fmt(c.ci[0])}, {_fmt(c.ci[1])}]"
        rows.append([c.id, c.verdict, _fmt(c.estimate), ci, _fmt(c.n_pairs), _fmt(c.n_seeds), c.statement, c.reason])
    return head, rows


def _model_vs_runs(rows, out: Path) -> tuple[str | None, dict | None]:
    """The theory helper's section (``nclab.report.model_vs_runs.section``) when it exists."""
    try:
        from nclab.report.model_vs_runs import section  # noqa: PLC0415
    except ImportError:
        return None, None
    return section(rows, out)


def build_report(store_dir: str | Path, *, out_dir: str | Path | None = None, sweep: str | None = None) -> Report:
    """Build the report from the completed runs of the store at ``store_dir`` (no training).

    Claims are decided only for a study store (made by ``nclab reproduce``) and only from
    its eligible runs (terminal phase, not diverged); other stores are tabulated without any
    claim. ``Report.summary`` is what ``nclab report --json`` prints.
    """
    from nclab.report.study_data import (  # noqa: PLC0415
        add_geometry, cell_counts, decide_claims, eligible, excluded_runs, geometry_counts, is_study_store,
    )

    store = RunStore(store_dir, create=False)
    study_sweeps = [s for s in store.sweeps() if s.startswith("md-")] if sweep is None else []
    if study_sweeps:  # a study: its own runs only (not the search trials stored beside them)
        seen: set[str] = set()
        records = [r for s in study_sweeps for r in load_records(store, sweep=s)
                   if not (r["hash"] in seen or seen.add(r["hash"]))]
    else:
        records = load_records(store, sweep=sweep)
    if not records:
        raise ValueError(f"{store_dir}: the store has no completed runs to report on")
    out = Path(out_dir) if out_dir is not None else Path(store_dir) / "report"
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    counts = store.counts()
    study = is_study_store(store) if sweep is None else sweep.startswith("md-")
    add_geometry(store, records)
    good = eligible(records)
    claims = decide_claims(records) if study else []
    datasets = sorted({r["dataset"] for r in records})
    keys = md_keys(good or records)
    cells = cell_counts(records)
    excluded = excluded_runs(records)
    geo = geometry_counts(records)

    md: list[str] = ["# Memorization-dilation study report", ""]
    hb: list[str] = ["<h1>Memorization-dilation study report</h1>"]
    n_div = sum(r["status"] == "diverged" for r in records)
    n_nt = sum(r["status"] == "not terminal" for r in records)
    intro = (f"Built from the results store {_md_text(Path(store_dir))}: {len(records)} completed runs "
             f"({counts['failed']} failed, {counts['pending'] + counts['running']} not finished; neither is included). "
             f"{len(good)} runs reached the terminal phase and enter the verdicts; {n_nt} did not reach it and "
             f"{n_div} diverged (listed below, not used). "
             f"Memorization and dilation are `{keys.get('memorization')}` and `{keys.get('dilation')}` "
             "(final training features, clean centroids); test dilation is divided by the training clean-centroid "
             "distance of the same run. Noise kinds: "
             + ", ".join(sorted({_md_text(r['noise_kind']) for r in records})) + ". How verdicts are decided: docs/method.md.")
    md += [intro, ""]
    hb += [f"<p>{html.escape(intro)}</p>"]
    if not study:
        note = ("This store is not a study (no sweep named md-*, as `nclab reproduce` makes): its runs are tabulated "
                "below and no claim is decided from them.")
        md += [f"**{note}**", ""]
        hb.append(f"<p><b>{html.escape(note)}</b></p>")
    verdicts = []
    if claims:
        md += ["## Claims (decided from the eligible runs)", "",
               "Paired LS − CE differences per (dataset, noise rate, seed), bootstrap 95% intervals over seeds; "
               "held / did not hold when the interval excludes 0 on the claimed / other side, inconclusive when it "
               "contains 0, insufficient data below 5 complete pairs.", ""]
        head, rows = _claims_table(claims)
        md += [_md_table(head, rows), ""]
        hb += ["<h2>Claims (decided from the eligible runs)</h2>", _html_table(head, rows)]
        for c in claims:
            ci = "" if c.ci is None else f" [{_fmt(c.ci[0])}, {_fmt(c.ci[1])}]"
            verdicts.append(f"{c.id}: {c.verdict} — estimate {_fmt(c.estimate)}{ci} ({c.statement})")
        per_cell = [[c.id, f"{x.get('dataset')}", _fmt(x.get("rate")), _fmt(x.get("n_pairs", x.get("n_seeds", x.get("runs")))),
                     _fmt(x.get("estimate")), "n/a" if not x.get("ci") else f"[{_fmt(x['ci'][0])}, {_fmt(x['ci'][1])}]",
                     str(x.get("verdict", ""))]
                    for c in claims if c.id.startswith(("H1", "H2-d", "H2-t", "Q")) for x in c.cells]
        if per_cell:
            head = ["claim", "dataset", "noise rate", "pairs / seeds", "estimate", "95% CI", "verdict in this cell"]
            md += ["### Per cell", "", _md_table(head, per_cell), ""]
            hb += ["<h3>Per cell</h3>", _html_table(head, per_cell)]

    head = ["dataset", "variant", "loss", "noise rate", "runs", "terminal", "not terminal", "diverged", "median terminal epoch"]
    rows = [[c["dataset"], c["variant"], c["loss"], f"{c['rate']:g}", str(c["runs"]), str(c["terminal"]),
             str(c["not_terminal"]), str(c["diverged"]), _fmt(c["median_terminal_epoch"])] for c in cells]
    md += ["## Terminal phase per cell", "", _md_table(head, rows), ""]
    hb += ["<h2>Terminal phase per cell</h2>", _html_table(head, rows)]
    if excluded:
        head = ["run", "dataset", "loss", "noise rate", "seed", "status", "epochs", "final train acc (noisy labels)"]
        rows = [[e["hash"][:12], e["dataset"], e["loss"], f"{e['rate']:g}", str(e["seed"]), e["status"],
                 _fmt(e["epochs_run"]), _fmt(e["train_acc_noisy"], 4)] for e in excluded]
        md += ["### Runs left out of the verdicts", "", _md_table(head, rows), ""]
        hb += ["<h3>Runs left out of the verdicts</h3>", _html_table(head, rows)]
    if geo:
        from nclab.metrics.frames import KINDS, FrameThresholds  # noqa: PLC0415

        t = FrameThresholds()
        cap = (f"Final class means of each eligible run (training features grouped by training label): orthogonal frame "
               f"when every pair's |cos| <= {t.cos_tol:g} and norms within a ratio {t.norm_ratio:g}; dead class when a "
               f"mean's norm is <= {t.dead_ratio:g} x the largest; other otherwise.")
        head = ["dataset", "loss", "noise rate", "classifier bias", "runs"] + list(KINDS)
        rows = [[g["dataset"], g["loss"], f"{g['rate']:g}", "yes" if g["bias"] else "no", str(g["runs"])]
                + [str(g[k]) for k in KINDS] for g in geo]
        md += ["## Geometry of the class means", "", cap, "", _md_table(head, rows), ""]
        hb += ["<h2>Geometry of the class means</h2>", f"<p>{html.escape(cap)}</p>", _html_table(head, rows)]

    mvr_md, mvr_json = (_model_vs_runs(good, out) if study else (None, None))
    if mvr_md:
        md += [mvr_md, ""]
        hb.append(f"<pre>{html.escape(mvr_md)}</pre>")

    figures: list[Path] = []
    plotted = good if good else records
    tab_metrics = ["test_acc", "memorization", "dilation", "test_dilation", "test_dilation_raw", "dilation_official",
                   "nc1", "orth_error", "etf_error", "realized_rate", "train_acc_noisy"]
    for ds in datasets:
        md += [f"## {_md_text(ds)}", ""]
        hb.append(f"<h2>{html.escape(ds)}</h2>")
        figs = [
            (f"{_file_stem(ds)}_md_scatter.png", "Memorization vs dilation, CE vs LS, least-squares lines (eligible runs)",
             lambda p: _md_scatter(plotted, ds, p)),
            (f"{_file_stem(ds)}_vs_noise.png", "Test accuracy, memorization and dilation against noise rate (eligible runs)",
             lambda p: _vs_noise(plotted, ds, ["test_acc", "memorization", "dilation"], p)),
            (f"{_file_stem(ds)}_nc_vs_noise.png", "NC1 and orthogonal-frame error against noise rate (eligible runs)",
             lambda p: _vs_noise(plotted, ds, ["nc1", "orth_error"], p, logy=("nc1",))),
        ]
        for fname, caption, make in figs:
            p = figdir / fname
            make(p)
            figures.append(p)
            md += [f"![{caption}](figures/{fname})", f"*{caption}.*", ""]
            b64 = base64.b64encode(p.read_bytes()).decode("ascii")
            hb.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'/>"
                      f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        panels = _feature_panels(store, plotted, ds, figdir)
        if panels:
            rate = panels[0][2]
            cap = f"Final training features at noise {rate:g} (seed {panels[0][3]}): crosses are mislabeled samples in their true class's colour, stars the clean centroids, circles the dilation"
            md += [" ".join(f"![{loss}](figures/{p.name})" for p, loss, _, _ in panels), f"*{cap}.*", ""]
            hb.append("<figure>" + "".join(
                f"<img style='width:49%' alt='{html.escape(loss)}' src='data:image/png;base64,"
                f"{base64.b64encode(p.read_bytes()).decode('ascii')}'/>" for p, loss, _, _ in panels)
                + f"<figcaption>{html.escape(cap)}</figcaption></figure>")
            figures += [p for p, _, _, _ in panels]
        ds_metrics = [m for m in tab_metrics if any(r.get(m) is not None for r in plotted if r["dataset"] == ds)]
        for variant in ("main", "nobias", "latent"):
            head, rows = _table(plotted, ds, variant, ds_metrics)
            if not rows:
                continue
            title = {"main": "All numbers (mean ± std over seeds, eligible runs)",
                     "nobias": "Classifier without bias (mean ± std over seeds, eligible runs)",
                     "latent": "Latent-class variant (mean ± std over seeds)"}[variant]
            md += [f"### {title}", "", _md_table(head, rows), ""]
            hb += [f"<h3>{html.escape(title)}</h3>", _html_table(head, rows)]

    summary = {
        "store": str(store_dir), "study": study,
        "note": None if study else "not a study store: runs tabulated, no claim decided",
        "claims": [c.to_dict() for c in claims],
        "runs": {"completed": len(records), "eligible": len(good), "not_terminal": n_nt, "diverged": n_div,
                 "failed": counts["failed"], "unfinished": counts["pending"] + counts["running"]},
        "cells": cells, "excluded_runs": excluded, "geometry": geo, "model_vs_runs": mvr_json,
    }
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, "\n".join(md) + "\n")
    # the HTML is the Markdown rendered (markdown-it-py), figures inlined, tables sortable
    from nclab.report.html import write_markdown_html  # noqa: PLC0415

    write_markdown_html(html_path, "\n".join(md) + "\n", title="Memorization-dilation report", base_dir=out)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return Report(out_dir=out, markdown=md_path, html=html_path, figures=figures, verdicts=verdicts, summary=summary)
