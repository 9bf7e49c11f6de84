"""A report for any sweep store (not the memorization-dilation study): runs grouped by the
swept keys.

``nclab report STORE`` on a store made by ``nclab sweep`` (or ``nclab search``) writes
``report.md`` and a self-contained ``report.html`` with

* a table per group of runs — one group per combination of the config keys that vary
  across the store's runs (seeds excluded: they are the repeats) — of every final metric
  with its mean over the group's runs and a 95 % Student-t interval (one run: the value
  alone);
* curves per group: the mean over the group's runs of each metric against the epoch;
* the memorization-dilation scatter (final training features), only when the runs
  recorded memorization and dilation.

Every run that completed enters (no stop rule or terminal phase is required: that is the
study's protocol, not a sweep's). A figure is drawn only when it has data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nclab.stats import mean_interval
from nclab.store.files import atomic_write_text, read_jsonl
from nclab.store.index import RunStore

__all__ = ["SWEEP_METRICS", "SweepReport", "build_sweep_report", "group_runs", "is_sweep_store", "swept_keys"]

SWEEP_METRICS: list[tuple[str, str]] = [
    ("test_acc", "test accuracy"),
    ("train_acc_noisy", "train accuracy (noisy labels)"),
    ("train_acc_clean", "train accuracy (clean labels)"),
    ("test_loss", "test loss"),
    ("train.nc1", "NC1 (train)"),
    ("train.nc2_etf_error_means", "NC2 ETF error (train)"),
    ("train.nc3_zhu", "NC3 (train)"),
    ("train.memorization", "memorization"),
    ("train.dilation", "dilation (train)"),
    ("train.memorization_normalized", "memorization / centroid distance"),
    ("train.dilation_normalized", "dilation / centroid distance"),
    ("test.dilation_normalized", "dilation / centroid distance (test)"),
    ("epoch", "epochs trained"),
]
"""Final metrics tabulated (those some run recorded), in this order."""

CURVE_METRICS: list[tuple[str, str, bool]] = [
    ("test_acc", "test accuracy", False),
    ("train_acc_noisy", "train accuracy (noisy labels)", False),
    ("train.nc1", "NC1 (train)", True),
    ("train.dilation", "dilation (train)", False),
]

_IGNORED = {"seed", "name"}  # repeats and labels, not factors


@dataclass
class SweepReport:
    """What :func:`build_sweep_report` wrote (the fields of the study report's ``Report``)."""

    out_dir: Path
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)  # a sweep decides no claims
    summary: dict = field(default_factory=dict)


def is_sweep_store(store_dir: str | Path, *, sweep: str | None = None) -> bool:
    """True unless the store (or the chosen sweep) is the memorization-dilation study
    (sweeps named ``md-*``, as ``nclab reproduce`` registers them)."""
    if sweep is not None:
        return not sweep.startswith("md-")
    store = RunStore(store_dir, create=False)
    try:
        return not any(s.startswith("md-") for s in store.sweeps())
    finally:
        store.close()


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v, sort_keys=True) if isinstance(v, list) else v
    return out


def swept_keys(configs: list[dict]) -> list[str]:
    """The dotted config keys whose value differs between runs (seed and name excluded), sorted."""
    flat = [_flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if k not in _IGNORED and len({repr(f.get(k)) for f in flat}) > 1]


