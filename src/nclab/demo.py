"""The main job (``nclab demo``, what ``make run`` runs): CE vs LS under label noise, paired by seed.

One seed of a small network says little: which loss "wins" can flip with the CPU's
floating-point paths. The demo therefore trains ``pairs`` seeds per loss — cross-entropy
and label smoothing LS(α) — where the two runs of a seed share everything but the loss:
the noisy labels, the initialisation and the batch order (one ``seed`` drives them all).
All ``2 × pairs`` runs are trained together as one stack (:mod:`nclab.train.stacked`),
each to the end of a cosine-annealed learning-rate schedule (no early stop).

The summary is paired: for every metric, the mean over seeds of ``LS − CE`` with a 95 %
Student-t interval, and the number of seeds in which LS does better (higher accuracy,
lower memorization, dilation, NC1, frame error). Pictures come from the first seed (the
2-D feature scatter per loss and NC-metric curves), plus one figure of the paired
differences. Every run records training dynamics, so ``nclab detect OUT/ce-0`` finds the
mislabeled samples.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nclab.stats import paired_difference

DEMO_DATASETS: dict[str, dict[str, Any]] = {
    # scikit-learn's bundled 8x8 digits, 0 vs 1: real, offline, ~360 images
    "digits": {
        "dataset": {"name": "digits", "classes": 2},
        "epochs": 80,
        "batch_size": 32,
        "eval_every": 5,
        "model": {"name": "mlp", "depth": 3, "width": 128},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
        "schedule": {"name": "cosine"},
    },
    # Fashion-MNIST T-shirt/top (0) vs Trouser (1), 1,000 training images per class
    "fashion-mnist": {
        "dataset": {"name": "fashion-mnist", "classes": [0, 1], "per_class": 1000},
        "epochs": 20,
        "batch_size": 64,
        "eval_every": 5,
        "model": {"name": "mlp", "depth": 3, "width": 256},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
        "schedule": {"name": "cosine"},
    },
}

DEMO_METRICS: list[tuple[str, str, str, str]] = [
    # (name in --json, short label, metrics.jsonl key, which direction is better);
    # "(n.)": divided by the distance between the clean class centroids
    ("test_accuracy", "test accuracy", "test_acc", "higher"),
    ("train_accuracy_clean", "train acc. (clean)", "train_acc_clean", "higher"),
    ("memorization", "memorization", "train.memorization", "lower"),
    ("dilation", "dilation", "train.dilation", "lower"),
    ("memorization_normalized", "memorization (n.)", "train.memorization_normalized", "lower"),
    ("dilation_normalized", "dilation (n.)", "train.dilation_normalized", "lower"),
    ("test_dilation_normalized", "test dilation (n.)", "test.dilation_normalized", "lower"),
    ("nc1", "NC1", "train.nc1", "lower"),
    ("nc2_orthogonal_error", "NC2 frame error", "train.nc2_orthogonal_error_means", "lower"),
]
"""The metrics the demo compares, with the direction in which LS counts as winning."""

TABLE_ROWS: list[tuple[str, str]] = [(label, key) for _, label, key, _ in DEMO_METRICS]


@dataclass
class DemoRun:
    label: str
    loss: str
    seed: int
    run_dir: Path
    final: dict[str, Any]
    history: list[dict[str, Any]]
    status: str


@dataclass
class Difference:
    """The paired LS − CE difference of one metric over the seeds."""

    name: str
    label: str
    key: str
    better: str
    ce: list[float]
    ls: list[float]
    estimate: float
    ci: list[float] | None
    ls_wins: int

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "ci": self.ci, "ls_wins": self.ls_wins, "better": self.better,
                "ce_mean": float(np.mean(self.ce)), "ls_mean": float(np.mean(self.ls))}


@dataclass
class DemoResult:
    dataset: str
    out_dir: Path
    pairs: int
    alpha: float
    noise_rate: float
    epochs: int
    training_seconds: float = 0.0
    training_cpu_seconds: float = 0.0
    runs: list[DemoRun] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """What ``nclab demo --json`` prints."""
        return {
            "dataset": self.dataset, "pairs": self.pairs, "alpha": self.alpha, "noise_rate": self.noise_rate,
            "epochs": self.epochs, "level": 0.95,
            "training_seconds": round(self.training_seconds, 2),
            "training_cpu_seconds": round(self.training_cpu_seconds, 2),
            "differences": {d.name: d.to_dict() for d in self.differences},
            "figures": [str(p) for p in self.figures],
            "runs": [str(r.run_dir) for r in self.runs],
        }


def demo_config(dataset: str, *, loss: str, alpha: float, noise_rate: float, seed: int, epochs: int | None) -> dict:
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"unknown demo dataset {dataset!r}; valid: {', '.join(DEMO_DATASETS)}")
    base = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEMO_DATASETS[dataset].items()}
    base.update(
        name=f"demo-{dataset}-{loss}-{seed}",
        record_dynamics=True,  # per-epoch margins: `nclab detect OUT/ce-0` then ranks by AUM too
        seed=seed,  # one seed: the same noisy labels, initialisation and batch order for CE and LS
        noise={"kind": "symmetric", "rate": noise_rate},
        loss={"name": loss, "alpha": alpha},
    )
    if epochs is not None:
        base["epochs"] = epochs
    base["checkpoint_every"] = base["epochs"]  # a demo needs no mid-run checkpoints
    return base


def final_features(run_dir: Path) -> dict[str, np.ndarray]:
    """A finished run's final training features (``features.npz``) and class names."""
    from nclab.store.rundir import RunDir

    rd = RunDir(run_dir)
    f = rd.features()
    f["class_names"] = np.array(rd.class_names() or [])
    return f


