"""Within-class variability (NC1, CDNV) from streamed class moments.

State (float64, on the input's device), merged across batches with Chan et al.'s
parallel formula, so any batch partition gives the same numbers up to rounding:

- ``count[c]``, ``sum[c]`` (C×d): class sizes and feature sums;
- ``m2[c]``: per-class sum of squared deviations ``Σ_{i∈c} ‖h_i − μ_c‖²``;
- ``scatter`` (d×d, only with ``full_scatter``): pooled within-class scatter
  ``S_W = Σ_c Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ``.

Merging a batch with per-class count m, mean b and scatter S_B into state with
count n and mean μ (Chan, Golub & LeVeque 1979):
``S ← S + S_B + Σ_c n_c m_c/(n_c + m_c) (μ_c − b_c)(μ_c − b_c)ᵀ``.

NC1 needs ``Σ_W = S_W / n`` only inside the span of the centred class means,
so it can instead be computed exactly from a *projected* second pass
(``ProjectedScatter``): ``P = Qᵀ Σ_W Q`` with Q the left singular vectors of
the centred means, at O(b·d·C) per batch instead of O(b·d²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EPS64 = float(torch.finfo(torch.float64).eps)


class ClassMoments:
    """Streamed per-class count / sum / M2 (and optionally the pooled d×d scatter)."""

    def __init__(self, num_classes: int, *, full_scatter: bool, track_m2: bool = True) -> None:
        self.num_classes = num_classes
        self.full_scatter = full_scatter
        # Without the scatter, M2 can come exactly from a second pass (ProjectedScatter):
        # then pass 1 is only counts and sums.
        self.track_m2 = track_m2 or full_scatter
        self.count: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.scatter: torch.Tensor | None = None

    @property
    def dim(self) -> int | None:
        return None if self.sum is None else self.sum.shape[1]

    @property
    def n(self) -> int:
        return 0 if self.count is None else int(self.count.sum())

    def _init(self, dim: int, device: torch.device) -> None:
        C = self.num_classes
        f64 = dict(dtype=torch.float64, device=device)
        self.count = torch.zeros(C, **f64)
        self.sum = torch.zeros(C, dim, **f64)
        self.m2 = torch.zeros(C, **f64)
        if self.full_scatter:
            self.scatter = torch.zeros(dim, dim, **f64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Fold in a batch ``x`` (b×d float64) with labels ``y`` (b, int64)."""
        if self.count is None:
            self._init(x.shape[1], x.device)
        C = self.num_classes
        m = torch.bincount(y, minlength=C).to(torch.float64)
        bsum = torch.zeros(C, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, y, x)
        if not self.track_m2:
            self.count += m
            self.sum += bsum
            return
        bmean = bsum / m.clamp_min(1.0)[:, None]
        xc = x - bmean[y]
        bm2 = torch.zeros(C, dtype=torch.float64, device=x.device).index_add_(0, y, (xc * xc).sum(dim=1))
        self._combine(m, bsum, bm2, xc.T @ xc if self.full_scatter else None)

    def _combine(self, m, bsum, bm2, bscatter) -> None:
        n = self.count
        both = (n > 0) & (m > 0)
        # Chan's correction, only for classes present on both sides.
        w = torch.where(both, n * m / (n + m).clamp_min(1.0), torch.zeros_like(n))
        delta = torch.where(
            both[:, None], self.sum / n.clamp_min(1.0)[:, None] - bsum / m.clamp_min(1.0)[:, None], 0.0
        )
        self.m2 += bm2 + w * (delta * delta).sum(dim=1)
        if self.full_scatter:
            self.scatter += bscatter + (delta * w[:, None]).T @ delta
        self.count += m
        self.sum += bsum

    def merge(self, other: "ClassMoments") -> None:
        if other.count is None:
            return
        if self.count is None:
            self._init(other.dim, other.sum.device)
        if other.dim != self.dim:
            raise ValueError(f"cannot merge states of dimension {self.dim} and {other.dim}")
        if self.full_scatter != other.full_scatter or self.track_m2 != other.track_m2:
            raise ValueError("cannot merge a full-scatter state with a projected one")
        if not self.track_m2:
            self.count += other.count
            self.sum += other.sum
            return
        self._combine(other.count.clone(), other.sum.clone(), other.m2.clone(), other.scatter)

    def means(self) -> torch.Tensor:
        return self.sum / self.count.clamp_min(1.0)[:, None]


class ProjectedScatter:
    """Second-pass accumulator of ``Qᵀ S_W Q`` and of the per-class M2, given the final
    class means and the basis Q (d×k). Deviations ``h_i − μ_{y_i}`` are formed directly
    in float64 (no ``E[hhᵀ] − μμᵀ`` cancellation)."""

    def __init__(self, means: torch.Tensor, basis: torch.Tensor) -> None:
        self.means = means
        self.basis = basis
        self.gram = torch.zeros(basis.shape[1], basis.shape[1], dtype=torch.float64, device=basis.device)
        self.m2 = torch.zeros(means.shape[0], dtype=torch.float64, device=basis.device)
        self.n = 0

    def add(self, z: torch.Tensor, rr: torch.Tensor, y: torch.Tensor) -> None:
        """Fold in projected deviations ``z = (h − μ_y) Q`` and squared norms ``‖h − μ_y‖²``."""
        self.gram += z.T @ z
        self.m2.index_add_(0, y, rr)
        self.n += z.shape[0]

    def merge(self, other: "ProjectedScatter") -> None:
        self.gram += other.gram
        self.m2 += other.m2
        self.n += other.n


