"""cleanlab-shaped entry points: label-quality scores and a flagged set of label issues.

:func:`get_label_quality_scores` and :func:`find_label_issues` follow the
conventions of ``cleanlab.rank.get_label_quality_scores`` and
``cleanlab.filter.find_label_issues``:

* ``labels`` (the given, possibly noisy, integer labels, length n) and
  ``pred_probs`` are the two positional arguments, ``f(labels, pred_probs)``;
  every other argument is keyword-only;
* quality scores lie in [0, 1] and **lower** means more likely mislabeled;
* ``find_label_issues`` returns a boolean mask of length n (True = flagged),
  or — with ``return_indices_ranked_by=METHOD`` — the indices of the flagged
  samples only, most likely issue first (ascending quality by METHOD, ties by
  index).

Unlike cleanlab, the evidence need not be predicted probabilities. Three kinds
are accepted; given one kind, the default method follows from it. Given more than
one kind, name the rule (``method=`` for scores, ``filter_by=`` for flagged sets):
nclab does not pick one by which arrays were passed, and says so in a one-line error.

``margins`` (E×n, or n): per-epoch logit margins ``m_{e,i} = z_{y_i} − max_{j≠y_i} z_j``
    as recorded by the trainer (:mod:`nclab.store.dynamics`;
    :func:`nclab.store.dynamics.load_dynamics`). Methods ``aum`` (quality
    ``σ(AUM_i)`` with ``AUM_i = mean_e m_{e,i}``, the area under the margin of
    Pleiss et al. 2020; for two classes σ(margin) is the softmax probability of
    the given label) and ``fit_epoch`` (``1 −`` :func:`~nclab.detect.scores.fit_epoch_scores`).
``pred_probs`` (n×K): predicted class probabilities, ideally out-of-sample.
    Methods ``self_confidence`` (``p_{i,y_i}``), ``normalized_margin``
    (``(p_{i,y_i} − max_{j≠y_i} p_{i,j} + 1) / 2``) and ``confidence_weighted_entropy``
    (``r_i = H(p_i)/log K / max(p_{i,y_i}, 10⁻⁶)``, the normalised entropy over the
    self-confidence, mapped to ``log(1 + r_i) / max(r_i, 10⁻⁶)``), the same formulas as
    cleanlab's methods of these names.
``features`` (n×d): penultimate features of a trained model. Methods
    ``centroid_ratio`` (quality ``1 / (1 + r_i)``, ``r_i = ‖h_i − μ_{y_i}‖ /
    min_{c≠y_i} ‖h_i − μ_c‖``) and ``knn`` (``1 −`` the fraction of the ``k``
    nearest neighbours with another given label, ties broken by the ratio).
``combined`` (features and margins): ``1 −`` the rank average of centroid ratio,
    kNN disagreement and negated AUM (see :func:`~nclab.detect.scores.rank_average`).

Flagged sets (``filter_by``), each with a stated rule rather than a top-k cut:

``aum`` (margins). The threshold-sample rule of Pleiss et al. (2020): flag
    ``AUM_i ≤ τ`` where ``τ`` is the ``threshold_percentile`` (99th) percentile
    of the AUMs of *threshold samples* — samples deliberately relabelled to an
    extra, fake class during training, whose AUM shows how a surely-mislabeled
    sample behaves — given as ``threshold_margins`` (E×m). Without threshold
    samples ``τ = 0`` and the rule is ``AUM_i < 0``: over the recorded epochs
    the given label lost, on average, to the best other class.
``prune_by_noise_rate`` / ``prune_by_class`` / ``both`` / ``confident_learning``
    / ``predicted_neq_given`` (pred_probs). Confident learning (Northcutt et
    al. 2021), re-implemented here: per-class thresholds ``t_j = mean_{i: y_i=j}
    p_{i,j}``; sample i's confident label is ``argmax_{j: p_{i,j} ≥ t_j} p_{i,j}``
    (none when no class passes); the confident joint ``C[y, y*]`` counts them;
    each row is rescaled to the number of samples with that given label,
    ``Ĉ[i, j] = C[i, j] · n_i / Σ_j C[i, j]``. Then

    * ``confident_learning``: flag samples whose confident label differs from the given one;
    * ``prune_by_noise_rate`` (cleanlab's default): for each off-diagonal cell
      (i, j), flag the ``round(frac_noise · Ĉ[i, j])`` samples with given label i
      and the largest ``p_j − p_i``;
    * ``prune_by_class``: for each class i, flag the ``round(frac_noise · Σ_{j≠i} Ĉ[i, j])``
      samples of given label i with the lowest ``p_i``;
    * ``both``: flagged by both of the previous two;
    * ``predicted_neq_given``: ``argmax_j p_{i,j} ≠ y_i``.

    At least ``min_examples_per_class`` samples of every given label stay unflagged.
``nearest_centroid`` (features): flag ``r_i > 1`` — the sample is closer to
    another class's mean (of the given labels) than to its own label's mean.

``filter_by="auto"`` (default) picks ``aum``, ``prune_by_noise_rate`` or
``nearest_centroid`` when exactly one kind of evidence is given; with more than one
kind it is an error (name the rule).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import xlogy

from nclab.detect.scores import (
    aum_scores,
    centroid_ratio_scores,
    fit_epoch_scores,
    knn_disagreement_scores,
    rank_average,
)

__all__ = ["QUALITY_METHODS", "FILTERS", "find_label_issues", "get_label_quality_scores", "confident_joint"]

QUALITY_METHODS: dict[str, str] = {
    "aum": "margins",
    "fit_epoch": "margins",
    "self_confidence": "pred_probs",
    "normalized_margin": "pred_probs",
    "confidence_weighted_entropy": "pred_probs",
    "centroid_ratio": "features",
    "knn": "features",
    "combined": "features+margins",
}
"""Quality methods and the evidence each needs."""

_CLIP = 1e-6  # cleanlab's lower clip of self-confidence and of the entropy ratio

FILTERS: dict[str, str] = {
    "aum": "margins",
    "prune_by_noise_rate": "pred_probs",
    "prune_by_class": "pred_probs",
    "both": "pred_probs",
    "confident_learning": "pred_probs",
    "predicted_neq_given": "pred_probs",
    "nearest_centroid": "features",
}
"""``filter_by`` rules and the evidence each needs."""


# ----------------------------------------------------------------------------- inputs
def _labels(labels: Any) -> np.ndarray:
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be a 1-D vector of class ids; got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and y.size and np.all(np.mod(y, 1) == 0):
            y = y.astype(np.int64)  # 0./1. float labels, as cleanlab accepts them
        else:
            raise TypeError(f"labels must be integer class ids; got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be >= 0; found {y.min()}")
    return y.astype(np.int64)


def _pred_probs(pred_probs: Any, n: int, labels: np.ndarray) -> np.ndarray:
    p = np.asarray(pred_probs.detach().cpu() if hasattr(pred_probs, "detach") else pred_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n or p.shape[1] < 2:
        raise ValueError(f"pred_probs must be n×K with n = {n} (the number of labels) and K >= 2; got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("pred_probs must be finite and non-negative")
    if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("pred_probs rows must sum to 1 (pass softmax probabilities, not logits)")
    if labels.size and labels.max() >= p.shape[1]:
        raise ValueError(f"labels go up to {labels.max()} but pred_probs has only {p.shape[1]} columns")
    return p


def _margins(margins: Any, n: int, name: str = "margins") -> np.ndarray:
    m = np.asarray(margins.detach().cpu() if hasattr(margins, "detach") else margins, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or (n >= 0 and m.shape[1] != n):
        want = f"E×{n} (epochs × samples) or a vector of length {n}" if n >= 0 else "E×m or a vector"
        raise ValueError(f"{name} must be {want}; got shape {np.asarray(margins).shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} contain NaN or inf")
    return m


def _evidence(labels, pred_probs, features, margins) -> tuple[np.ndarray, dict[str, Any]]:
    y = _labels(labels)
    ev: dict[str, Any] = {}
    if margins is not None:
        ev["margins"] = _margins(margins, y.shape[0])
    if pred_probs is not None:
        ev["pred_probs"] = _pred_probs(pred_probs, y.shape[0], y)
    if features is not None:
        f = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features)
        if f.ndim != 2 or f.shape[0] != y.shape[0]:
            raise ValueError(f"features must be n×d with n = {y.shape[0]} (the number of labels); got shape {f.shape}")
        ev["features"] = f
    if not ev:
        raise ValueError("pass at least one of pred_probs=, features=, margins= (the evidence to judge labels by)")
    return y, ev


_AUTO_METHOD = {"margins": "aum", "pred_probs": "self_confidence", "features": "centroid_ratio"}
_AUTO_FILTER = {"margins": "aum", "pred_probs": "prune_by_noise_rate", "features": "nearest_centroid"}


def _auto(ev: dict[str, Any], table: dict[str, str], arg: str, valid: dict[str, str]) -> str:
    """The rule implied by the one kind of evidence given; several kinds need it named."""
    if len(ev) > 1:
        given = " and ".join(f"{k}=" for k in ev)
        fits = [m for m, need in valid.items() if set(need.split("+")) <= set(ev)]
        raise ValueError(f"{given} were given together: name the rule with {arg}= (one of {', '.join(fits)})")
    return table[next(iter(ev))]


def _need(what: str, ev: dict[str, Any], name: str, kind: str) -> None:
    missing = [w for w in what.split("+") if w not in ev]
    if missing:
        raise ValueError(f"{kind} {name!r} needs {' and '.join(m + '=' for m in missing)}")


# ----------------------------------------------------------------------------- scores
def _quality(method: str, y: np.ndarray, ev: dict[str, Any], *, num_classes: int | None, k: int) -> np.ndarray:
    if method not in QUALITY_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(QUALITY_METHODS)}")
    _need(QUALITY_METHODS[method], ev, method, "method")
    if method == "aum":
        aum = ev["margins"].mean(axis=0)
        return 0.5 * (1.0 + np.tanh(0.5 * aum))  # σ(aum) without overflow
    if method == "fit_epoch":
        return 1.0 - fit_epoch_scores(ev["margins"])
    if method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        p = ev["pred_probs"]
        own = p[np.arange(y.shape[0]), y]
        if method == "self_confidence":
            return own
        if method == "confidence_weighted_entropy":
            entropy = -xlogy(p, p).sum(axis=1) / np.log(p.shape[1])  # in [0, 1]
            ratio = entropy / np.maximum(own, _CLIP)
            return np.log1p(ratio) / np.maximum(ratio, _CLIP)
        other = p.copy()
        other[np.arange(y.shape[0]), y] = -np.inf
        return (own - other.max(axis=1) + 1.0) / 2.0
    if method == "centroid_ratio":
        r = centroid_ratio_scores(ev["features"], y, num_classes=num_classes)
        return np.where(np.isfinite(r), 1.0 / (1.0 + np.where(np.isfinite(r), r, 0.0)), 0.0)
    if method == "knn":
        return np.clip(1.0 - knn_disagreement_scores(ev["features"], y, k=k, num_classes=num_classes), 0.0, 1.0)
    # combined
    return 1.0 - rank_average(
        centroid_ratio_scores(ev["features"], y, num_classes=num_classes),
        knn_disagreement_scores(ev["features"], y, k=k, num_classes=num_classes),
        aum_scores(ev["margins"]),
    )


def get_label_quality_scores(
    labels: Any,
    pred_probs: Any = None,
    *,
    features: Any = None,
    margins: Any = None,
    method: str | None = None,
    num_classes: int | None = None,
    k: int = 10,
) -> np.ndarray:
    """One label-quality score per sample, in [0, 1]; **lower = more likely mislabeled**
    (cleanlab's convention). float64 (n,).

    ``method`` (see the module docstring for the formulas): ``aum`` / ``fit_epoch``
    (margins), ``self_confidence`` / ``normalized_margin`` / ``confidence_weighted_entropy``
    (pred_probs; identical to cleanlab's), ``centroid_ratio`` / ``knn`` (features),
    ``combined`` (features and margins). Default, when one kind of evidence is given:
    ``aum`` (margins), ``self_confidence`` (pred_probs) or ``centroid_ratio`` (features);
    with several kinds ``method`` must be named. ``num_classes`` (feature methods; default
    max label + 1) and ``k`` (knn) are passed on. No clean labels are used.
    """
    y, ev = _evidence(labels, pred_probs, features, margins)
    if method is None:
        method = _auto(ev, _AUTO_METHOD, "method", QUALITY_METHODS)
    return _quality(method, y, ev, num_classes=num_classes, k=k)


# --------------------------------------------------------------- confident learning
def confident_joint(labels: Any, pred_probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The confident joint ``C`` (K×K, rows: given label, columns: confident label) and each
    sample's confident label (−1 when no class reaches its threshold). See the module
    docstring for the thresholds."""
    y = _labels(labels)
    p = _pred_probs(pred_probs, y.shape[0], y)
    return _confident_joint(y, p)


def _confident_joint(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, K = p.shape
    counts = np.bincount(y, minlength=K)
    sums = np.zeros(K)
    np.add.at(sums, y, p[np.arange(n), y])
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)  # no sample of class j: nobody is confidently j
    above = p >= t[None, :]
    masked = np.where(above, p, -np.inf)
    star = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    C = np.zeros((K, K), dtype=np.int64)
    ok = star >= 0
    np.add.at(C, (y[ok], star[ok]), 1)
    return C, star


def _calibrated(C: np.ndarray, y: np.ndarray) -> np.ndarray:
    n_i = np.bincount(y, minlength=C.shape[0]).astype(np.float64)
    rows = C.sum(axis=1).astype(np.float64)
    cal = np.where(rows[:, None] > 0, C / np.maximum(rows, 1)[:, None] * n_i[:, None], 0.0)
    # a class with samples but no confident one keeps them all on the diagonal
    cal[np.arange(C.shape[0]), np.arange(C.shape[0])] += np.where(rows > 0, 0.0, n_i)
    return cal


def _cl_filter(rule: str, y: np.ndarray, p: np.ndarray, *, frac_noise: float, min_keep: int) -> np.ndarray:
    n, K = p.shape
    mask = np.zeros(n, dtype=bool)
    if rule == "predicted_neq_given":
        return p.argmax(axis=1) != y
    C, star = _confident_joint(y, p)
    if rule == "confident_learning":
        mask = (star >= 0) & (star != y)
    else:
        cal = _calibrated(C, y)
        n_i = np.bincount(y, minlength=K)
        by_rate = np.zeros(n, dtype=bool)
        by_class = np.zeros(n, dtype=bool)
        for i in range(K):
            members = np.flatnonzero(y == i)
            if members.size == 0:
                continue
            room = max(0, int(n_i[i]) - min_keep)
            if rule in ("prune_by_noise_rate", "both"):
                for j in range(K):
                    if j == i:
                        continue
                    num = int(round(frac_noise * cal[i, j]))
                    if num <= 0:
                        continue
                    gap = p[members, j] - p[members, i]
                    order = members[np.argsort(-gap, kind="stable")]
                    by_rate[order[:num]] = True
                chosen = np.flatnonzero(by_rate[members])
                if chosen.size > room:  # keep min_keep samples of the class: unflag the weakest cases
                    own = p[members[chosen], i]
                    drop = members[chosen[np.argsort(-own, kind="stable")[: chosen.size - room]]]
                    by_rate[drop] = False
            if rule in ("prune_by_class", "both"):
                num = min(int(round(frac_noise * (cal[i].sum() - cal[i, i]))), room)
                if num > 0:
                    order = members[np.argsort(p[members, i], kind="stable")]
                    by_class[order[:num]] = True
        mask = by_rate & by_class if rule == "both" else by_rate if rule == "prune_by_noise_rate" else by_class
    return mask


def find_label_issues(
    labels: Any,
    pred_probs: Any = None,
    *,
    features: Any = None,
    margins: Any = None,
    filter_by: str = "auto",
    return_indices_ranked_by: str | None = None,
    threshold_margins: Any = None,
    threshold_percentile: float = 99.0,
    frac_noise: float = 1.0,
    min_examples_per_class: int = 1,
    num_classes: int | None = None,
    k: int = 10,
) -> np.ndarray:
    """Which samples' given labels look wrong: a boolean mask (n,), or the flagged indices
    ranked most-likely-issue first when ``return_indices_ranked_by`` names a quality method.

    ``filter_by`` chooses the rule that decides the flagged set (module docstring):
    ``aum`` (margins; with ``threshold_margins`` the threshold-sample rule
    ``AUM ≤ percentile(AUM of threshold samples, threshold_percentile)``, else
    ``AUM < 0``), the confident-learning rules ``prune_by_noise_rate``,
    ``prune_by_class``, ``both``, ``confident_learning``, ``predicted_neq_given``
    (pred_probs), ``nearest_centroid`` (features), or ``auto`` (the rule of the one kind
    of evidence given; an error when several kinds are given). ``frac_noise``
    scales the confident-learning counts (1 = the estimated number of issues) and
    ``min_examples_per_class`` of each given label always stay unflagged, as in
    cleanlab. No clean labels are used.
    """
    y, ev = _evidence(labels, pred_probs, features, margins)
    if filter_by == "auto":
        filter_by = _auto(ev, _AUTO_FILTER, "filter_by", FILTERS)
    if filter_by not in FILTERS:
        raise ValueError(f"unknown filter_by {filter_by!r}; valid: auto, {', '.join(FILTERS)}")
    _need(FILTERS[filter_by], ev, filter_by, "filter_by")
    if return_indices_ranked_by is not None and return_indices_ranked_by not in QUALITY_METHODS:
        raise ValueError(f"unknown return_indices_ranked_by {return_indices_ranked_by!r}; "
                         f"valid: None, {', '.join(QUALITY_METHODS)}")
    if not 0.0 < frac_noise <= 1.0:
        raise ValueError(f"frac_noise must lie in (0, 1]; got {frac_noise}")
    if isinstance(min_examples_per_class, bool) or int(min_examples_per_class) < 0:
        raise ValueError(f"min_examples_per_class must be >= 0; got {min_examples_per_class!r}")
    if threshold_margins is not None and filter_by != "aum":
        raise ValueError("threshold_margins are used only by filter_by='aum'")

    if filter_by == "aum":
        aum = ev["margins"].mean(axis=0)
        if threshold_margins is not None:
            if not 0.0 <= threshold_percentile <= 100.0:
                raise ValueError(f"threshold_percentile must lie in [0, 100]; got {threshold_percentile}")
            tm = _margins(threshold_margins, -1, "threshold_margins")
            if tm.shape[0] != ev["margins"].shape[0]:
                raise ValueError(f"threshold_margins cover {tm.shape[0]} epochs but margins cover {ev['margins'].shape[0]}")
            tau = float(np.percentile(tm.mean(axis=0), threshold_percentile))
            mask = aum <= tau
        else:
            mask = aum < 0.0
    elif filter_by == "nearest_centroid":
        mask = centroid_ratio_scores(ev["features"], y, num_classes=num_classes) > 1.0
    else:
        mask = _cl_filter(filter_by, y, ev["pred_probs"], frac_noise=frac_noise, min_keep=int(min_examples_per_class))
    mask = np.asarray(mask, dtype=bool)
    if return_indices_ranked_by is None:
        return mask
    q = _quality(return_indices_ranked_by, y, ev, num_classes=num_classes, k=k)
    idx = np.flatnonzero(mask)
    return idx[np.lexsort((idx, q[idx]))].astype(np.int64)

