"""The study report: figures (matplotlib Agg, Okabe-Ito colours) and a Markdown page plus a
self-contained HTML page (figures base64-embedded), built from a results store only.

``build_report(store_dir, out_dir=None) -> Report`` writes ``report.md``, ``report.html``
and ``figures/*.png`` under ``out_dir`` (default ``STORE/report``).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nclab.report.study_data import METRICS, aggregate, check_claims, fit_line, load_records, md_keys
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
    ax.legend(loc="best")
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
        ax.set_xlabel("noise rate (symmetric flip)")
        ax.set_title(METRICS[m][0])
        if m in logy:
            ax.set_yscale("log")
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


def _md_table(head, rows) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(head, rows) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def _feature_panels(store: RunStore, records, ds: str, figdir: Path, *, prefer_rate: float = 0.2) -> list:
    """One feature scatter per loss for one noise rate and seed (runs that saved ``features.npz``)."""
    from nclab.report.features import feature_scatter
    from nclab.store.files import load_feature_file

    main = [r for r in records if r["dataset"] == ds and r["variant"] == "main"
            and (store.run_dir(r["hash"]) / "features.npz").exists()]
    if not main:
        return []
    rates = sorted({r["rate"] for r in main})
    rate = min(rates, key=lambda x: abs(x - prefer_rate))
    seed = min(r["seed"] for r in main if r["rate"] == rate)
    out = []
    for r in sorted((r for r in main if r["rate"] == rate and r["seed"] == seed), key=lambda r: r["loss"]):
        run_dir = store.run_dir(r["hash"])
        f = load_feature_file(run_dir / "features.npz")
        try:  # class names, when the run recorded them
            names = json.loads((run_dir / "env.json").read_text())["data"]["class_names"] or None
        except (OSError, ValueError, KeyError, TypeError):
            names = None
        path = figdir / f"{ds}_features_{r['loss']}.png"
        feature_scatter(path, f["features"], f["labels"], f["clean_labels"], weight=f.get("W"), bias=f.get("b"),
                        class_names=names,
                        title=f"{ds}, {r['loss']}, noise {rate:g}: test acc {r.get('test_acc') or float('nan'):.3f}")
        out.append((path, r["loss"], rate, seed))
    return out


def build_report(store_dir: str | Path, *, out_dir: str | Path | None = None, sweep: str | None = None) -> Report:
    """Build the report from the completed runs of the store at ``store_dir`` (no training)."""
    store = RunStore(store_dir, create=False)
    records = load_records(store, sweep=sweep)
    if not records:
        raise ValueError(f"{store_dir}: the store has no completed runs to report on")
    out = Path(out_dir) if out_dir is not None else Path(store_dir) / "report"
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    counts = store.counts()
    claims = check_claims(records)
    datasets = sorted({r["dataset"] for r in records})
    keys = md_keys(records)

    md: list[str] = ["# Memorization-dilation study report", ""]
    hb: list[str] = ["<h1>Memorization-dilation study report</h1>"]
    intro = (f"Built from the results store `{Path(store_dir)}`: {len(records)} completed runs "
             f"({counts['failed']} failed, {counts['pending'] + counts['running']} not finished; neither is included). "
             f"Memorization and dilation are `{keys.get('memorization')}` and `{keys.get('dilation')}` "
             "(final training features, noisy-label class means, clean centroids). Noise: symmetric flip to the other class; "
             "the realized rate of every run is in the tables.")
    md += [intro, "", "## Claims (decided from these runs)", ""]
    hb += [f"<p>{html.escape(intro)}</p>", "<h2>Claims (decided from these runs)</h2><ul>"]
    verdicts = []
    for c in claims:
        word = {True: "HELD", False: "DID NOT HOLD", None: "NOT DECIDED (too little data)"}[c.held]
        line = f"{c.key} ({c.statement}): {word} — {c.summary}"
        verdicts.append(line)
        md.append(f"- **{c.key} — {word}.** {c.statement}. {c.summary}.")
        md += [f"  - {d}" for d in c.details]
        hb.append(f"<li><b>{c.key} — {html.escape(word)}.</b> {html.escape(c.statement)}. {html.escape(c.summary)}.<ul>"
                  + "".join(f"<li>{html.escape(d)}</li>" for d in c.details) + "</ul></li>")
    hb.append("</ul>")
    md.append("")

    figures: list[Path] = []
    tab_metrics = ["test_acc", "memorization", "dilation", "test_dilation", "nc1", "orth_error", "etf_error", "realized_rate", "train_acc_clean"]
    for ds in datasets:
        md += [f"## {ds}", ""]
        hb.append(f"<h2>{html.escape(ds)}</h2>")
        figs = [
            (f"{ds}_md_scatter.png", "Memorization vs dilation, CE vs LS, fitted lines", lambda p: _md_scatter(records, ds, p)),
            (f"{ds}_vs_noise.png", "Test accuracy, memorization and dilation against noise rate",
             lambda p: _vs_noise(records, ds, ["test_acc", "memorization", "dilation"], p)),
            (f"{ds}_nc_vs_noise.png", "NC1 and orthogonal-frame error against noise rate",
             lambda p: _vs_noise(records, ds, ["nc1", "orth_error"], p, logy=("nc1",))),
        ]
        for fname, caption, make in figs:
            p = figdir / fname
            make(p)
            figures.append(p)
            md += [f"![{caption}](figures/{fname})", f"*{caption}.*", ""]
            b64 = base64.b64encode(p.read_bytes()).decode("ascii")
            hb.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{b64}'/>"
                      f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        panels = _feature_panels(store, records, ds, figdir)
        if panels:
            rate = panels[0][2]
            cap = f"Final training features at noise {rate:g} (seed {panels[0][3]}): crosses are mislabeled samples in their true class's colour, stars the clean centroids, circles the dilation"
            md += [" ".join(f"![{loss}](figures/{p.name})" for p, loss, _, _ in panels), f"*{cap}.*", ""]
            hb.append("<figure>" + "".join(
                f"<img style='width:49%' alt='{html.escape(loss)}' src='data:image/png;base64,"
                f"{base64.b64encode(p.read_bytes()).decode('ascii')}'/>" for p, loss, _, _ in panels)
                + f"<figcaption>{html.escape(cap)}</figcaption></figure>")
            figures += [p for p, _, _, _ in panels]
        for variant in ("main", "latent"):
            head, rows = _table(records, ds, variant, tab_metrics)
            if not rows:
                continue
            title = "All numbers (mean ± std over seeds)" if variant == "main" else "Latent-class variant (mean ± std over seeds)"
            md += [f"### {title}", "", _md_table(head, rows), ""]
            hb += [f"<h3>{html.escape(title)}</h3>", _html_table(head, rows)]

    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, "\n".join(md) + "\n")
    css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
           "th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}figcaption{font-style:italic;font-size:13px}")
    atomic_write_text(html_path, f"<!doctype html><html><head><meta charset='utf-8'><title>Memorization-dilation report</title>"
                      f"<style>{css}</style></head><body>{''.join(hb)}</body></html>\n")
    return Report(out_dir=out, markdown=md_path, html=html_path, figures=figures, verdicts=verdicts)

