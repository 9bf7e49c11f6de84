"""Label-noise aware metrics: memorization and dilation (paper-notes §3, §4).

With given (possibly noisy) labels y and clean labels y*, a sample is *mislabeled*
when y ≠ y*. Clean centroids are the means of the correctly labelled samples:
``ν_c = mean{h_i : y*_i = c, y_i = c}`` (as the official M-D code; pass 1).

Second pass (needs ν):
- memorization ``M = mean_{i mislabeled} ‖h_i − ν_{y*_i}‖`` — how far the network
  moved mislabeled samples from where their true class lives;
- dilation ``D = mean_{i clean} ‖h_i − ν_{y_i}‖`` — how spread the clean classes
  are; ``dilation_std`` is the standard deviation of those distances (the
  quantity the official code logs);
- both ``*_normalized`` by ``mean_{c<c'} ‖ν_c − ν_{c'}‖`` so that losses with
  different feature scales compare;
- noisy-centroid projection: for mislabeled samples of true class c given label
  c', ``t_i = ⟨h_i − ν_c, ν_{c'} − ν_c⟩ / ‖ν_{c'} − ν_c‖²`` (0 = at the true
  centroid, 1 = at the given label's centroid). Its group mean is exactly the
  projection of the group's centroid used by the official code (t is affine in
  h), so it streams.
"""

from __future__ import annotations

import torch


class NoiseState:
    def __init__(self, num_classes: int, centroids: torch.Tensor) -> None:
        C = num_classes
        f64 = dict(dtype=torch.float64, device=centroids.device)
        self.C = C
        self.centroids = centroids
        self.mem_n = torch.zeros(C, **f64)
        self.mem_s = torch.zeros(C, **f64)
        self.mem_ss = torch.zeros(C, **f64)
        self.dil_n = torch.zeros(C, **f64)
        self.dil_s = torch.zeros(C, **f64)
        self.dil_ss = torch.zeros(C, **f64)
        self.proj_s = torch.zeros(C, C, **f64)
        self.proj_n = torch.zeros(C, C, **f64)

    def update(self, x: torch.Tensor, y: torch.Tensor, y_clean: torch.Tensor, dist: torch.Tensor) -> None:
        """Fold in a batch, given each sample's distance ``dist`` to the clean centroid of its
        true class (the accumulator forms it from the within-class deviations)."""
        noisy = y != y_clean
        clean = ~noisy
        _chan_add(self.mem_n, self.mem_s, self.mem_ss, y_clean[noisy], dist[noisy])
        _chan_add(self.dil_n, self.dil_s, self.dil_ss, y[clean], dist[clean])
        if bool(noisy.any()):
            src, dst = y_clean[noisy], y[noisy]
            direction = self.centroids[dst] - self.centroids[src]
            denom = (direction * direction).sum(dim=1)
            t = ((x[noisy] - self.centroids[src]) * direction).sum(dim=1) / denom.clamp_min(1e-300)
            flat = src * self.C + dst
            self.proj_s.view(-1).index_add_(0, flat, t)
            self.proj_n.view(-1).index_add_(0, flat, torch.ones_like(t))

    def merge(self, other: "NoiseState") -> None:
        for pre in ("mem", "dil"):
            n, s, m2 = (getattr(self, f"{pre}_{x}") for x in ("n", "s", "ss"))
            on, os_, om2 = (getattr(other, f"{pre}_{x}") for x in ("n", "s", "ss"))
            both = (n > 0) & (on > 0)
            delta = torch.where(both, s / n.clamp_min(1.0) - os_ / on.clamp_min(1.0), torch.zeros_like(s))
            m2 += om2 + torch.where(both, n * on / (n + on).clamp_min(1.0), torch.zeros_like(s)) * delta * delta
            n += on
            s += os_
        self.proj_s.add_(other.proj_s)
        self.proj_n.add_(other.proj_n)


def _chan_add(n: torch.Tensor, s: torch.Tensor, m2: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Per-class count / sum / sum of squared deviations of scalars ``v`` (class ``k``),
    merged with Chan's formula so a near-constant distance has a std of 0, not √eps."""
    C = n.shape[0]
    m = torch.bincount(k, minlength=C).to(n.dtype)
    bs = torch.zeros_like(s).index_add_(0, k, v)
    bmean = bs / m.clamp_min(1.0)
    bm2 = torch.zeros_like(m2).index_add_(0, k, (v - bmean[k]) ** 2)
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


def mean_centroid_distance(centroids: torch.Tensor) -> float:
    C = centroids.shape[0]
    iu = torch.triu_indices(C, C, offset=1, device=centroids.device)
    return float(torch.linalg.vector_norm(centroids[iu[0]] - centroids[iu[1]], dim=1).mean())


def noise_metrics(state: NoiseState, *, ddof: int) -> dict:
    mem, mem_std = _mean_std(state.mem_n, state.mem_s, state.mem_ss, ddof)
    dil, dil_std = _mean_std(state.dil_n, state.dil_s, state.dil_ss, ddof)
    scale = mean_centroid_distance(state.centroids)

    def per_class(n, s):
        return [float(a / b) if b > 0 else None for a, b in zip(s.tolist(), n.tolist())]

    def norm(v):
        return None if v is None or scale == 0 else v / scale

    pn, ps = state.proj_n, state.proj_s
    pairs = [[float(ps[i, j] / pn[i, j]) if pn[i, j] > 0 else None for j in range(state.C)] for i in range(state.C)]
    total = float(pn.sum())
    return {
        "memorization": mem,
        "memorization_std": mem_std,
        "memorization_normalized": norm(mem),
        "dilation": dil,
        "dilation_std": dil_std,
        "dilation_normalized": norm(dil),
        "clean_centroid_distance": scale,
        "noisy_centroid_projection": float(ps.sum()) / total if total else None,
        "memorization_per_class": per_class(state.mem_n, state.mem_s),
        "dilation_per_class": per_class(state.dil_n, state.dil_s),
        "noisy_centroid_projection_pairs": pairs,
    }
