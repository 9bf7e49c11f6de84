"""Curves against epoch for one training run, from its ``metrics.jsonl`` only.

``plot_run(run_dir)`` writes ``RUN_DIR/figures/{losses,accuracy,nc1,memorization_dilation}.png``
(a figure is skipped when the run recorded none of its keys); ``plot_runs([...], out_dir=...)``
overlays several runs. Records exist at evaluation epochs (``eval_every``), so curves have one
point per evaluation. Every line is named in a legend: for one run colour = series and line
style = split (solid train, dashed test, dotted validation); for several, colour = run and
line style = series.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["CURVE_FIGURES", "plot_run", "plot_runs", "plot_history"]

_SOLID, _DASHED, _DOTTED = "-", "--", ":"

#: figure file stem -> (title, y-axis label, log y, [(record key, legend label, line style)])
CURVE_FIGURES: dict[str, tuple[str, str, bool, list[tuple[str, str, str]]]] = {
    "losses": ("Loss", "loss", False, [
        ("train_loss", "train (eval pass, noisy labels)", _SOLID),
        ("train_loss_running", "train (running mean during the epoch)", _SOLID),
        ("test_loss", "test", _DASHED),
        ("val_loss", "validation", _DOTTED),
    ]),
    "accuracy": ("Accuracy", "accuracy", False, [
        ("train_acc_noisy", "train, noisy (given) labels", _SOLID),
        ("train_acc_clean", "train, clean labels", _SOLID),
        ("test_acc", "test", _DASHED),
        ("val_acc_noisy", "validation, noisy labels", _DOTTED),
    ]),
    "nc1": ("NC1 (within-class variability)", "NC1 (log scale)", True, [
        ("train.nc1", "train", _SOLID),
        ("test.nc1", "test", _DASHED),
    ]),
    "memorization_dilation": ("Memorization and dilation", "feature-space distance", False, [
        ("train.memorization", "memorization, train", _SOLID),
        ("train.dilation", "dilation, train", _SOLID),
        ("test.dilation", "dilation, test", _DASHED),
    ]),
}


def _points(history: list[dict[str, Any]], key: str, *, log: bool) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for rec in history:
        v = rec.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not log):
            xs.append(rec["epoch"])
            ys.append(float(v))
    return xs, ys


def plot_history(history: list[dict[str, Any]] | dict[str, list[dict[str, Any]]], out_dir: str | Path, *,
                 title: str = "") -> list[Path]:
    """Write the figures of :data:`CURVE_FIGURES` that have data; returns the paths written.

    ``history`` is one run's records, or ``{run label: records}`` to overlay several runs
    (then colour = run and line style = series, both in the legend).
    """
    from matplotlib.ticker import MaxNLocator

    from nclab.report.style import OKABE_ITO, apply_style, plt, save

    apply_style()
    runs = history if isinstance(history, dict) else {"": history}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    styles = [_SOLID, _DASHED, _DOTTED, "-."]
    written = []
    for stem, (name, ylabel, logy, series) in CURVE_FIGURES.items():
        lines = []
        for r, (run, recs) in enumerate(runs.items()):
            for s_i, (key, label, ls) in enumerate(series):
                xs, ys = _points(recs, key, log=logy)
                if not xs:
                    continue
                if len(runs) == 1:
                    color, style, text = OKABE_ITO[len(lines) % len(OKABE_ITO)], ls, f"{label}  [{key}]"
                else:
                    color, style, text = OKABE_ITO[r % len(OKABE_ITO)], styles[s_i % len(styles)], f"{run}: {label}"
                lines.append((xs, ys, color, style, text))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        for xs, ys, color, style, text in lines:
            ax.plot(xs, ys, ls=style, marker="o" if len(xs) < 40 else None, ms=3, lw=1.5, color=color, label=text)
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {name}" if title else name)
        ax.legend(loc="best")
        path = out / f"{stem}.png"
        save(fig, path)
        written.append(path)
    return written


def _history(run_dir: Path) -> list[dict[str, Any]]:
    from nclab.store.rundir import RunDir

    rd = RunDir(run_dir)
    history = rd.history()
    if not history:
        raise ValueError(f"{rd.metrics_path} holds no epoch records yet")
    return history


def plot_run(run_dir: str | Path, *, out_dir: str | Path | None = None) -> list[Path]:
    """Curves of the run in ``run_dir`` into ``out_dir`` (default ``RUN_DIR/figures``).

    Raises ``FileNotFoundError`` when there is no ``metrics.jsonl`` and ``ValueError``
    when it holds no records yet.
    """
    run_dir = Path(run_dir)
    return plot_history(_history(run_dir), out_dir if out_dir is not None else run_dir / "figures",
                        title=run_dir.resolve().name)


def plot_runs(run_dirs: list[str | Path], *, out_dir: str | Path, title: str = "") -> list[Path]:
    """Several runs overlaid (e.g. CE vs LS), labelled by their folder names (made unique)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for d in map(Path, run_dirs):
        label = d.resolve().name
        while label in runs:
            label = f"{d.resolve().parent.name}/{label}"
        runs[label] = _history(d)
    return plot_history(runs, out_dir, title=title)
