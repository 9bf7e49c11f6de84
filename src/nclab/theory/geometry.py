"""Geometric descriptors of a (W, H) solution of the theory models.

Small and exact for the float64, fully collapsed solutions the solvers produce; the
empirical metrics of trained networks live in ``nclab.metrics``. Conventions:

- class means ``mu_c`` (uncentred), global mean ``mu_G`` = mean of class means (balanced);
- ``orthogonal_frame_error = || G/||G||_F - I/sqrt(N) ||_F`` with ``G = M^T M`` the Gram
  matrix of the *uncentred* means (0 iff pairwise orthogonal with equal norms);
- ``etf_error_means = || Gc/||Gc||_F - P/sqrt(N-1) ||_F`` with ``Gc`` the Gram matrix of the
  *centred* means and ``P = I - 11^T/N`` (0 iff a simplex ETF; Zhu et al. 2021 NC2);
- ``etf_error_weights``: the same on ``W W^T`` (rows of W as vectors);
- ``self_duality_error = || W/||W||_F - Mc^T/||Mc||_F ||_F`` (Papyan et al. 2020 NC3,
  not squared) with ``Mc`` the d x N matrix of centred means;
- ``nc1 = tr(Sigma_W Sigma_B^+)/N`` computed on the rank-(N-1) thin SVD of the centred means
  (no pinv cutoff), and ``within_class_variability = tr(Sigma_W)/tr(Sigma_B)``;
- margins ``z_y - max_{k != y} z_k`` per sample: mean and minimum.
"""

from __future__ import annotations

import numpy as np


def _frame_error(gram: np.ndarray, target: np.ndarray) -> float:
    norm = np.linalg.norm(gram)
    if norm == 0.0:
        return float("nan")  # a zero configuration has no shape
    return float(np.linalg.norm(gram / norm - target / np.linalg.norm(target)))


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class means as columns: ``(d, N)``; ``features`` is ``(n, d)``."""
    d = features.shape[1]
    means = np.zeros((d, num_classes))
    for c in range(num_classes):
        sel = labels == c
        if not sel.any():
            raise ValueError(f"class {c} has no samples")
        means[:, c] = features[sel].mean(axis=0)
    return means


def orthogonal_frame_error(means: np.ndarray) -> float:
    """``|| G/||G||_F - I/sqrt(N) ||_F`` for the uncentred means (columns of ``means``)."""
    n = means.shape[1]
    return _frame_error(means.T @ means, np.eye(n))


def etf_error(vectors: np.ndarray) -> float:
    """``|| G/||G||_F - P/sqrt(N-1) ||_F`` for the N columns of ``vectors`` (Gram ``G``)."""
    n = vectors.shape[1]
    if n < 2:
        raise ValueError("a simplex ETF needs at least 2 vectors")
    return _frame_error(vectors.T @ vectors, np.eye(n) - 1.0 / n)


def structure(
    features: np.ndarray,
    labels: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
) -> dict[str, float]:
    """Structure metrics of a solution (see module docstring). ``features`` (n, d), ``weight`` (N, d)."""
    features = np.asarray(features, dtype=np.float64)
    weight = np.asarray(weight, dtype=np.float64)
    labels = np.asarray(labels)
    num_classes = weight.shape[0]
    means = class_means(features, labels, num_classes)
    centred = means - means.mean(axis=1, keepdims=True)
    resid = features - means[:, labels].T
    tr_w = float((resid**2).sum() / len(labels))
    tr_b = float((centred**2).sum() / num_classes)
    # NC1 on the rank-(N-1) thin SVD of the centred means: sum_j u_j^T Sigma_W u_j / s_j^2,
    # with Sigma_B = Mc Mc^T / N, so its eigenvalues are s_j^2 / N.
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    keep = s > s.max() * 1e-12 if s.size and s.max() > 0 else np.zeros_like(s, dtype=bool)
    proj = resid @ u[:, keep]
    nc1 = float(((proj**2).mean(axis=0) / (s[keep] ** 2 / num_classes)).sum() / num_classes) if keep.any() else float("nan")
    logits = features @ weight.T + (0.0 if bias is None else bias)
    true = logits[np.arange(len(labels)), labels]
    other = logits.copy()
    other[np.arange(len(labels)), labels] = -np.inf
    margins = true - other.max(axis=1)
    wn = np.linalg.norm(weight)
    mn = np.linalg.norm(centred)
    self_dual = float(np.linalg.norm(weight / wn - centred.T / mn)) if wn > 0 and mn > 0 else float("nan")
    return {
        "nc1": nc1,
        "within_class_variability": tr_w / tr_b if tr_b > 0 else float("nan"),
        "orthogonal_frame_error": orthogonal_frame_error(means),
        "etf_error_means": etf_error(centred),
        "etf_error_weights": etf_error(weight.T),
        "self_duality_error": self_dual,
        "margin_mean": float(margins.mean()),
        "margin_min": float(margins.min()),
        "accuracy": float((margins > 0).mean()),
    }
