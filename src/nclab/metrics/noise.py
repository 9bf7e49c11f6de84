"""Label-noise aware metrics: memorization, dilation, and two corruption projections.

With given (possibly noisy) labels y and clean labels y*, a sample is *mislabeled*
when y ≠ y*. Clean centroids are the means of the correctly labelled samples:
``ν_c = mean{h_i : y*_i = c, y_i = c}`` (as the official M-D code; pass 1).

Second pass (needs ν):

- memorization ``M = mean_{i mislabeled} ‖h_i − ν_{y*_i}‖`` — how far the network
  moved mislabeled samples from where their true class lives; ``memorization_std`` is
  the std of those distances pooled over all classes (ddof per convention);
- dilation ``D = mean_{i clean} ‖h_i − ν_{y_i}‖`` — how spread the clean classes are;
  ``dilation_std`` is the std of those distances **pooled over all classes** (ddof per
  convention), which also counts how far apart the classes' mean distances are;
- ``dilation_std_official`` = ``mean_c std_{ddof=0}{‖h_i − ν_c‖ : i clean, y_i = c}``,
  the per-class standard deviation averaged over classes — the official code's
  ``get_uncorrupted_stddevs`` (``np.std`` per class), then the mean over classes;
- both ``*_normalized`` by ``mean_{c<c'} ‖ν_c − ν_{c'}‖`` so that losses with
  different feature scales compare;
- noisy-centroid projection (nclab's own measure): for mislabeled samples of true
  class c given label c', ``t_i = ⟨h_i − ν_c, ν_{c'} − ν_c⟩ / ‖ν_{c'} − ν_c‖²`` (0 = at the
  true class's clean centroid, 1 = at the given class's clean centroid). t is affine in
  h, so its group mean is the projection of the group's centroid. It is **not** the
  official code's ``corruption_biases`` (different reference point, directions and
  normalisation); that one is below.

From pass 1 alone (class sums): the official ``corruption_biases`` (``get_dot_product_bias``):
for a given label c with mislabeled samples of mean m̄_c (given label c, true label ≠ c) and
the given-label class means μ, ``corruption_biases[c][k] = ⟨m̄_c − μ_c, μ_k − μ_c⟩ / ‖μ_k − μ_c‖``
for every k ≠ c (a length, unnormalised); ``None`` on the diagonal and for classes without
mislabeled samples.
"""

from __future__ import annotations

import math

import torch


class NoiseState:
    """Pass-2 state. Distances live in 2C slots: slot ``y*`` for mislabeled samples
    (memorization, by true class), slot ``C + y`` for clean ones (dilation, by class)."""

    def __init__(self, num_classes: int, centroids: torch.Tensor) -> None:
        C = num_classes
        f64 = dict(dtype=torch.float64, device=centroids.device)
        self.C = C
        self.centroids = centroids
        self.n = torch.zeros(2 * C, **f64)
        self.s = torch.zeros(2 * C, **f64)
        self.m2 = torch.zeros(2 * C, **f64)
        self.proj_s = torch.zeros(C * C, **f64)  # flat [true * C + given]
        self.proj_n = torch.zeros(C * C, **f64)

    def update(self, slot: torch.Tensor, dist: torch.Tensor, pair: torch.Tensor, t: torch.Tensor,
               noisy: torch.Tensor) -> None:
        """Fold in a batch: per-sample ``slot`` (see class doc), distance to the clean centroid of
        the true class ``dist``, flat (true, given) pair index, projection ``t`` and the
        mislabeled mask (``t`` is ignored where it is False)."""
        _chan_add(self.n, self.s, self.m2, slot, dist)
        w = noisy.to(torch.float64)
        self.proj_s += torch.bincount(pair, weights=t * w, minlength=self.C * self.C)
        self.proj_n += torch.bincount(pair, weights=w, minlength=self.C * self.C)

    def merge(self, other: "NoiseState") -> None:
        n, s, m2 = self.n, self.s, self.m2
        on, os_, om2 = other.n, other.s, other.m2
        both = (n > 0) & (on > 0)
        delta = torch.where(both, s / n.clamp_min(1.0) - os_ / on.clamp_min(1.0), torch.zeros_like(s))
        m2 += om2 + torch.where(both, n * on / (n + on).clamp_min(1.0), torch.zeros_like(s)) * delta * delta
        n += on
        s += os_
        self.proj_s.add_(other.proj_s)
        self.proj_n.add_(other.proj_n)


