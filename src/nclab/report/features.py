"""Feature-space pictures: the 2-D scatter of the memorization-dilation picture and
metric-vs-epoch curves. Inputs are plain arrays and metric records (no training
logic); ``nclab demo``, ``nclab analyze`` and the study report share them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from nclab.report.style import LOSS_COLORS, OKABE_ITO, apply_style, class_color, plt, save


def _project_2d(features: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """2-D coordinates: the features themselves when d = 2, else the top two principal
    axes of the centroids (plus the residual's top axis when C = 2), centred at their mean."""
    d = features.shape[1]
    if d == 2:
        return features, centroids, "feature 1 / feature 2"
    mean = centroids.mean(axis=0)
    _, _, vt = np.linalg.svd(centroids - mean, full_matrices=False)
    basis = vt[: min(2, vt.shape[0])]
    if basis.shape[0] < 2:  # C = 2: add the residual direction of the features
        r = features - mean
        r = r - (r @ basis.T) @ basis
        _, _, vr = np.linalg.svd(r[: 5000], full_matrices=False)
        basis = np.vstack([basis, vr[:1]])
    return (features - mean) @ basis.T, (centroids - mean) @ basis.T, "centroid-plane axis 1 / axis 2 (projection)"


def feature_scatter(
    path: str | Path,
    features: np.ndarray,
    labels: np.ndarray,
    clean_labels: np.ndarray,
    *,
    class_names: Sequence[str] | None = None,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    title: str = "",
    max_points: int = 4000,
    seed: int = 0,
) -> dict:
    """Scatter of last-layer features: clean samples by class, mislabeled samples as
    crosses coloured by their *true* class, clean centroids, a circle of radius
    ``dilation_c`` (mean distance of clean samples to their centroid) around each,
    and the classifier's decision boundary when features are 2-D.

    Returns the plotted numbers (centroids, radii, counts) for tests and captions.
    """
    apply_style()
    features = np.asarray(features, dtype=np.float64)
    labels, clean_labels = np.asarray(labels), np.asarray(clean_labels)
    C = int(max(labels.max(), clean_labels.max()) + 1)
    noisy = labels != clean_labels
    centroids = np.stack(
        [features[(clean_labels == c) & ~noisy].mean(axis=0) if np.any((clean_labels == c) & ~noisy)
         else np.full(features.shape[1], np.nan) for c in range(C)]
    )
    radii = np.array(
        [np.linalg.norm(features[(labels == c) & ~noisy] - centroids[c], axis=1).mean()
         if np.any((labels == c) & ~noisy) else np.nan for c in range(C)]
    )
    xy, cxy, axis_label = _project_2d(features, np.nan_to_num(centroids))
    rng = np.random.default_rng(seed)
    idx = np.arange(len(labels))
    if len(idx) > max_points:  # subsample clean points only; every mislabeled point is drawn
        clean_idx = idx[~noisy]
        keep = rng.choice(clean_idx, size=max(max_points - int(noisy.sum()), 100), replace=False)
        idx = np.sort(np.concatenate([keep, idx[noisy]]))
    names = list(class_names) if class_names is not None else [f"class {c}" for c in range(C)]
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    for c in range(C):
        m = idx[(clean_labels[idx] == c) & ~noisy[idx]]
        ax.scatter(xy[m, 0], xy[m, 1], s=9, alpha=0.35, color=class_color(c), linewidths=0, label=f"{names[c]} (clean)")
    for c in range(C):
        m = idx[(clean_labels[idx] == c) & noisy[idx]]
        if len(m):
            ax.scatter(xy[m, 0], xy[m, 1], s=28, marker="x", color=class_color(c), linewidths=1.2,
                       label=f"true {names[c]}, mislabeled")
    for c in range(C):
        if np.isnan(centroids[c]).any():
            continue
        ax.scatter(*cxy[c], s=220, marker="*", color=class_color(c), edgecolors="black", linewidths=0.8, zorder=5)
        if features.shape[1] == 2 and np.isfinite(radii[c]):
            ax.add_patch(plt.Circle(cxy[c], radii[c], fill=False, ls="--", lw=1.3, color=class_color(c), zorder=4))
    if weight is not None and features.shape[1] == 2 and C == 2:
        w = np.asarray(weight, dtype=np.float64)
        b = np.zeros(2) if bias is None else np.asarray(bias, dtype=np.float64)
        dw, db = w[0] - w[1], b[0] - b[1]
        lo, hi = np.nanmin(xy, axis=0), np.nanmax(xy, axis=0)
        pad = 0.08 * (hi - lo + 1e-12)
        xs = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200)
        if abs(dw[1]) > 1e-12:
            ax.plot(xs, -(dw[0] * xs + db) / dw[1], color="black", lw=1.2, label="decision boundary")
        elif abs(dw[0]) > 1e-12:
            ax.axvline(-db / dw[0], color="black", lw=1.2, label="decision boundary")
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(axis_label.split(" / ")[0])
    ax.set_ylabel(axis_label.split(" / ")[1])
    ax.set_title(title or "last-layer features")
    ax.legend(loc="best", markerscale=1.2)
    ax.text(0.01, 0.01, "★ clean centroid   ◌ radius = dilation (mean distance)", transform=ax.transAxes,
            fontsize=7, color="0.3")
    save(fig, path)
    return {"centroids": centroids, "radii": radii, "n_mislabeled": int(noisy.sum()), "n": int(len(labels))}


CURVE_PANELS: list[tuple[str, str, bool]] = [
    ("train.nc1", "NC1 (train)", True),
    ("train.nc2_orthogonal_error_means", "orthogonal-frame error (train)", False),
    ("train.memorization_normalized", "memorization / centroid distance", False),
    ("train.dilation_normalized", "dilation / centroid distance", False),
    ("train_acc_noisy", "train accuracy (noisy labels)", False),
    ("test_acc", "test accuracy", False),
]


def metric_curves(path: str | Path, histories: dict[str, list[dict]], *, title: str = "",
                  panels: list[tuple[str, str, bool]] | None = None) -> list[str]:
    """Small multiples of metrics against epoch, one line per run (e.g. per loss).

    ``histories`` maps a label (``"ce"``, ``"ls(0.1)"``, ...) to its ``metrics.jsonl``
    records. Returns the panel keys that had data.
    """
    apply_style()
    panels = panels or CURVE_PANELS
    drawn = []
    fig, axes = plt.subplots(2, (len(panels) + 1) // 2, figsize=(3.3 * ((len(panels) + 1) // 2), 5.6))
    for ax, (key, label, logy) in zip(axes.flat, panels):
        any_data = False
        for i, (name, recs) in enumerate(histories.items()):
            pts = [(r["epoch"], r[key]) for r in recs if r.get(key) is not None]
            if not pts:
                continue
            any_data = True
            e, v = zip(*pts)
            color = LOSS_COLORS.get(name.split("(")[0], OKABE_ITO[i % len(OKABE_ITO)])
            ax.plot(e, v, marker="o", ms=2.5, lw=1.5, color=color, label=name)
        if any_data:
            drawn.append(key)
            if logy:
                ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("epoch")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend()
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    save(fig, path)
    return drawn