def paired_differences(ce_finals: list[dict], ls_finals: list[dict]) -> list[Difference]:
    """Per metric of :data:`DEMO_METRICS`: the LS − CE mean over pairs, its 95 % t-interval and
    the number of pairs in which LS does better. Metrics missing in some pair are left out."""
    out = []
    for name, label, key, better in DEMO_METRICS:
        ce = [f.get(key) for f in ce_finals]
        ls = [f.get(key) for f in ls_finals]
        if any(v is None or not np.isfinite(v) for v in ce + ls):
            continue
        d = paired_difference(ce, ls)
        diff = np.asarray(ls) - np.asarray(ce)
        wins = int((diff > 0).sum() if better == "higher" else (diff < 0).sum())
        out.append(Difference(name, label, key, better, [float(v) for v in ce], [float(v) for v in ls],
                              d.mean, d.ci, wins))
    return out


def differences_figure(path: Path, diffs: list[Difference], *, title: str) -> None:
    """One panel per metric: each pair's LS − CE (dots), the mean and its 95 % interval (bar), zero."""
    from nclab.report.style import LOSS_COLORS, apply_style, plt, save

    apply_style()
    cols = 3
    rows = (len(diffs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    for ax, d in zip(axes.flat, diffs):
        diff = np.asarray(d.ls) - np.asarray(d.ce)
        jitter = np.linspace(-0.15, 0.15, diff.size)
        ax.axvline(0.0, color="0.5", lw=0.8)
        ax.scatter(diff, jitter, s=14, color=LOSS_COLORS["ls"], alpha=0.7, zorder=3)
        if d.ci is not None:
            ax.errorbar([d.estimate], [0.45], xerr=[[d.estimate - d.ci[0]], [d.ci[1] - d.estimate]], fmt="o",
                        color="black", capsize=3, zorder=4)
        ax.set_ylim(-0.4, 0.7)
        ax.set_yticks([])
        ax.grid(axis="y", visible=False)
        ax.set_title(f"{d.label}\nLS better: {d.better}, {d.ls_wins}/{diff.size}", fontsize=8)
    for ax in list(axes.flat)[len(diffs):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save(fig, path)


def pairs_csv(result: DemoResult) -> str:
    """Per-seed values (one row per seed, CE and LS columns per metric) as CSV text."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["seed"] + [f"{d.name}_{loss}" for d in result.differences for loss in ("ce", "ls")])
    for i in range(result.pairs):
        w.writerow([i] + [repr(v) for d in result.differences for v in (d.ce[i], d.ls[i])])
    return buf.getvalue()


def run_demo(
    *,
    dataset: str = "digits",
    out_dir: str | Path = "nclab-demo",
    pairs: int = 12,
    alpha: float = 0.1,
    noise_rate: float = 0.2,
    epochs: int | None = None,
    overwrite: bool = True,
    on_progress: Callable[[str], None] | None = None,
    progress: bool = False,
) -> DemoResult:
    """Train ``pairs`` seeds of CE and of LS(α) as one stack; write figures, ``pairs.csv`` and
    ``summary.json`` to ``out_dir``; return the paired differences.

    ``on_progress(line)`` receives a short line now and then (None: silent; ``progress=True``
    prints them)."""
    from nclab.report.features import feature_scatter, metric_curves
    from nclab.store.files import atomic_write_text
    from nclab.train import TrainConfig
    from nclab.train.stacked import train_stack

    if pairs < 2:
        raise ValueError(f"pairs must be >= 2 (an interval needs two pairs); got {pairs}")
    if on_progress is None and progress:
        on_progress = print
    out = Path(out_dir)
    configs, run_dirs, meta = [], [], []
    for seed in range(pairs):
        for loss in ("ce", "ls"):
            configs.append(TrainConfig.from_dict(demo_config(dataset, loss=loss, alpha=alpha, noise_rate=noise_rate,
                                                             seed=seed, epochs=epochs)))
            run_dirs.append(out / f"{loss}-{seed}")
            meta.append((loss, seed))
    total = configs[0].epochs
    result = DemoResult(dataset=dataset, out_dir=out, pairs=pairs, alpha=alpha, noise_rate=noise_rate, epochs=total)

    def on_epoch(k: int, epoch: int) -> None:
        if on_progress is not None and k == 0 and (epoch % max(1, total // 4) == 0 or epoch == total):
            on_progress(f"  epoch {epoch}/{total} ({len(configs)} runs stacked, "
                        f"{time.perf_counter() - t0:.1f}s)")

    t0, c0 = time.perf_counter(), time.process_time()
    results = train_stack(configs, run_dirs=run_dirs, overwrite=overwrite, on_epoch=on_epoch)
    result.training_seconds = time.perf_counter() - t0
    result.training_cpu_seconds = time.process_time() - c0
    for (loss, seed), res in zip(meta, results):
        if res.status != "completed" or res.final is None:
            raise RuntimeError(f"{loss} seed {seed} ended with status {res.status}: {res.message}")
        label = "ce" if loss == "ce" else f"ls({alpha:g})"
        result.runs.append(DemoRun(label, loss, seed, res.run_dir, res.final, res.history, res.status))
    ce = [r.final for r in result.runs if r.loss == "ce"]
    ls = [r.final for r in result.runs if r.loss == "ls"]
    result.differences = paired_differences(ce, ls)

    # pictures of the first seed
    for r in result.runs[:2]:
        f = final_features(r.run_dir)
        names = [str(s) for s in f["class_names"]] or None
        path = out / f"features_{r.loss}.png"
        m = r.final
        feature_scatter(
            path, f["features"], f["labels"], f["clean_labels"], weight=f["W"], bias=f["b"], class_names=names,
            title=(f"{dataset}, {r.label}, seed 0, {noise_rate:g} symmetric noise — test acc {m['test_acc']:.3f}\n"
                   f"memorization {m['train.memorization']:.2f}, dilation {m['train.dilation']:.2f}"),
        )
        result.figures.append(path)
    curves = out / "curves.png"
    metric_curves(curves, {r.label: r.history for r in result.runs[:2]},
                  title=f"{dataset}, seed 0: CE vs LS under {noise_rate:g} symmetric label noise")
    result.figures.append(curves)
    diff_fig = out / "differences.png"
    differences_figure(diff_fig, result.differences,
                       title=f"{dataset}: LS({alpha:g}) − CE over {pairs} paired seeds (dots), mean and 95 % interval")
    result.figures.append(diff_fig)
    atomic_write_text(out / "pairs.csv", pairs_csv(result))
    atomic_write_text(out / "summary.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result