def _chan_add(n: torch.Tensor, s: torch.Tensor, m2: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Per-slot count / sum / sum of squared deviations of scalars ``v`` (slot ``k``),
    merged with Chan's formula so a near-constant distance has a std of 0, not √eps."""
    K = n.shape[0]
    m = torch.bincount(k, minlength=K).to(n.dtype)
    bs = torch.bincount(k, weights=v, minlength=K)
    bmean = bs / m.clamp_min(1.0)
    bm2 = torch.bincount(k, weights=(v - bmean[k]).square_(), minlength=K)
    both = (n > 0) & (m > 0)
    delta = torch.where(both, s / n.clamp_min(1.0) - bmean, torch.zeros_like(s))
    m2 += bm2 + torch.where(both, n * m / (n + m).clamp_min(1.0), torch.zeros_like(s)) * delta * delta
    n += m
    s += bs


def _mean_std(n: torch.Tensor, s: torch.Tensor, m2: torch.Tensor, ddof: int) -> tuple[float | None, float | None]:
    """Pooled mean and std over classes from per-class (count, sum, M2)."""
    N = float(n.sum())
    if N == 0:
        return None, None
    mean = float(s.sum()) / N
    nz = n > 0
    # total M2 = within-class M2 + between-class part
    total = float(m2.sum()) + float((n[nz] * (s[nz] / n[nz] - mean) ** 2).sum())
    if N - ddof <= 0:
        return mean, 0.0
    return mean, (max(total, 0.0) / (N - ddof)) ** 0.5


def _mean_of_class_stds(n: torch.Tensor, m2: torch.Tensor) -> float | None:
    """``mean_c sqrt(M2_c / n_c)`` over classes with samples (np.std per class, ddof 0)."""
    nz = n > 0
    if not bool(nz.any()):
        return None
    return float((m2[nz].clamp_min(0.0) / n[nz]).sqrt().mean())


def mean_centroid_distance(centroids: torch.Tensor) -> float:
    C = centroids.shape[0]
    iu = torch.triu_indices(C, C, offset=1, device=centroids.device)
    return float(torch.linalg.vector_norm(centroids[iu[0]] - centroids[iu[1]], dim=1).mean())


def corruption_biases(means: torch.Tensor, noisy_sum: torch.Tensor, noisy_count: torch.Tensor) -> list:
    """The official ``corruption_biases`` (C×C list; see the module docstring) from the given-label
    class means and the per-given-label sums and counts of mislabeled samples."""
    C = means.shape[0]
    out: list[list[float | None]] = []
    diff = means[None, :, :] - means[:, None, :]  # [c, k] = μ_k − μ_c
    norm = torch.linalg.vector_norm(diff, dim=2)
    for c in range(C):
        cnt = float(noisy_count[c])
        if cnt == 0:
            out.append([None] * C)
            continue
        dev = noisy_sum[c] / cnt - means[c]
        row = (diff[c] @ dev) / norm[c]
        out.append([None if k == c or float(norm[c, k]) == 0 else float(row[k]) for k in range(C)])
    return out


def noise_metrics(state: NoiseState, *, ddof: int) -> dict:
    C = state.C
    mem_n, mem_s, mem_m2 = state.n[:C], state.s[:C], state.m2[:C]
    dil_n, dil_s, dil_m2 = state.n[C:], state.s[C:], state.m2[C:]
    mem, mem_std = _mean_std(mem_n, mem_s, mem_m2, ddof)
    dil, dil_std = _mean_std(dil_n, dil_s, dil_m2, ddof)
    scale = mean_centroid_distance(state.centroids)

    def per_class(n, s):
        return [float(a / b) if b > 0 else None for a, b in zip(s.tolist(), n.tolist())]

    def norm(v):
        return None if v is None or scale == 0 else v / scale

    pn, ps = state.proj_n.view(C, C), state.proj_s.view(C, C)
    pairs = [[float(ps[i, j] / pn[i, j]) if pn[i, j] > 0 else None for j in range(C)] for i in range(C)]
    total = float(pn.sum())
    return {
        "memorization": mem,
        "memorization_std": mem_std,
        "memorization_normalized": norm(mem),
        "dilation": dil,
        "dilation_std": dil_std,
        "dilation_std_official": _mean_of_class_stds(dil_n, dil_m2),
        "dilation_normalized": norm(dil),
        "clean_centroid_distance": scale,
        "noisy_centroid_projection": float(ps.sum()) / total if total else None,
        "memorization_per_class": per_class(mem_n, mem_s),
        "dilation_per_class": per_class(dil_n, dil_s),
        "noisy_centroid_projection_pairs": pairs,
    }


def mean_or_none(rows: list) -> float | None:
    """Mean of the non-None entries of a nested list (None when there are none)."""
    vals = [v for row in rows for v in row if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None
