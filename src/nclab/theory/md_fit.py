"""Fit the M-D model (``nclab.theory.md_model``) to CE runs and predict LS as scale-free ratios.

Formulation. The **soft** expressivity variant: dilation ``r`` is free and the cost
``(mu/2) max(0, lambda M - r)^2`` replaces the hard bound ``r >= lambda M``. Under the hard bound
``D = lambda M`` for every loss, so the model's LS ``D/M`` equals the fitted lambda by construction
and cannot be tested against runs; the soft variant lets the loss decide how much dilation it
pays for. ``mu`` (``penalty``) is a fixed setting of the model, not fitted.

Units. A network's features and the model's live in unrelated units, so both sides are divided
by the distance between the clean class centres (the runs' normalized M and D, the model's
``memorization_normalized`` / ``dilation_normalized``). What is fitted on CE:

* ``lambda`` -- the model's expressivity, its one free parameter;
* ``scale`` -- one common factor ``s`` with ``M_run ~ s M_model`` and ``D_run ~ s D_model``
  (the model's 2d-point clean cloud and single memorized offset per pair are cruder than a
  network's, so lengths agree only up to a factor).

``s`` is in closed form for each lambda; lambda minimizes
``sum_eta [(s M_model - M)^2 / m_M^2 + (s D_model - D)^2 / m_D^2]`` (``m_M``, ``m_D``: the mean
measured values, so M and D weigh alike).

Prediction. LS(alpha) at the fitted lambda, as the ratios ``M_LS/M_CE``, ``D_LS/D_CE`` and
``(D/M)_LS / (D/M)_CE`` at each eta: ``s`` cancels, so the prediction is free of the units.

Speed. The model is solved once per (eta, lambda, loss) on a lambda grid (:func:`tabulate`),
then interpolated linearly in ``log lambda``; :func:`fit_lambda` fits any number of target sets
(e.g. seed-bootstrap resamples) against the table at once, so refitting costs no new solves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

from nclab.theory.md_model import solve_md

__all__ = ["ModelTable", "tabulate", "refine", "fit_lambda", "ratios", "model_curves", "QUANTITIES"]

#: the tabulated model outputs (normalized by the centre distance; proxy = test-error proxy)
QUANTITIES = ("memorization", "dilation", "proxy")


@lru_cache(maxsize=4096)
def _solve(eta: float, lam: float, loss: str, alpha: float | None, num_classes: int, per_class: int,
           lambda_w: float, lambda_h: float, constraint: str, penalty: float, starts: int,
           seed: int) -> tuple[float, float, float]:
    """One model solve -> (M, D, proxy), normalized; cached (deterministic for its arguments).

    Tolerance 1e-6 on the projected gradient: M and D agree with the 1e-8 solution to 5 digits
    at a third of the cost (measured for N = 2 and 10); 5000 Monte Carlo draws per class resolve
    the N > 2 test-error proxy to ~2e-5, enough to tell a degenerate proxy (< 1e-3)."""
    res = solve_md(eta=eta, expressivity=lam, loss=loss, alpha=alpha, num_classes=num_classes,
                   per_class=per_class, lambda_w=lambda_w, lambda_h=lambda_h, constraint=constraint,
                   penalty=penalty, starts=starts, seed=seed, tol=1e-6, mc_samples=5000).to_dict()
    if eta == 0.0:
        return 0.0, 0.0, float(res["test_error"])
    return float(res["memorization_normalized"]), float(res["dilation_normalized"]), float(res["test_error"])


def model_curves(etas: Sequence[float], *, expressivity: float, loss: str = "ce", alpha: float | None = None,
                 num_classes: int = 2, per_class: int = 10, lambda_w: float = 5e-3, lambda_h: float = 5e-3,
                 constraint: str = "soft", penalty: float = 10.0, starts: int = 1,
                 seed: int = 0) -> list[dict[str, float]]:
    """The model's scale-free outputs at each eta: ``{eta, memorization, dilation, proxy}``
    (normalized by the centre distance; eta = 0 gives M = D = 0)."""
    out = []
    for eta in etas:
        m, d, p = _solve(float(eta), float(expressivity), loss, None if loss == "ce" else alpha, int(num_classes),
                         int(per_class), lambda_w, lambda_h, constraint, float(penalty), int(starts), int(seed))
        out.append({"eta": float(eta), "memorization": m, "dilation": d, "proxy": p})
    return out


@dataclass
class ModelTable:
    """Model outputs on a grid: ``ce[q]`` and ``ls[q]`` have shape (len(lambdas), len(etas))
    for each ``q`` of :data:`QUANTITIES`; ``lambdas`` ascending."""

    etas: np.ndarray
    lambdas: np.ndarray
    ce: dict[str, np.ndarray]
    ls: dict[str, np.ndarray]
    settings: dict[str, Any] = field(default_factory=dict)

    def at(self, lam: float | np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Outputs at ``lam`` (scalar, or an array of shape (B,)): linear interpolation in
        ``log lambda`` (clamped to the grid), per loss and quantity, shape (E,) or (B, E)."""
        lam_arr = np.atleast_1d(np.asarray(lam, dtype=float))
        x = np.log(self.lambdas)
        xq = np.clip(np.log(lam_arr), x[0], x[-1])
        out: dict[str, dict[str, np.ndarray]] = {}
        for name, tab in (("ce", self.ce), ("ls", self.ls)):
            out[name] = {}
            for q in QUANTITIES:
                vals = np.stack([np.interp(xq, x, tab[q][:, e]) for e in range(self.etas.size)], axis=1)
                out[name][q] = vals[0] if np.ndim(lam) == 0 else vals
        return out


