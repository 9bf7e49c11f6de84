"""Suspicion scores for a trained nclab run, and the CSV they are written to."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from nclab.detect.scores import (
    aum_scores,
    centroid_ratio_scores,
    detection_quality,
    fit_epoch_scores,
    knn_disagreement_scores,
    rank_average,
)

__all__ = ["SCORES", "Suspicion", "score_arrays", "score_run"]

SCORES: dict[str, str] = {
    "features": "centroid ratio dist(h, μ_given) / dist(h, nearest other μ) of the final features",
    "knn": "kNN disagreement of the final features (ties: centroid ratio)",
    "dynamics": "negated area under the logit margin over the recorded epochs (AUM)",
    "fit_epoch": "how late the sample is fitted (ties: AUM)",
    "combined": "rank average of features (centroid ratio), knn and dynamics (AUM)",
}
"""Score names for :func:`score_arrays` / ``nclab detect --score`` and what each computes."""

_NEEDS_FEATURES = {"features", "knn", "combined"}
_NEEDS_DYNAMICS = {"dynamics", "fit_epoch", "combined"}


def score_arrays(
    *, labels: Any, features: Any = None, margins: Any = None, score: str = "combined",
    num_classes: int | None = None, k: int = 10,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The ``score`` (see :data:`SCORES`) from in-memory features (n×d) and/or margins (E×n).

    Returns ``(score, components)`` where ``components`` holds each ingredient score.
    """
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
    if score in _NEEDS_FEATURES and features is None:
        raise ValueError(f"score {score!r} needs the features")
    if score in _NEEDS_DYNAMICS and margins is None:
        raise ValueError(f"score {score!r} needs training dynamics (margins per epoch)")
    comp: dict[str, np.ndarray] = {}
    if score in ("features", "combined"):
        comp["centroid_ratio"] = centroid_ratio_scores(features, labels, num_classes=num_classes)
    if score in ("knn", "combined"):
        comp["knn_disagreement"] = knn_disagreement_scores(features, labels, k=k, num_classes=num_classes)
    if score in ("dynamics", "combined"):
        comp["aum"] = aum_scores(margins)
    if score == "fit_epoch":
        comp["fit_epoch"] = fit_epoch_scores(margins)
    if margins is not None and np.asarray(margins).shape[-1] != len(labels):
        raise ValueError(f"margins cover {np.asarray(margins).shape[-1]} samples but there are {len(labels)} labels")
    if score == "combined":
        # rank average; +inf ratios are fine for ranks
        return rank_average(*comp.values()), comp
    return next(iter(comp.values())), comp


@dataclass
class Suspicion:
    """Per-training-sample suspicion, most suspicious first when sorted by ``rank`` (1 = top).

    ``index``: position in the run's training set; ``dataset_index``: position in the
    dataset's training split (differs when a validation part was held out);
    ``clean`` / ``is_mislabeled``: from ``noise.npz`` (``None`` when absent);
    ``flagged``: the flagged set of :func:`~nclab.detect.find_label_issues` under
    ``flag_rule`` (``aum`` with dynamics, else ``nearest_centroid``), never using the truth.
    """

    score_name: str
    index: np.ndarray
    dataset_index: np.ndarray
    given: np.ndarray
    score: np.ndarray
    clean: np.ndarray | None = None
    is_mislabeled: np.ndarray | None = None
    components: dict[str, np.ndarray] = field(default_factory=dict)
    flagged: np.ndarray | None = None
    flag_rule: str | None = None

    def flagged_quality(self) -> dict[str, Any] | None:
        """Size of the flagged set, and its precision and recall against the known truth."""
        if self.flagged is None:
            return None
        out: dict[str, Any] = {"flagged": int(self.flagged.sum()), "rule": self.flag_rule}
        if self.is_mislabeled is not None:
            t = self.is_mislabeled
            out["precision"] = float(t[self.flagged].mean()) if self.flagged.any() else None
            out["recall"] = float(self.flagged[t].mean()) if t.any() else None
        return out

    @property
    def rank(self) -> np.ndarray:
        """1 for the most suspicious sample (ties share the smallest rank)."""
        return rankdata(-self.score, method="min").astype(np.int64)

    def quality(self) -> dict[str, Any] | None:
        """:func:`detection_quality` against the known truth, or ``None`` without it."""
        return None if self.is_mislabeled is None else detection_quality(self.score, self.is_mislabeled)

    def to_csv(self, path: str | Path) -> Path:
        """Write one row per sample, sorted by rank: index, dataset_index, given_label, score,
        rank, one column per component score, and clean_label, is_mislabeled when known."""
        from nclab.store.files import atomic_write_text

        order = np.argsort(-self.score, kind="stable")
        rank = self.rank
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        comp_names = list(self.components) if len(self.components) > 1 else []  # the ingredients of "combined"
        head = ["index", "dataset_index", "given_label", "score", "rank"] + [f"score_{c}" for c in comp_names]
        if self.flagged is not None:
            head += ["flagged"]
        if self.clean is not None:
            head += ["clean_label", "is_mislabeled"]
        w.writerow(head)
        for i in order:
            row = [int(self.index[i]), int(self.dataset_index[i]), int(self.given[i]), repr(float(self.score[i])), int(rank[i])]
            row += [repr(float(self.components[c][i])) for c in comp_names]
            if self.flagged is not None:
                row += [int(bool(self.flagged[i]))]
            if self.clean is not None:
                row += [int(self.clean[i]), int(bool(self.is_mislabeled[i]))]
            w.writerow(row)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, buf.getvalue())
        return path


