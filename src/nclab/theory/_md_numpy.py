"""Analytic float64 numpy objective and gradient of the M-D model (``nclab.theory.md_model``).

The M-D problems are tiny (N = 2: ~13 parameters), so torch autograd's per-op overhead
(~1 ms per objective + gradient) dominated the solve. This module computes exactly the same
objective as the torch reference in ``md_model._torch_parts`` with a hand-written backward
pass (~30 numpy calls). Parameter layout, flat ``x`` (every block but W and b is >= 0)::

    [ W (N*d) | b (N, only with bias) | g (N*d) | e (N(N-1)*d, only for eta > 0) | s ]

Forward (``P = N(N-1)`` noisy pairs ordered (c, c') with c' != c, so pair p's source class
is ``p // (N-1)``; ``1`` is the all-ones d-vector)::

    delta = e - g[src];  M = sqrt(mean_p ||delta_p||^2 + 1e-300)
    r = lambda M + s   (constraint "hard")      or      r = s   (constraint "soft")
    h = g + r 1;  f = e + r 1            (positivity: h_c - r e_j >= 0 and f >= 0 always)
    clean logits of class c, point j:  z_c + r S_j,  z_c = W h_c + b,  S = [W^T; -W^T]  (2d x N)
    obj = (1-eta) clean + eta noisy + (lambda_W/2)||W||^2
          + (lambda_H/2) N K [(1-eta)(mean_c ||h_c||^2 + r^2) + eta mean_p ||f_p||^2]
          + (lambda_b/2)||b||^2  [+ (mu/2) max(0, lambda M - r)^2  for "soft"]

Since ``f - h[src] = e - g[src]``, M does not depend on r, so the hard constraint is explicit.

Backward: with G = d(obj)/d(logits), ``dz_c = sum_j G_cj``, ``E = sum_c (G_c[:d] - G_c[d:])``
(the +e_j minus the -e_j points): direct parts ``dh = dz W + ...``, ``df = G_noisy W + ...``,
``dr = sum E * W^T + ...``; the shift adds ``sum(dh) + sum(df)`` to dr; then
``dg = dh``, ``de = df``, ``ds = dr``, ``dM = lambda dr`` (hard) or ``mu lambda v`` (soft,
``v = max(0, lambda M - r)``, and ``ds = dr - mu v``), ``dM/d delta_p = delta_p / (P M)``.

Loss gradients w.r.t. logits: analytic for CE and LS(alpha) (``logsumexp(z) - t.z`` with
target ``t = (1-alpha) e_y + alpha/C``, gradient ``softmax(z) - t``); any other loss of
``nclab.losses`` goes through torch autograd on the logits only (the generic path).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from nclab.theory._solver import LossChoice

# Losses whose value and logit-gradient are written out here (LS(0) is CE).
ANALYTIC_LOSSES = ("ce", "ls")
#: how the expressivity bound r >= lambda M enters: exactly (slack s >= 0) or as a penalty
CONSTRAINTS = ("hard", "soft")


class _SoftTargetLoss:
    """Mean soft-target cross-entropy ``mean_i [logsumexp(z_i) - t_i . z_i]`` and its gradient."""

    def __init__(self, labels: np.ndarray, num_classes: int, alpha: float):
        t = np.full((labels.size, num_classes), alpha / num_classes)
        t[np.arange(labels.size), labels] += 1.0 - alpha
        self.targets = t

    def __call__(self, logits: np.ndarray) -> tuple[float, np.ndarray]:
        # Per row, with m = argmax z and rest = sum_{k != m} exp(z_k - z_m) (using sum_k t_k = 1):
        #   loss = log1p(rest) - t . (z - z_m).
        # log1p and the exact 0 at m keep full relative precision when the loss is small;
        # log(sum exp) would lose ~log10(1/rest) digits, and near a minimum the solver's
        # line search needs every digit of f to reach ||pg|| <= 1e-8.
        n = logits.shape[0]
        rows = np.arange(n)
        top = logits.argmax(axis=1)
        shifted = logits - logits[rows, top][:, None]
        e = np.exp(shifted)
        e[rows, top] = 0.0
        rest = e.sum(axis=1)
        val = float((np.log1p(rest).sum() - np.vdot(self.targets, shifted)) / n)
        e[rows, top] = 1.0
        return val, (e / (1.0 + rest)[:, None] - self.targets) / n


class _TorchLoss:
    """Generic path: value and logit-gradient of any ``nclab.losses`` module via torch autograd."""

    def __init__(self, labels: np.ndarray, fn):
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.fn = fn

    def __call__(self, logits: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(np.ascontiguousarray(logits)).requires_grad_(True)
        v = self.fn(t, self.labels)
        (g,) = torch.autograd.grad(v, t)
        return float(v.detach()), g.numpy().astype(np.float64, copy=True)


class MDObjective:
    """The M-D objective (module docstring) as ``fg(x) -> (f, grad)`` and ``parts(x)``, in numpy.

    ``loss``: a resolved :class:`LossChoice`; CE/LS use the analytic path, others the torch one.
    ``constraint``: ``"hard"`` (r = lambda M + s) or ``"soft"`` (r = s, penalty ``mu/2 max(0,
    lambda M - r)^2`` with ``mu = penalty``).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        per_class: int,
        dim: int,
        eta: float,
        expressivity: float,
        lambda_w: float,
        lambda_h: float,
        bias: bool,
        lambda_b: float,
        loss: LossChoice,
        constraint: str = "hard",
        penalty: float = 0.0,
    ):
        if constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}; got {constraint!r}")
        if constraint == "soft" and not (math.isfinite(penalty) and penalty > 0):
            raise ValueError(f"penalty (mu of the soft expressivity cost) must be a finite number > 0; got {penalty}")
        self.soft, self.mu = constraint == "soft", float(penalty)
        n, d = int(num_classes), int(dim)
        self.n, self.d, self.k = n, d, int(per_class)
        self.eta, self.lam = float(eta), float(expressivity)
        self.lambda_w, self.lambda_h, self.lambda_b = float(lambda_w), float(lambda_h), float(lambda_b)
        self.bias, self.noisy = bool(bias), eta > 0
        self.p = n * (n - 1)
        self.src = np.repeat(np.arange(n), n - 1)
        noisy_labels = np.array([cp for c in range(n) for cp in range(n) if cp != c])
        clean_labels = np.repeat(np.arange(n), 2 * d)
        self.nw, self.nb, self.nc = n * d, (n if bias else 0), n * d
        self.nf = self.p * d if self.noisy else 0
        self.size = self.nw + self.nb + self.nc + self.nf + 1
        self.analytic = loss.key in ANALYTIC_LOSSES
        if self.analytic:
            self.clean_loss = _SoftTargetLoss(clean_labels, n, loss.alpha)
            self.noisy_loss = _SoftTargetLoss(noisy_labels, n, loss.alpha)
        else:
            self.clean_loss = _TorchLoss(clean_labels, loss.fn)
            self.noisy_loss = _TorchLoss(noisy_labels, loss.fn)

    def split(self, x: np.ndarray):
        """Views ``(W, b or None, g, e or None, s)`` of the flat vector ``x`` (g, e: unshifted
        centres and noisy features; see :meth:`features` for h and f)."""
        n, d = self.n, self.d
        o1, o2, o3 = self.nw, self.nw + self.nb, self.nw + self.nb + self.nc
        w = x[:o1].reshape(n, d)
        b = x[o1:o2] if self.bias else None
        h = x[o2:o3].reshape(n, d)
        f = x[o3 : o3 + self.nf].reshape(self.p, d) if self.noisy else None
        return w, b, h, f, x[-1]

    def radius(self, mem: float, s: float) -> float:
        """The dilation r from M and the last parameter s."""
        return s if self.soft else self.lam * mem + s

    def memorization(self, g: np.ndarray, e: np.ndarray | None) -> tuple[np.ndarray | None, float]:
        """``(delta, M)``: per-pair offsets from the source centre and their RMS (0 without noise)."""
        if not self.noisy:
            return None, 0.0
        delta = e - g[self.src]
        return delta, math.sqrt(float(np.vdot(delta, delta)) / self.p + 1e-300)

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float, float]:
        """``(h, f, M, r)``: shifted centres (N, d), noisy features (P, d) or None, M and r."""
        _, _, g, e, s = self.split(np.asarray(x, dtype=np.float64))
        _, mem = self.memorization(g, e)
        r = self.radius(mem, float(s))
        return g + r, (None if e is None else e + r), mem, r

    def _forward(self, x: np.ndarray):
        w, b, g, e, s = self.split(x)
        n, d = self.n, self.d
        delta, mem = self.memorization(g, e)
        r = self.radius(mem, float(s))
        h = g + r
        f = None if e is None else e + r
        z = h @ w.T
        if b is not None:
            z = z + b
        sdir = np.concatenate([w.T, -w.T])  # (2d, N): logit change along +/- e_j
        logits = (z[:, None, :] + r * sdir[None, :, :]).reshape(n * 2 * d, n)
        clean, g_clean = self.clean_loss(logits)
        feat = float(np.vdot(h, h)) / n + r * r
        if self.noisy:
            nlog = f @ w.T
            if b is not None:
                nlog = nlog + b
            nloss, g_noisy = self.noisy_loss(nlog)
            data = (1 - self.eta) * clean + self.eta * nloss
            feat = (1 - self.eta) * feat + self.eta * float(np.vdot(f, f)) / self.p
        else:
            nloss, g_noisy = 0.0, None
            data = clean
        obj = data + 0.5 * self.lambda_w * float(np.vdot(w, w)) + 0.5 * self.lambda_h * n * self.k * feat
        if b is not None:
            obj += 0.5 * self.lambda_b * float(np.vdot(b, b))
        viol = max(0.0, self.lam * mem - r) if self.soft else 0.0
        obj += 0.5 * self.mu * viol * viol
        cache = (w, b, h, f, delta, mem, r, sdir, g_clean, g_noisy, viol)
        return (obj, data, clean, nloss, mem, r), cache

    def parts(self, x: np.ndarray) -> tuple[float, float, float, float, float, float]:
        """``(objective, training loss, clean loss, noisy loss, M, r)`` at ``x``."""
        return self._forward(np.asarray(x, dtype=np.float64))[0]

    def fg(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Objective and its exact gradient (float64) for scipy's L-BFGS-B."""
        x = np.asarray(x, dtype=np.float64)
        (obj, *_), (w, b, h, f, delta, mem, r, sdir, g_clean, g_noisy, viol) = self._forward(x)
        n, d = self.n, self.d
        grad = np.empty_like(x)
        gw, gb, gg, ge, _ = self.split(grad)  # writable views into grad
        cw = (1 - self.eta) if self.noisy else 1.0
        reg_h = self.lambda_h * n * self.k  # d/dv of (lambda_H/2) N K v^2 is reg_h v
        gc = g_clean.reshape(n, 2 * d, n)
        gz = cw * gc.sum(axis=1)  # (N, N): d obj / d z_c
        gs_dir = cw * gc.sum(axis=0)  # (2d, N): d obj / d (r S) summed over classes
        # +e_j and -e_j pair up (S = [W^T; -W^T]); differencing first makes the symmetric
        # cancellation exact, so at r = 0 the slack's gradient carries no rounding residue
        gdiff = gs_dir[:d] - gs_dir[d:]  # (d, N)
        dr = float(np.vdot(gdiff, w.T)) + reg_h * cw * r
        gw[...] = gz.T @ h + r * gdiff.T + self.lambda_w * w
        gg[...] = gz @ w + (reg_h * cw / n) * h
        dr += float(gg.sum())  # h = g + r 1
        if b is not None:
            gb[...] = gz.sum(axis=0) + self.lambda_b * b
        if self.noisy:
            gn = self.eta * g_noisy  # (P, N)
            gw += gn.T @ f
            if b is not None:
                gb += gn.sum(axis=0)
            ge[...] = gn @ w + (reg_h * self.eta / self.p) * f
            dr += float(ge.sum())  # f = e + r 1
        if self.soft:
            dmem = self.mu * self.lam * viol
            dr -= self.mu * viol
        else:
            dmem = self.lam * dr
        if self.noisy:
            gdelta = (dmem / (self.p * mem)) * delta
            ge += gdelta
            gg -= gdelta.reshape(n, n - 1, d).sum(axis=1)
        grad[-1] = dr
        return float(obj), grad