def tabulate(etas: Sequence[float], lambdas: Sequence[float], *, alpha: float, num_classes: int = 2,
             per_class: int = 10, lambda_w: float = 5e-3, lambda_h: float = 5e-3, constraint: str = "soft",
             penalty: float = 10.0, starts: int = 1, seed: int = 0) -> ModelTable:
    """Solve CE and LS(``alpha``) at every (lambda, eta) of the grid (module docstring).

    One start by default: on a 13-point grid over [0.02, 4] at the study's noise levels (N = 2 at
    eta 0.05-0.2, N = 10 at 0.18 and 0.36; CE and LS(0.1); mu = 10), 1 and 4 starts gave M and D
    within 6e-7 of each other."""
    lams = np.unique(np.asarray(lambdas, dtype=float))
    if lams.size < 2 or not np.all(lams > 0) or not np.all(np.isfinite(lams)):
        raise ValueError(f"lambdas must hold >= 2 distinct finite values > 0; got {list(lambdas)}")
    e = np.asarray([float(v) for v in etas])
    if e.size == 0 or not np.all((e > 0) & (e < 1)):
        raise ValueError(f"etas must be noise fractions in (0, 1); got {list(etas)}")
    settings = dict(num_classes=int(num_classes), per_class=int(per_class), lambda_w=float(lambda_w),
                    lambda_h=float(lambda_h), constraint=constraint, penalty=float(penalty), starts=int(starts),
                    seed=int(seed))
    tabs: dict[str, dict[str, np.ndarray]] = {}
    for loss, a in (("ce", None), ("ls", float(alpha))):
        arr = np.empty((3, lams.size, e.size))
        for i, lam in enumerate(lams):
            for j, eta in enumerate(e):
                arr[:, i, j] = _solve(float(eta), float(lam), loss, a, settings["num_classes"], settings["per_class"],
                                      settings["lambda_w"], settings["lambda_h"], constraint, settings["penalty"],
                                      settings["starts"], settings["seed"])
        tabs[loss] = {q: arr[k] for k, q in enumerate(QUANTITIES)}
    return ModelTable(etas=e, lambdas=lams, ce=tabs["ce"], ls=tabs["ls"], settings={**settings, "alpha": float(alpha)})


def refine(table: ModelTable, around: float, *, parts: int = 4) -> ModelTable:
    """The table with the two grid steps next to ``around`` (its nearest grid point's neighbours)
    each split into ``parts``. The new points depend only on the grid and that nearest point, so
    refits that land near each other reuse the cached solves."""
    if parts < 2:
        raise ValueError(f"parts must be >= 2; got {parts}")
    x = np.log(table.lambdas)
    i = int(np.argmin(np.abs(x - math.log(around))))
    extra = [np.linspace(x[j], x[j + 1], parts + 1)[1:-1] for j in (i - 1, i) if 0 <= j < x.size - 1]
    s = table.settings
    return tabulate(table.etas, np.concatenate([table.lambdas, np.exp(np.concatenate(extra))]), alpha=s["alpha"],
                    **{k: v for k, v in s.items() if k != "alpha"})