def group_runs(rows: list[dict], keys: list[str]) -> dict[tuple, list[dict]]:
    """Rows grouped by their values of ``keys`` (in first-seen order)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        f = _flatten(r["config"])
        groups.setdefault(tuple(f.get(k) for k in keys), []).append(r)
    return groups


def _label(keys: list[str], values: tuple) -> str:
    """``loss.name=ce, noise.rate=0.2`` -> ``loss=ce, rate=0.2`` where the short name is unambiguous."""
    if not keys:
        return "all runs"
    short = [k.rsplit(".", 2)[-2] if k.endswith(".name") else k.rsplit(".", 1)[-1] for k in keys]  # loss.name -> loss
    names = [s if short.count(s) == 1 else k for s, k in zip(short, keys)]
    return ", ".join(f"{n}={v:g}" if isinstance(v, float) else f"{n}={v}" for n, v in zip(names, values))


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _fmt(v: float) -> str:
    return f"{v:.4g}" if v == 0 or 1e-3 <= abs(v) < 1e4 else f"{v:.3e}"


def _cell(values: list[float]) -> str:
    if not values:
        return "—"
    mi = mean_interval(values)
    if mi.ci is None:
        return _fmt(mi.mean)
    return f"{_fmt(mi.mean)} [{_fmt(mi.lo)}, {_fmt(mi.hi)}]"


def _history(store: RunStore, hash_: str) -> list[dict]:
    path = store.run_dir(hash_) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in read_jsonl(path) if isinstance(r, dict) and "epoch" in r]


def _curves(path: Path, series: dict[str, dict[str, dict[int, list[float]]]], colors: list[str]) -> bool:
    """One panel per metric with data, one line per group (mean over its runs). False if nothing to draw."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    from nclab.report.style import apply_style, plt, save  # noqa: PLC0415

    panels = [(k, lab, logy) for k, lab, logy in CURVE_METRICS if any(series[g].get(k) for g in series)]
    if not panels:
        return False
    apply_style()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.0), squeeze=False)
    for ax, (key, label, logy) in zip(axes[0], panels):
        for i, (group, by_key) in enumerate(series.items()):
            pts = by_key.get(key)
            if not pts:
                continue
            ep = sorted(pts)
            ys = [float(np.mean(pts[e])) for e in ep]
            if logy and all(y > 0 for y in ys):
                ax.set_yscale("log")
            ax.plot(ep, ys, marker="o", ms=2.5, lw=1.3, color=colors[i % len(colors)], label=group)
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(loc="best", fontsize=7)
    fig.tight_layout()
    save(fig, path)
    return True


def _md_scatter(path: Path, points: dict[str, list[tuple[float, float]]], colors: list[str]) -> bool:
    from nclab.report.style import apply_style, plt, save  # noqa: PLC0415

    if not any(points.values()):
        return False
    apply_style()
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    for i, (group, pts) in enumerate(points.items()):
        if pts:
            m, d = zip(*pts)
            ax.scatter(m, d, s=22, alpha=0.8, color=colors[i % len(colors)], label=group)
    ax.set_xlabel("memorization (final, train)")
    ax.set_ylabel("dilation (final, train)")
    ax.set_title("memorization vs dilation, one point per run")
    ax.legend(loc="best", fontsize=7)
    save(fig, path)
    return True


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    from nclab.report.html import md_text  # noqa: PLC0415

    esc = [[md_text(c) for c in r] for r in [headers, *rows]]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(headers)] + ["| " + " | ".join(r) + " |" for r in esc[1:]]


