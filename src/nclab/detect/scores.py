"""Per-sample suspicion scores for mislabeled training samples (higher = more suspicious).

None of the scores sees clean labels. Two sources of evidence:

**Features** (one trained model, its penultimate features ``h_i`` and given labels
``y_i``; class means ``μ_c`` of the *given* labels):

* ``centroid_ratio``: ``‖h_i − μ_{y_i}‖ / min_{c≠y_i} ‖h_i − μ_c‖``. In the
  memorization-dilation picture a mislabeled sample that is not (yet) fully
  memorized sits between its true class and its given label, far from the
  given label's mean relative to the nearest other mean; a clean collapsed
  sample has ratio ≈ 0. (The distances are the metric engine's
  ``per_sample`` output ``dist_given_mean`` / ``dist_nearest_other_mean``.)
* ``knn_disagreement``: fraction of the ``k`` nearest neighbours (Euclidean,
  the sample itself excluded) whose given label differs from ``y_i``; ties are
  broken by ``centroid_ratio`` (scaled to < 1/k so the kNN order is kept).

**Training dynamics** (margins ``m_{e,i} = z_{y_i} − max_{j≠y_i} z_j`` at the
recorded epochs ``e = 1..E``, see :mod:`nclab.store.dynamics`):

* ``aum``: ``−mean_e m_{e,i}`` — the negated area under the margin (Pleiss et
  al. 2020); mislabeled samples are fitted late and with small margins.
* ``fit_epoch``: ``(first e from which m_{e',i} > 0 for all e' ≥ e) / (E + 1)``,
  ``1`` when the sample is not fitted at the last epoch, ties broken by ``aum``.

**Combination**: :func:`rank_average` — the mean of the per-score normalised
ranks (each in (0, 1]), so scores on different scales weigh equally.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "FEATURE_SCORES",
    "DYNAMICS_SCORES",
    "aum_scores",
    "centroid_ratio_scores",
    "detection_quality",
    "fit_epoch_scores",
    "knn_disagreement_scores",
    "rank_average",
]

FEATURE_SCORES = ("centroid_ratio", "knn_disagreement")
DYNAMICS_SCORES = ("aum", "fit_epoch")


def _features_labels(features: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.as_tensor(features).detach()
    y = torch.as_tensor(labels).detach()
    if h.ndim != 2:
        raise ValueError(f"features must be n×d; got shape {tuple(h.shape)}")
    if y.ndim != 1 or y.shape[0] != h.shape[0]:
        raise ValueError(f"labels must be a vector of length {h.shape[0]}; got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"labels must be integer class ids; got dtype {y.dtype}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError("features contain NaN or inf")
    return h, y.to(h.device).long()


def centroid_ratio_scores(features: Any, labels: Any, *, num_classes: int | None = None) -> np.ndarray:
    """``dist(h_i, μ_{y_i}) / min_{c≠y_i} dist(h_i, μ_c)`` (given-label means), via the metric
    engine's per-sample output. float64 (n,). A zero denominator (a sample exactly at
    another class's mean) gives ``inf`` — maximally suspicious."""
    from nclab.metrics import nc_metrics
    import warnings

    h, y = _features_labels(features, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rank warnings (d < C−1) do not affect distances
        res = nc_metrics(h, y, num_classes=num_classes, per_sample=True)
    own = np.asarray(res.per_sample["dist_given_mean"], dtype=np.float64)
    other = np.asarray(res.per_sample["dist_nearest_other_mean"], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(other > 0, own / np.where(other > 0, other, 1.0), np.inf)
    return np.where((own == 0) & (other == 0), 0.0, ratio)


def knn_disagreement_scores(
    features: Any, labels: Any, *, k: int = 10, num_classes: int | None = None, chunk: int = 2048
) -> np.ndarray:
    """Fraction of the ``k`` nearest neighbours (Euclidean, self excluded) with a different
    given label, plus ``centroid_ratio / (k·(1 + max ratio))`` (< 1/k) to break ties.
    O(n²·d) time in chunks of ``chunk`` rows, O(chunk·n) memory. float64 (n,)."""
    h, y = _features_labels(features, labels)
    n = h.shape[0]
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    if n < 2:
        raise ValueError("kNN needs at least 2 samples")
    k = min(k, n - 1)
    h64 = h.double()
    sq = (h64 * h64).sum(dim=1)
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        d2 = sq[s:e, None] - 2.0 * h64[s:e] @ h64.T + sq[None, :]
        d2[torch.arange(e - s), torch.arange(s, e)] = float("inf")  # exclude self
        nn_idx = d2.topk(k, dim=1, largest=False).indices
        out[s:e] = (y[nn_idx] != y[s:e, None]).double().mean(dim=1).cpu().numpy()
    ratio = centroid_ratio_scores(h, y, num_classes=num_classes)
    finite = np.isfinite(ratio)
    top = ratio[finite].max() if finite.any() else 1.0
    tie = np.where(finite, ratio, top) / (k * (1.0 + top) * 1.0000001)
    return out + tie


def _margins(margins: Any) -> np.ndarray:
    m = np.asarray(margins, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1:
        raise ValueError(f"margins must be E×n (epochs × samples) with E >= 1; got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("margins contain NaN or inf")
    return m


def aum_scores(margins: Any) -> np.ndarray:
    """``−mean_e m_{e,i}``: the negated area under the margin (higher = more suspicious)."""
    return -_margins(margins).mean(axis=0)


def fit_epoch_scores(margins: Any) -> np.ndarray:
    """How late each sample is fitted: ``t_i / (E + 1)`` where ``t_i`` is the first recorded
    epoch index (1-based) from which the margin stays positive to the end, and ``1`` if the
    last margin is ≤ 0 (never fitted). Ties are broken by AUM (scaled to < 1/(E + 1))."""
    m = _margins(margins)
    E = m.shape[0]
    pos = m > 0
    # number of trailing positive epochs = E − (index of the last non-positive epoch + 1)
    not_pos = ~pos
    last_bad = np.where(not_pos.any(axis=0), E - 1 - np.argmax(not_pos[::-1], axis=0), -1)
    t = (last_bad + 2).astype(np.float64)  # 1-based first epoch of the final positive run
    frac = np.where(pos[-1], t / (E + 1), 1.0)
    aum = aum_scores(m)
    r = (rankdata(aum) - 1) / max(len(aum), 1)  # in [0, 1)
    return frac + r / ((E + 1) * 1.0000001)


def rank_average(*scores: Any) -> np.ndarray:
    """Mean over the given score vectors of their normalised ranks ``rank/n`` (average ranks for ties)."""
    if not scores:
        raise ValueError("rank_average needs at least one score vector")
    arrs = [np.asarray(s, dtype=np.float64) for s in scores]
    n = arrs[0].shape
    if any(a.shape != n or a.ndim != 1 for a in arrs):
        raise ValueError(f"score vectors must be 1-D of equal length; got shapes {[a.shape for a in arrs]}")
    if any(np.isnan(a).any() for a in arrs):
        raise ValueError("scores contain NaN")
    return np.mean([rankdata(a) / a.shape[0] for a in arrs], axis=0)


def detection_quality(scores: Any, is_mislabeled: Any) -> dict[str, float | int | None]:
    """How well ``scores`` (higher = more suspicious) rank the truly mislabeled samples.

    - ``auroc``: P(score of a random mislabeled sample > that of a random clean one), ties ½
      (scikit-learn's ``roc_auc_score``); ``None`` when one group is empty;
    - ``precision_at_k``: fraction of mislabeled samples among the ``k`` highest scores,
      ``k`` = the true number of mislabeled samples (= recall at k; ties broken by sample order);
    - ``average_precision``: scikit-learn's ``average_precision_score``, the precision at each
      distinct score threshold weighted by the recall it adds (tied scores form one threshold,
      so the value does not depend on the samples' order); ``None`` when one group is empty;
    - ``n``, ``n_mislabeled``.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(is_mislabeled, dtype=bool)
    if s.shape != t.shape or s.ndim != 1:
        raise ValueError(f"scores and is_mislabeled must be 1-D of equal length; got {s.shape} and {t.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n, k = len(s), int(t.sum())
    out: dict[str, float | int | None] = {"n": n, "n_mislabeled": k}
    if k == 0 or k == n:  # both need two groups (scikit-learn would raise or warn)
        return {**out, "auroc": None, "precision_at_k": None, "average_precision": None}
    out["auroc"] = float(roc_auc_score(t, s))
    out["precision_at_k"] = float(t[np.argsort(-s, kind="stable")[:k]].mean())
    out["average_precision"] = float(average_precision_score(t, s))
    return out