def fit_lambda(table: ModelTable, memorization: np.ndarray, dilation: np.ndarray, *,
               fine: int = 400) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit lambda and the scale to CE targets: ``memorization`` / ``dilation`` of shape (B, E)
    (or (E,)), one row per target set, NaN where a cell has no data in that set.

    Returns ``(lambda, scale, residual)``, each of shape (B,); NaN for a set with no cell.
    lambda: the best of ``fine`` points log-spaced over the table's range (interpolated model), moved
    to the vertex of the parabola through it and its neighbours.
    """
    m = np.atleast_2d(np.asarray(memorization, dtype=float))
    d = np.atleast_2d(np.asarray(dilation, dtype=float))
    if m.shape != d.shape or m.shape[1] != table.etas.size:
        raise ValueError(f"targets must have shape (B, {table.etas.size}); got {m.shape} and {d.shape}")
    mask = np.isfinite(m) & np.isfinite(d)
    m0, d0 = np.where(mask, m, 0.0), np.where(mask, d, 0.0)
    cnt = mask.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        wm = 1.0 / np.maximum(np.abs(m0).sum(axis=1) / cnt, 1e-12) ** 2
        wd = 1.0 / np.maximum(np.abs(d0).sum(axis=1) / cnt, 1e-12) ** 2
    grid = np.exp(np.linspace(math.log(table.lambdas[0]), math.log(table.lambdas[-1]), fine))
    mod = table.at(grid)["ce"]
    mm, dm = mod["memorization"], mod["dilation"]  # (F, E)
    fm = mask.astype(float)
    # per (set b, lambda f): closed-form scale, then the weighted residual
    smm = fm @ (mm * mm).T  # sum_e mask M_mod^2, (B, F)
    sdd = fm @ (dm * dm).T
    smx = m0 @ mm.T
    sdx = d0 @ dm.T
    sxx = (m0 * m0).sum(axis=1)[:, None]
    syy = (d0 * d0).sum(axis=1)[:, None]
    wm_, wd_ = wm[:, None], wd[:, None]
    den = wm_ * smm + wd_ * sdd
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.maximum(np.where(den > 0, (wm_ * smx + wd_ * sdx) / den, 0.0), 0.0)
    res = wm_ * (s * s * smm - 2 * s * smx + sxx) + wd_ * (s * s * sdd - 2 * s * sdx + syy)
    res = np.where(np.isfinite(res), res, np.inf)
    best = np.argmin(res, axis=1)
    rows = np.arange(m.shape[0])
    # a parabola through the best grid point and its neighbours places lambda between grid points
    k = np.clip(best, 1, fine - 2)
    r0, r1, r2 = res[rows, k - 1], res[rows, k], res[rows, k + 1]
    with np.errstate(invalid="ignore", divide="ignore"):  # a set with no cell has res = inf everywhere
        curv = r0 - 2 * r1 + r2
        shift = np.where((best == k) & (curv > 0) & np.isfinite(curv), 0.5 * (r0 - r2) / curv, 0.0)
    shift = np.clip(np.nan_to_num(shift), -0.5, 0.5)
    pos = best + shift
    logs = np.linspace(math.log(table.lambdas[0]), math.log(table.lambdas[-1]), fine)
    lam = np.exp(np.interp(pos, np.arange(fine), logs))
    scale = np.array([np.interp(p, np.arange(fine), s[b]) for b, p in enumerate(pos)])
    resid = res[rows, best]
    empty = cnt == 0
    lam, scale, resid = (np.where(empty, np.nan, v) for v in (lam, scale, resid))
    return lam, scale, resid


def ratios(table: ModelTable, lam: float | np.ndarray) -> dict[str, np.ndarray]:
    """The model's LS/CE ratios at ``lam``: ``memorization`` (M_LS/M_CE), ``dilation`` (D_LS/D_CE),
    ``dm`` ((D/M)_LS / (D/M)_CE); also ``proxy_ce`` / ``proxy_ls`` (the test-error proxies).
    Shapes (E,) for a scalar ``lam``, (B, E) for an array. NaN where CE's value is 0."""
    out = table.at(lam)
    ce, ls = out["ce"], out["ls"]
    with np.errstate(invalid="ignore", divide="ignore"):
        rm = np.where(ce["memorization"] > 0, ls["memorization"] / ce["memorization"], np.nan)
        rd = np.where(ce["dilation"] > 0, ls["dilation"] / ce["dilation"], np.nan)
        rdm = np.where(rm > 0, rd / rm, np.nan)
    return {"memorization": rm, "dilation": rd, "dm": rdm, "proxy_ce": ce["proxy"], "proxy_ls": ls["proxy"]}
