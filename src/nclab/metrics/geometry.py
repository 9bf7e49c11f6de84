"""NC2 (equinorm, equiangularity, frame errors), NC3 (self-duality) and NC4's bias term.

Pure functions of the class means (C×d), the global mean and the classifier.
Frames (unit Frobenius norm targets):

- simplex ETF Gram: ``E = (I − 11ᵀ/C) / sqrt(C − 1)``;
- orthogonal frame Gram: ``I / sqrt(C)`` — what the *uncentred* means of
  non-negative features collapse to (docs/method.md, section 2).

For C = 2 the centred means are always opposite, so angle metrics carry no
information there.
"""

from __future__ import annotations

import math

import torch


def etf_gram(C: int, *, device=None) -> torch.Tensor:
    eye = torch.eye(C, dtype=torch.float64, device=device)
    return (eye - 1.0 / C) / math.sqrt(C - 1)


def _normed(G: torch.Tensor) -> torch.Tensor | None:
    nrm = torch.linalg.matrix_norm(G)
    return None if float(nrm) == 0.0 else G / nrm


def etf_error(G: torch.Tensor) -> float | None:
    """``‖G/‖G‖_F − (I − 11ᵀ/C)/sqrt(C−1)‖_F`` for a C×C Gram matrix."""
    Gn = _normed(G)
    if Gn is None:
        return None
    return float(torch.linalg.matrix_norm(Gn - etf_gram(G.shape[0], device=G.device)))


def orthogonal_error(G: torch.Tensor) -> float | None:
    """``‖G/‖G‖_F − I/sqrt(C)‖_F`` for a C×C Gram matrix."""
    Gn = _normed(G)
    if Gn is None:
        return None
    C = G.shape[0]
    eye = torch.eye(C, dtype=torch.float64, device=G.device) / math.sqrt(C)
    return float(torch.linalg.matrix_norm(Gn - eye))


def coefficient_of_variation(v: torch.Tensor, *, ddof: int) -> float | None:
    """``std(v, ddof) / mean(v)``; None when the mean is 0."""
    mean = float(v.mean())
    if mean == 0.0:
        return None
    return float(torch.std(v, correction=ddof)) / mean


def cosine_stats(X: torch.Tensor, *, ddof: int) -> tuple[float | None, float | None]:
    """Equiangularity of the rows of X (C×d).

    Returns ``(mean_{c≠c'} |cos(x_c, x_c') + 1/(C−1)|, std_{c≠c'} cos(x_c, x_c'))``;
    None when a row is zero.
    """
    C = X.shape[0]
    norms = torch.linalg.vector_norm(X, dim=1)
    if bool((norms == 0).any()):
        return None, None
    Xn = X / norms[:, None]
    cos = Xn @ Xn.T
    off = cos[~torch.eye(C, dtype=torch.bool, device=X.device)]
    shift = float((off + 1.0 / (C - 1)).abs().mean())
    spread = float(torch.std(off, correction=ddof)) if off.numel() > ddof else 0.0
    return shift, spread


def nc3_papyan(W: torch.Tensor, centred: torch.Tensor) -> float | None:
    """Papyan et al. (2020): ``‖Wᵀ/‖W‖_F − M̃/‖M̃‖_F‖_F²`` (M̃ = centred means as columns)."""
    nw, nm = torch.linalg.matrix_norm(W), torch.linalg.matrix_norm(centred)
    if float(nw) == 0.0 or float(nm) == 0.0:
        return None
    return float(torch.linalg.matrix_norm(W / nw - centred / nm) ** 2)


def nc3_zhu(W: torch.Tensor, centred: torch.Tensor) -> float | None:
    """Zhu et al. (2021): ``‖W M̃/‖W M̃‖_F − (I − 11ᵀ/C)/sqrt(C−1)‖_F`` (C×C product)."""
    return etf_error(W @ centred.T)


def bias_norm(W: torch.Tensor, global_mean: torch.Tensor, bias: torch.Tensor | None, *, sign: int) -> float:
    """NC4's bias term ``‖W μ_G + sign·b‖`` (b = 0 when the classifier has none)."""
    v = W @ global_mean
    if bias is not None:
        v = v + sign * bias
    return float(torch.linalg.vector_norm(v))
