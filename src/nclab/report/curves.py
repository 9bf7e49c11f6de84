"""Curves against epoch for one training run, from its ``metrics.jsonl`` only.

``plot_run(run_dir)`` writes ``RUN_DIR/figures/{losses,accuracy,nc1,memorization_dilation}.png``
(a figure is skipped when the run recorded none of its keys). Records exist at evaluation
epochs (``eval_every``), so curves have one point per evaluation. Every line is named in a
legend: colour = series, line style = split (solid train, dashed test, dotted validation).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["CURVE_FIGURES", "plot_run", "plot_history"]

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


def plot_history(history: list[dict[str, Any]], out_dir: str | Path, *, title: str = "") -> list[Path]:
    """Write the figures of :data:`CURVE_FIGURES` that have data; returns the paths written."""
    from matplotlib.ticker import MaxNLocator

    from nclab.report.style import OKABE_ITO, apply_style, plt, save

    apply_style()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (name, ylabel, logy, series) in CURVE_FIGURES.items():
        drawn = [(key, label, ls, *_points(history, key, log=logy)) for key, label, ls in series]
        drawn = [d for d in drawn if d[3]]
        if not drawn:
            continue
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        for i, (key, label, ls, xs, ys) in enumerate(drawn):
            ax.plot(xs, ys, ls=ls, marker="o" if len(xs) < 40 else None, ms=3, lw=1.5,
                    color=OKABE_ITO[i % len(OKABE_ITO)], label=f"{label}  [{key}]")
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


def plot_run(run_dir: str | Path, *, out_dir: str | Path | None = None) -> list[Path]:
    """Curves of the run in ``run_dir`` into ``out_dir`` (default ``RUN_DIR/figures``).

    Raises ``FileNotFoundError`` when there is no ``metrics.jsonl`` and ``ValueError``
    when it holds no records yet.
    """
    from nclab.store.files import read_jsonl

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl here (not an nclab run directory?)")
    history = [r for r in read_jsonl(path) if isinstance(r, dict) and "epoch" in r]
    if not history:
        raise ValueError(f"{path} holds no epoch records yet")
    name = run_dir.resolve().name
    return plot_history(history, out_dir if out_dir is not None else run_dir / "figures", title=name)
