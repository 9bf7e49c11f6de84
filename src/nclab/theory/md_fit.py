"""Fit the M-D model (``nclab.theory.md_model``) to measured CE runs and predict LS.

Scale-free comparison. A network's features and the model's live in unrelated units, so both
sides are divided by the distance between the clean class centres: the runs'
``train.memorization_normalized`` / ``train.dilation_normalized`` and the model's
``memorization_normalized`` / ``dilation_normalized``. What is left to fit is (our choice):

* ``lambda`` -- the model's expressivity (``r >= lambda M``), the one free parameter of the
  model itself;
* ``scale`` -- one common factor ``s`` mapping the model's normalized M and D onto the
  network's (``M_run ~ s M_model``, ``D_run ~ s D_model``): the model's 2d-point clean cloud
  and single memorized offset are cruder than a network's, so lengths agree only up to a factor;
* a test-error calibration ``err_run ~ a + b * proxy_model`` (``b >= 0``): the model's
  test-error proxy is a probability for an idealized Gaussian cloud, not a network's error,
  so only its variation across noise rates is used.

Fit. Per CE noise rate eta > 0 the seed means of M and D are the targets. For a given lambda
the model is solved at every eta; ``s`` minimizes ``sum_eta [(s M_model - M)^2 / m_M^2 +
(s D_model - D)^2 / m_D^2]`` in closed form (``m_M``, ``m_D``: the mean measured values, so M
and D weigh alike), and lambda minimizes the remaining residual: a log-spaced grid, then a
bounded scalar refinement in ``log lambda`` around the best grid point. The calibration
``(a, b)`` is least squares of the CE test errors on the CE proxies at the fitted lambda.

Prediction. LS(alpha) is solved with the fitted lambda at each requested eta; its M and D are
multiplied by ``s`` and its proxy mapped through ``(a, b)``. Nothing about LS is fitted.

Noise fraction. ``eta`` is the fraction of mislabeled training samples (for ``symmetric_all``
noise at nominal rate p with N classes that is p (N-1)/N, so pass the realized rate when known).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from scipy.optimize import minimize_scalar

from nclab.theory.md_model import solve_md

__all__ = ["MDFit", "fit_md", "predict_md", "model_curves"]

#: keyword options of :func:`nclab.theory.md_model.solve_md` the fit passes through
_MODEL_KEYS = ("num_classes", "per_class", "lambda_w", "lambda_h", "constraint", "penalty", "starts", "seed",
               "mc_samples", "test_noise")


@dataclass
class MDFit:
    """A fitted model: ``expressivity`` (lambda), ``scale`` (s), the test-error calibration
    ``err_offset`` / ``err_slope`` (a, b), the residual, the CE points used and the model options."""

    expressivity: float
    scale: float
    err_offset: float
    err_slope: float
    residual: float
    etas: list[float]
    n_runs: int
    model: dict[str, Any] = field(default_factory=dict)
    ce_fitted: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _means(rows: Iterable[dict[str, Any]], key: str) -> dict[float, float]:
    by: dict[float, list[float]] = defaultdict(list)
    for r in rows:
        if _finite(r.get(key)):
            by[round(float(r["eta"]), 6)].append(float(r[key]))
    return {e: float(np.mean(v)) for e, v in sorted(by.items())}


def model_curves(etas: Sequence[float], *, expressivity: float, loss: str = "ce", alpha: float | None = None,
                 **model: Any) -> list[dict[str, float]]:
    """The model's scale-free outputs at each eta: ``{eta, memorization, dilation, proxy}``
    (normalized by the centre distance; eta = 0 gives M = D = 0)."""
    out = []
    for eta in etas:
        res = solve_md(eta=float(eta), expressivity=expressivity, loss=loss, alpha=alpha, **model).to_dict()
        zero = float(eta) == 0.0
        out.append({
            "eta": float(eta),
            "memorization": 0.0 if zero else float(res["memorization_normalized"]),
            "dilation": 0.0 if zero else float(res["dilation_normalized"]),
            "proxy": float(res["test_error"]),
        })
    return out


def _scale_and_residual(curves, m_meas, d_meas) -> tuple[float, float]:
    m_mod = np.array([c["memorization"] for c in curves])
    d_mod = np.array([c["dilation"] for c in curves])
    wm = 1.0 / max(float(np.mean(np.abs(m_meas))), 1e-12) ** 2
    wd = 1.0 / max(float(np.mean(np.abs(d_meas))), 1e-12) ** 2
    den = wm * float(m_mod @ m_mod) + wd * float(d_mod @ d_mod)
    s = (wm * float(m_mod @ m_meas) + wd * float(d_mod @ d_meas)) / den if den > 0 else 0.0
    s = max(s, 0.0)
    res = wm * float(((s * m_mod - m_meas) ** 2).sum()) + wd * float(((s * d_mod - d_meas) ** 2).sum())
    return s, res


def fit_md(
    ce_rows: Sequence[dict[str, Any]],
    *,
    lambda_range: tuple[float, float] = (0.05, 4.0),
    grid: int = 12,
    xtol: float = 1e-3,
    num_classes: int = 2,
    per_class: int = 10,
    lambda_w: float = 5e-3,
    lambda_h: float = 5e-3,
    constraint: str = "hard",
    penalty: float = 10.0,
    starts: int = 2,
    seed: int = 0,
    mc_samples: int = 20_000,
    test_noise: str = "gaussian",
) -> MDFit:
    """Fit ``lambda`` and ``scale`` (and the error calibration) to CE runs (module docstring).

    ``ce_rows``: one dict per run with ``eta`` (mislabeled fraction), ``memorization`` and
    ``dilation`` (both normalized by the clean-centre distance) and optionally ``test_error``
    (a fraction in [0, 1]); runs at eta = 0 only enter the error calibration. Needs at least
    two distinct noisy etas with both M and D. ``xtol``: tolerance of the ``log lambda`` search.
    """
    lo, hi = lambda_range
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"lambda_range must satisfy 0 < low < high < inf; got {lambda_range}")
    if grid < 3:
        raise ValueError(f"grid must be >= 3; got {grid}")
    for r in ce_rows:
        if not _finite(r.get("eta")) or not 0.0 <= float(r["eta"]) < 1.0:
            raise ValueError(f"every row needs an 'eta' in [0, 1); got {r.get('eta')!r}")
    m_by, d_by = _means([r for r in ce_rows if r["eta"] > 0], "memorization"), \
        _means([r for r in ce_rows if r["eta"] > 0], "dilation")
    etas = sorted(set(m_by) & set(d_by))
    if len(etas) < 2:
        raise ValueError(f"fitting needs CE runs at >= 2 noise rates > 0 with memorization and dilation; "
                         f"got {len(etas)} ({etas})")
    m_meas = np.array([m_by[e] for e in etas])
    d_meas = np.array([d_by[e] for e in etas])
    model = dict(num_classes=num_classes, per_class=per_class, lambda_w=lambda_w, lambda_h=lambda_h,
                 constraint=constraint, penalty=penalty, starts=starts, seed=seed, mc_samples=mc_samples,
                 test_noise=test_noise)
    cache: dict[float, tuple[float, float, list]] = {}

    def evaluate(log_lam: float) -> float:
        key = round(log_lam, 9)
        if key not in cache:
            curves = model_curves(etas, expressivity=math.exp(log_lam), **model)
            s, res = _scale_and_residual(curves, m_meas, d_meas)
            cache[key] = (s, res, curves)
        return cache[key][1]

    logs = np.linspace(math.log(lo), math.log(hi), grid)
    vals = [evaluate(float(x)) for x in logs]
    i = int(np.argmin(vals))
    a, b = float(logs[max(i - 1, 0)]), float(logs[min(i + 1, grid - 1)])
    minimize_scalar(evaluate, bounds=(a, b), method="bounded", options={"xatol": xtol})
    best = min(cache, key=lambda k: cache[k][1])
    lam = math.exp(best)
    scale, residual, _ = cache[best]

    # error calibration on every CE eta with a measured error (eta = 0 included)
    e_by = _means(ce_rows, "test_error")
    a_err, b_err, fitted = 0.0, 0.0, []
    if e_by:
        err_etas = sorted(e_by)
        curves = {c["eta"]: c for c in model_curves(err_etas, expressivity=lam, **model)}
        px = np.array([curves[e]["proxy"] for e in err_etas])
        ey = np.array([e_by[e] for e in err_etas])
        if px.size >= 2 and np.ptp(px) > 0:
            b_err, a_err = (float(v) for v in np.polyfit(px, ey, 1))
        if b_err <= 0:  # a decreasing map would invert the model's ordering: fall back to the mean
            b_err, a_err = 0.0, float(ey.mean())
    ce_curves = {c["eta"]: c for c in cache[best][2]}
    for e in etas:
        c = ce_curves[e]
        fitted.append({"eta": e, "memorization": scale * c["memorization"], "dilation": scale * c["dilation"],
                       "memorization_measured": m_by[e], "dilation_measured": d_by[e]})
    return MDFit(expressivity=lam, scale=scale, err_offset=a_err, err_slope=b_err, residual=residual,
                 etas=etas, n_runs=len(ce_rows), model=model, ce_fitted=fitted)


def predict_md(fit: MDFit, etas: Sequence[float], *, loss: str = "ls",
               alpha: float | None = 0.1) -> list[dict[str, float]]:
    """Predicted ``{eta, memorization, dilation, test_error, proxy}`` of ``loss`` at each eta,
    in the runs' units (model output x ``scale``; error = a + b proxy, clipped to [0, 1])."""
    if loss == "ce":
        alpha = None
    out = []
    for c in model_curves(sorted(set(float(e) for e in etas)), expressivity=fit.expressivity, loss=loss,
                          alpha=alpha, **fit.model):
        out.append({
            "eta": c["eta"],
            "memorization": fit.scale * c["memorization"],
            "dilation": fit.scale * c["dilation"],
            "proxy": c["proxy"],
            "test_error": float(min(max(fit.err_offset + fit.err_slope * c["proxy"], 0.0), 1.0)),
        })
    return out
