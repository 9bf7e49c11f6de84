"""The main job (``nclab demo``, what ``make run`` runs).

Two small MLPs trained on the same label-noised binary task, one with
cross-entropy and one with label smoothing LS(α); the memorization-dilation
picture of each: a side-by-side metric table, a 2-D feature scatter per loss
and NC-metric-vs-epoch curves. Both runs record training dynamics (per-sample
margins every epoch), so ``nclab detect OUT/ce`` finds the mislabeled samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

DEMO_DATASETS: dict[str, dict[str, Any]] = {
    # scikit-learn's bundled 8x8 digits, 0 vs 1: real, offline, ~360 images
    "digits": {
        "dataset": {"name": "digits", "classes": 2},
        "epochs": 40,
        "batch_size": 32,
        "model": {"name": "mlp", "depth": 3, "width": 128},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
        "schedule": {"name": "step", "step_size": 15, "gamma": 0.3},
    },
    # Fashion-MNIST T-shirt/top (0) vs Trouser (1), 1,000 training images per class
    "fashion-mnist": {
        "dataset": {"name": "fashion-mnist", "classes": [0, 1], "per_class": 1000},
        "epochs": 20,
        "batch_size": 64,
        "model": {"name": "mlp", "depth": 3, "width": 256},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
        "schedule": {"name": "step", "step_size": 8, "gamma": 0.3},
    },
}

TABLE_ROWS: list[tuple[str, str]] = [
    ("test accuracy", "test_acc"),
    ("train accuracy (noisy labels)", "train_acc_noisy"),
    ("train accuracy (clean labels)", "train_acc_clean"),
    ("realized noise rate", "train.realized_noise_rate"),
    ("memorization", "train.memorization"),
    ("dilation (train)", "train.dilation"),
    ("memorization / centroid distance", "train.memorization_normalized"),
    ("dilation / centroid distance", "train.dilation_normalized"),
    ("dilation / centroid distance (test)", "test.dilation_normalized"),
    ("noisy-centroid projection", "train.noisy_centroid_projection"),
    ("NC1 (train)", "train.nc1"),
    ("NC2 orthogonal-frame error (train)", "train.nc2_orthogonal_error_means"),
]


@dataclass
class DemoRun:
    label: str
    run_dir: Path
    final: dict[str, Any]
    history: list[dict[str, Any]]
    scatter: Path
    status: str


@dataclass
class DemoResult:
    dataset: str
    out_dir: Path
    runs: list[DemoRun] = field(default_factory=list)
    curves: Path | None = None


def demo_config(dataset: str, *, loss: str, alpha: float, noise_rate: float, seed: int, epochs: int | None) -> dict:
    if dataset not in DEMO_DATASETS:
        raise ValueError(f"unknown demo dataset {dataset!r}; valid: {', '.join(DEMO_DATASETS)}")
    base = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEMO_DATASETS[dataset].items()}
    base.update(
        name=f"demo-{dataset}-{loss}",
        record_dynamics=True,  # per-epoch margins: `nclab detect OUT/ce` then ranks by AUM too
        seed=seed,
        noise={"kind": "symmetric", "rate": noise_rate},
        loss={"name": loss, "alpha": alpha},
    )
    if epochs is not None:
        base["epochs"] = epochs
    return base


def final_features(run_dir: Path) -> dict[str, np.ndarray]:
    """A finished run's final training features (``features.npz``) and class names."""
    from nclab.store.files import load_feature_file

    f = load_feature_file(run_dir / "features.npz")
    env = json.loads((run_dir / "env.json").read_text())
    f["class_names"] = np.array(env.get("data", {}).get("class_names", []))
    return f


def run_demo(
    *,
    dataset: str = "digits",
    out_dir: str | Path = "nclab-demo",
    alpha: float = 0.1,
    noise_rate: float = 0.2,
    seed: int = 0,
    epochs: int | None = None,
    progress: bool = True,
    on_run_done: Callable[[str], None] | None = None,
) -> DemoResult:
    """Train CE and LS(α) on the same noisy data; write scatters and curves to ``out_dir``."""
    from nclab.report.features import feature_scatter, metric_curves
    from nclab.train import TrainConfig, train

    out = Path(out_dir)
    result = DemoResult(dataset=dataset, out_dir=out)
    for loss in ("ce", "ls"):
        label = "ce" if loss == "ce" else f"ls({alpha:g})"
        cfg = TrainConfig.from_dict(demo_config(dataset, loss=loss, alpha=alpha, noise_rate=noise_rate,
                                                seed=seed, epochs=epochs))
        run_dir = out / loss
        res = train(cfg, run_dir=run_dir, overwrite=True, progress=progress)
        if res.status != "completed":
            raise RuntimeError(f"{label} run ended with status {res.status}: {res.message}")
        f = final_features(run_dir)
        names = [str(s) for s in f["class_names"]] or None
        scatter = out / f"features_{loss}.png"
        m = res.final
        feature_scatter(
            scatter, f["features"], f["labels"], f["clean_labels"], weight=f["W"], bias=f["b"], class_names=names,
            title=(f"{dataset}, {label}, {noise_rate:g} symmetric noise — test acc {m['test_acc']:.3f}\n"
                   f"memorization {m['train.memorization']:.2f}, dilation {m['train.dilation']:.2f}"),
        )
        result.runs.append(DemoRun(label, run_dir, m, res.history, scatter, res.status))
        if on_run_done is not None:
            on_run_done(label)
    result.curves = out / "curves.png"
    metric_curves(result.curves, {r.label: r.history for r in result.runs},
                  title=f"{dataset}: CE vs LS under {noise_rate:g} symmetric label noise")
    return result