def score_run(
    run_dir: str | Path, *, score: str = "combined", k: int = 10, device: str = "cpu", batch_size: int = 1024,
) -> Suspicion:
    """Suspicion scores for the training samples of an nclab run, read from the run directory.

    Labels come from ``noise.npz`` (or ``features.npz``), features from ``features.npz``
    (the trainer's final eval-mode features), margins from ``run_dir/dynamics`` (written
    with ``record_dynamics``), so any run works — built-in, ``npz``, registered or
    in-memory data and models — without rebuilding data or model. Only a run without
    ``features.npz`` (``save_features: false``, or not finished) falls back to
    rebuilding the model from ``config.yaml`` and ``checkpoints/last.pt``. The truth,
    when ``noise.npz`` holds it, is attached but never used for scoring.
    """
    from nclab.detect.issues import find_label_issues
    from nclab.store import rundir

    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; valid: {', '.join(SCORES)}")
    rd = rundir.RunDir(run_dir).require_run()
    run_dir = rd.path
    margins = None
    try:
        margins = rd.dynamics().margins
    except FileNotFoundError:
        if score in _NEEDS_DYNAMICS:
            raise
    arrays = rd.noise()
    feat_path = rd.features_path
    stored = rundir.load_npz(feat_path) if feat_path.exists() else {}
    if "noisy" in arrays:
        train_idx = np.asarray(arrays.get("train_idx", np.arange(len(arrays["noisy"]))), dtype=np.int64)
        y = np.asarray(arrays["noisy"], dtype=np.int64)[train_idx]
    elif "labels" in stored:
        y = np.asarray(stored["labels"], dtype=np.int64)
        train_idx = np.arange(len(y))
    else:
        raise FileNotFoundError(f"{run_dir}: neither {rundir.NOISE} nor {rundir.FEATURES} holds the training labels")
    num_classes = int(arrays["num_classes"]) if "num_classes" in arrays else (
        int(stored["W"].shape[0]) if "W" in stored else None)
    feats = None
    if score in _NEEDS_FEATURES or margins is None:
        if "features" in stored:
            feats = np.asarray(stored["features"])
            if "labels" in stored and not np.array_equal(np.asarray(stored["labels"]), y):
                raise ValueError(f"{feat_path} labels differ from {rundir.NOISE}'s training labels; the run dir is inconsistent")
        else:
            feats = _rebuilt_features(run_dir, device=device, batch_size=batch_size)
    if margins is not None and margins.shape[1] != len(y):
        raise ValueError(f"{run_dir}/dynamics holds margins of {margins.shape[1]} samples but the run has {len(y)} "
                         "training samples")
    s, comp = score_arrays(labels=y, features=feats, margins=margins, score=score, num_classes=num_classes, k=k)
    if margins is not None:
        rule = "aum"
        flagged = find_label_issues(y, margins=margins, filter_by="aum")
    else:
        rule = "nearest_centroid"
        flagged = find_label_issues(y, features=feats, filter_by="nearest_centroid", num_classes=num_classes)
    n = y.shape[0]
    clean = mis = None
    if "clean" in arrays and "noisy" in arrays:
        clean = np.asarray(arrays["clean"])[train_idx]
        l2c = np.asarray(arrays.get("label_to_class", np.arange(int(np.max(arrays["noisy"])) + 1)))
        mis = l2c[np.asarray(arrays["noisy"])[train_idx]] != clean
    return Suspicion(score_name=score, index=np.arange(n), dataset_index=np.asarray(train_idx, dtype=np.int64),
                     given=y, score=s, clean=clean, is_mislabeled=mis, components=comp,
                     flagged=flagged, flag_rule=rule)


def _rebuilt_features(run_dir: Path, *, device: str, batch_size: int) -> np.ndarray:
    """Final features from the checkpoint, for runs without ``features.npz``."""
    from nclab.collect.rebuild import load_run

    try:
        run = load_run(run_dir, device=device)
    except ValueError as exc:
        raise ValueError(f"{run_dir} has no features.npz, and its model/data cannot be rebuilt ({exc}); "
                         "train with save_features: true (the default) and let the run finish") from None
    x = run.data.x_train
    with torch.no_grad():
        h = torch.cat([run.model.forward_features(x[i : i + batch_size])[1] for i in range(0, x.shape[0], batch_size)])
    return h.cpu().numpy()