@dataclass(frozen=True)
class Spectrum:
    """Thin SVD of the centred means ``M̃ = U S Vᵀ`` (d×C), with the ranks used."""

    U: torch.Tensor  # d×k, k = min(d, C)
    s: torch.Tensor  # k
    rank: int  # rank used by NC1: min(C-1, numerical rank)
    pinv_rank: int  # eigenvalues of Σ_B kept by the pinv cutoff
    tol: float = 0.0  # singular-value cut-off behind ``rank``
    eps: float = EPS64  # unit round-off of the input the means came from


def input_eps(*dtypes: torch.dtype | None) -> float:
    """The unit round-off that limits a computation on inputs of these dtypes: the largest
    ``finfo(dtype).eps`` among them (float64 when none is given). Means of float32 data are
    accumulated in float64, but the data only resolve ~1e-7 relative, so a rank decided at
    float64 precision counts float32 rounding noise as signal."""
    eps = [float(torch.finfo(t).eps) for t in dtypes if t is not None and t.is_floating_point]
    return max(eps) if eps else EPS64


def numerical_rank_tol(s_max: float, *, shape: tuple[int, int], eps: float, scale: float = 0.0) -> float:
    """The singular-value cut-off shared by every NC1 form (features, logits, pinv, SVD).

    ``tol = eps · (max(d, C) · s_max + √C · scale)`` — numpy's ``matrix_rank`` rule at the
    precision of the *input* (``eps`` from :func:`input_eps`), plus the rounding floor of the
    means themselves: each row of the C×d matrix of centred means can carry a rounding error
    of ``eps · ‖μ_c‖`` however it was averaged, which ``scale = max_c ‖μ_c‖`` (the uncentred
    means) bounds; their spectral norm is at most ``√C`` times that.
    """
    d, C = shape
    return eps * (max(d, C) * s_max + math.sqrt(C) * scale)


def centred_spectrum(centred: torch.Tensor, *, eps: float = EPS64, scale: float = 0.0) -> Spectrum:
    """SVD of the centred class means (rows of ``centred`` are μ_c − μ_G).

    The numerical rank counts singular values above :func:`numerical_rank_tol` (``eps`` is the
    input's precision, ``scale`` the largest uncentred class-mean norm); NC1 uses at most C−1
    of them: Σ_B has rank ≤ C−1 for either global mean, since ``Σ_c w_c (μ_c − μ_G) = 0``
    with ``w_c = n_c`` (sample-weighted μ_G) or ``w_c = 1``. ``pinv_rank`` is the
    ``pinv(Σ_B, hermitian=True)`` rule at the same precision: eigenvalue ``λ_j = s_j²/C``
    kept iff ``λ_j > λ_max · max(d, C) · eps`` and ``s_j`` above the shared cut-off
    (for float64 input and d ≥ C this is torch's default ``pinv`` cut-off).
    """
    C, d = centred.shape
    U, s, _ = torch.linalg.svd(centred.T, full_matrices=False)
    smax = float(s[0]) if s.numel() else 0.0
    if smax == 0.0:
        return Spectrum(U, s, 0, 0, 0.0, eps)
    tol = numerical_rank_tol(smax, shape=(d, C), eps=eps, scale=scale)
    numerical = int((s > tol).sum())
    pinv_rank = int(((s * s > smax * smax * max(d, C) * eps) & (s > tol)).sum())
    return Spectrum(U, s, min(C - 1, numerical), pinv_rank, tol, eps)


def nc1_from_projection(P: torch.Tensor, spec: Spectrum, *, num_classes: int, divide: bool, pinv: bool) -> float:
    """``tr(Σ_W Σ_B⁺)`` (÷C if ``divide``) from ``P = Uᵀ Σ_W U`` and the spectrum of M̃.

    With ``Σ_B = M̃ᵀM̃/C`` (here M̃ is C×d), ``Σ_B⁺ = C Σ_j u_j u_jᵀ / s_j²`` over the kept
    directions, so ``tr(Σ_W Σ_B⁺)/C = Σ_j u_jᵀ Σ_W u_j / s_j²``. Every term is ≥ 0, so
    NC1 can never come out negative.
    """
    k = spec.pinv_rank if pinv else spec.rank
    if k == 0:
        return math.inf
    val = float((torch.diagonal(P)[:k] / spec.s[:k] ** 2).sum())
    return val if divide else val * num_classes


def cdnv(means: torch.Tensor, var: torch.Tensor) -> float:
    """Class-distance normalized variance (Galanti et al. 2022), averaged over class pairs.

    ``CDNV = mean_{c<c'} (σ_c² + σ_{c'}²) / (2 ‖μ_c − μ_{c'}‖²)`` with
    ``σ_c² = Σ_{i∈c} ‖h_i − μ_c‖² / (n_c − ddof)``.
    """
    C = means.shape[0]
    iu = torch.triu_indices(C, C, offset=1, device=means.device)
    d2 = ((means[iu[0]] - means[iu[1]]) ** 2).sum(dim=1)
    num = var[iu[0]] + var[iu[1]]
    if bool((d2 == 0).any()):
        return math.inf
    return float((num / (2.0 * d2)).mean())