def build_sweep_report(store_dir: str | Path, *, out_dir: str | Path | None = None,
                       sweep: str | None = None) -> SweepReport:
    """Write ``report.md``, ``report.html`` and ``figures/`` for the completed runs of a sweep
    store (see the module docstring); ``Report.summary`` is what ``nclab report --json`` prints."""
    from nclab.report.html import markdown_page, md_text  # noqa: PLC0415
    from nclab.report.style import OKABE_ITO  # noqa: PLC0415

    store = RunStore(store_dir, create=False)
    try:
        rows = store.rows(status="completed", sweep=sweep)
        counts = store.counts()
        if not rows:
            raise ValueError(f"{store_dir}: the store has no completed runs to report on")
        out = Path(out_dir) if out_dir is not None else Path(store_dir) / "report"
        figdir = out / "figures"
        figdir.mkdir(parents=True, exist_ok=True)
        keys = swept_keys([r["config"] for r in rows])
        groups = group_runs(rows, keys)
        labels = {g: _label(keys, g) for g in groups}
        finals = {g: [r["final"] or {} for r in runs] for g, runs in groups.items()}
        present = [(k, lab) for k, lab in SWEEP_METRICS if any(_num(f.get(k)) is not None
                                                               for fs in finals.values() for f in fs)]
        columns, summary_groups = [], []
        for g, runs in groups.items():
            seeds = sorted({int(r["config"].get("seed", 0)) for r in runs})
            cells, stats = [], {}
            for k, _ in present:
                vals = [v for v in (_num(f.get(k)) for f in finals[g]) if v is not None]
                cells.append(_cell(vals))
                if vals:
                    mi = mean_interval(vals)
                    stats[k] = {"mean": mi.mean, "ci": mi.ci, "n": mi.n}
            columns.append([str(len(runs)), *cells])
            summary_groups.append({"group": dict(zip(keys, g)), "label": labels[g], "runs": len(runs),
                                   "seeds": seeds, "metrics": stats})

        figures: list[Path] = []
        series = {labels[g]: {} for g in groups}
        for g, runs in groups.items():
            by_key = series[labels[g]]
            for r in runs:
                for rec in _history(store, r["hash"]):
                    for k, _, _ in CURVE_METRICS:
                        v = _num(rec.get(k))
                        if v is not None:
                            by_key.setdefault(k, {}).setdefault(int(rec["epoch"]), []).append(v)
        curves = figdir / "curves.png"
        if _curves(curves, series, OKABE_ITO):
            figures.append(curves)
        points = {labels[g]: [(m, d) for f in finals[g]
                              if (m := _num(f.get("train.memorization"))) is not None
                              and (d := _num(f.get("train.dilation"))) is not None] for g in groups}
        scatter = figdir / "md_scatter.png"
        if _md_scatter(scatter, points, OKABE_ITO):
            figures.append(scatter)
    finally:
        store.close()

    name = sweep or ", ".join(s for s in _sweeps(store_dir)) or Path(store_dir).name
    md = [f"# Sweep report: {md_text(name)}", ""]
    factor_text = (", ".join(md_text(k) for k in keys) if keys else "nothing (every run has one config apart from "
                   "its seed)")
    md += [f"Built from the results store {md_text(Path(store_dir))}: {len(rows)} completed runs "
           f"({counts['failed']} failed and {counts['pending'] + counts['running']} not finished are not included), "
           f"in {len(groups)} group(s). Runs are grouped by the config keys that vary across them: {factor_text}; "
           "the seeds within a group are its repeats.", ""]
    md += ["## Final metrics per group", "",
           "Mean over the group's runs with a 95 % Student-t interval over them (one run: its value); "
           "one column per group.", ""]
    names = ["runs", *[lab for _, lab in present]]
    md += _table(["metric", *[labels[g] for g in groups]],
                 [[n, *[col[i] for col in columns]] for i, n in enumerate(names)]) + [""]
    for p in figures:
        title = "Curves per group (mean over the group's runs)" if p.name == "curves.png" else \
            "Memorization vs dilation (one point per run)"
        md += [f"## {title}", "", f"![{title}](figures/{p.name})", ""]
    text = "\n".join(md)
    md_path, html_path = out / "report.md", out / "report.html"
    atomic_write_text(md_path, text)
    atomic_write_text(html_path, markdown_page(text, title=f"Sweep report: {name}", base_dir=out))
    summary = {"kind": "sweep", "store": str(store_dir), "runs": len(rows), "swept_keys": keys,
               "groups": summary_groups, "counts": counts, "figures": [str(p) for p in figures]}
    return SweepReport(out_dir=out, markdown=md_path, html=html_path, figures=figures, summary=summary)


def _sweeps(store_dir: str | Path) -> list[str]:
    store = RunStore(store_dir, create=False)
    try:
        return store.sweeps()
    finally:
        store.close()
