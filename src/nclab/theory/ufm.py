"""The unconstrained-features ("layer-peeled") model, with and without non-negative features.

Problem (N classes, K samples per class, feature dimension d >= N, n = NK)::

    min_{W, H [, b]}  (1/n) sum_i L(W h_i + b, y_i) + (lambda_W/2)||W||_F^2
                      + (lambda_H/2)||H||_F^2 [+ (lambda_b/2)||b||^2]      (H >= 0 if positive)

with W of shape (N, d), H of shape (d, n), L any loss of ``nclab.losses`` (CE, LS(alpha),
MSE, ...). Solved in float64 by L-BFGS-B (bounds give H >= 0) with torch autograd gradients
from several seeded random starts; the stopping rule is ``||projected gradient||_2 <= tol``.

Closed forms are stated in :func:`closed_form` (checked by ``tests/test_theory_ufm.py``).
Reported norms are root-mean-square, so they are defined for any
solution: ``feature_norm = ||H||_F / sqrt(n)``, ``weight_norm = ||W||_F / sqrt(N)``, and
``margin`` is the mean over samples of ``z_y - max_{k != y} z_k``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from nclab.seeding import numpy_generator
from nclab.theory._solver import LossChoice, minimize_bounded, resolve_loss, torch_fg
from nclab.theory.geometry import structure

__all__ = ["ClosedForm", "UFMResult", "closed_form", "probe_dead_class", "solve_ufm", "ufm_objective"]


@dataclass(frozen=True)
class ClosedForm:
    """The global minimizer's summary values (see :func:`closed_form`)."""

    margin: float
    feature_norm: float
    weight_norm: float
    objective: float
    trivial: bool
    geometry: str  # "orthogonal_frame", "simplex_etf" or "zero"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_common(num_classes: int, per_class: int, lambda_w: float, lambda_h: float) -> None:
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes}")
    if int(per_class) != per_class or per_class < 1:
        raise ValueError(f"per_class must be an integer >= 1; got {per_class}")
    for name, v in (("lambda_w", lambda_w), ("lambda_h", lambda_h)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0; got {v}")


def closed_form(
    *,
    num_classes: int,
    per_class: int,
    lambda_w: float,
    lambda_h: float,
    loss: str = "ce",
    alpha: float | None = None,
    positive: bool = True,
    bias: bool = False,
    lambda_b: float = 0.0,
) -> ClosedForm | None:
    """Global minimizer of the UFM in closed form, or ``None`` where we have none.

    CE / LS(alpha) (bias irrelevant: by symmetry the optimal bias is constant):
      ``c = sqrt(lambda_W lambda_H N K (N-1))`` (positive) or ``(N-1) sqrt(lambda_W lambda_H K)``
      (unconstrained); ``c_eff = c + alpha (N-1)/N``. If ``c_eff >= (N-1)/N`` the optimum is
      W = 0, H = 0 (objective log N). Otherwise ``m* = log((N-1)(1-c_eff)/c_eff)``, objective
      ``log(1 + (N-1) e^{-m*}) + c_eff m*`` and
      positive:       ``rho^2 = m* sqrt(lambda_W (N-1)/(lambda_H N K))``, ``beta^2 = m* sqrt(lambda_H N K/(lambda_W (N-1)))``,
                      feature_norm = rho, weight_norm = beta sqrt((N-1)/N) (uncentred means: orthogonal frame);
      unconstrained:  ``feature_norm^2 = m* (N-1)/N sqrt(lambda_W/(lambda_H K))``,
                      ``weight_norm^2 = m* (N-1)/N sqrt(lambda_H K/lambda_W)`` (simplex ETF, Zhu et al. 2021).
    MSE (sum over classes, no bias; positive or not), with ``g = sqrt(lambda_W lambda_H K)``:
      logits ``Z = s I`` with ``s = max(0, 1 - N g/2)`` (singular-value soft-thresholding),
      margin s, objective ``(1-s)^2 + N g s``, feature_norm^2 = ``s sqrt(lambda_W/(lambda_H K))``,
      weight_norm^2 = ``s sqrt(lambda_H K/lambda_W)``; the uncentred means form an orthogonal frame.
    MSE with an unregularized bias, unconstrained features: the same s on the centred
      targets, objective ``(N-1)/N (1-s)^2 + (N-1) g s``, norms times ``sqrt((N-1)/N)``, simplex ETF.
    Other cases (focal, label relaxation, positive MSE with bias, MSE with lambda_b > 0): None.
    """
    _check_common(num_classes, per_class, lambda_w, lambda_h)
    choice = resolve_loss(loss, alpha=alpha) if alpha is not None else resolve_loss(loss)
    n_cls, k = int(num_classes), int(per_class)
    frac = (n_cls - 1) / n_cls
    if choice.key in ("ce", "ls"):
        a = choice.alpha
        if positive:
            c = math.sqrt(lambda_w * lambda_h * n_cls * k * (n_cls - 1))
        else:
            c = (n_cls - 1) * math.sqrt(lambda_w * lambda_h * k)
        c_eff = c + a * frac
        if c_eff >= frac:
            return ClosedForm(0.0, 0.0, 0.0, math.log(n_cls), True, "zero")
        m = math.log((n_cls - 1) * (1.0 - c_eff) / c_eff)
        obj = math.log1p((n_cls - 1) * math.exp(-m)) + c_eff * m
        if positive:
            rho = math.sqrt(m * math.sqrt(lambda_w * (n_cls - 1) / (lambda_h * n_cls * k)))
            beta = math.sqrt(m * math.sqrt(lambda_h * n_cls * k / (lambda_w * (n_cls - 1))))
            return ClosedForm(m, rho, beta * math.sqrt(frac), obj, False, "orthogonal_frame")
        fn = math.sqrt(m * frac * math.sqrt(lambda_w / (lambda_h * k)))
        wn = math.sqrt(m * frac * math.sqrt(lambda_h * k / lambda_w))
        return ClosedForm(m, fn, wn, obj, False, "simplex_etf")
    if choice.key == "mse":
        g = math.sqrt(lambda_w * lambda_h * k)
        s = max(0.0, 1.0 - n_cls * g / 2.0)
        fn = math.sqrt(s * math.sqrt(lambda_w / (lambda_h * k)))
        wn = math.sqrt(s * math.sqrt(lambda_h * k / lambda_w))
        if not bias:
            return ClosedForm(s, fn, wn, (1 - s) ** 2 + n_cls * g * s, s == 0.0, "orthogonal_frame" if s > 0 else "zero")
        if positive or lambda_b > 0:
            return None
        r = math.sqrt(frac)
        return ClosedForm(
            s, fn * r, wn * r, frac * (1 - s) ** 2 + (n_cls - 1) * g * s, s == 0.0, "simplex_etf" if s > 0 else "zero"
        )
    return None


@dataclass
class UFMResult:
    """A solved UFM. Arrays: ``weight`` (N, d), ``features`` (n, d), ``labels`` (n,), ``bias`` (N,) or None."""

    weight: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    bias: np.ndarray | None
    objective: float
    loss_value: float
    margin: float
    feature_norm: float
    weight_norm: float
    converged: bool
    pg_norm: float
    iterations: int
    start_objectives: list[float]
    structure: dict[str, float]
    closed_form: ClosedForm | None
    settings: dict[str, Any] = field(default_factory=dict)

    def relative_errors(self) -> dict[str, float] | None:
        """``|x - x*| / max(|x*|, 1e-12)`` for margin, norms and objective (None without a closed form)."""
        if self.closed_form is None:
            return None
        cf = self.closed_form
        out = {}
        for key in ("margin", "feature_norm", "weight_norm", "objective"):
            ref = getattr(cf, key)
            out[key] = abs(getattr(self, key) - ref) / max(abs(ref), 1e-12)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        starts = np.asarray(self.start_objectives)
        return {
            "settings": self.settings,
            "margin": self.margin,
            "feature_norm": self.feature_norm,
            "weight_norm": self.weight_norm,
            "objective": self.objective,
            "loss_value": self.loss_value,
            "converged": self.converged,
            "pg_norm": self.pg_norm,
            "iterations": self.iterations,
            "start_objectives": [float(v) for v in starts],
            "start_spread": float(starts.max() - starts.min()),
            "closed_form": None if self.closed_form is None else self.closed_form.to_dict(),
            "relative_error": self.relative_errors(),
            **self.structure,
        }


def ufm_objective(
    weight: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss: LossChoice,
    lambda_w: float,
    lambda_h: float,
    bias: torch.Tensor | None = None,
    lambda_b: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(objective, mean loss)``; ``weight`` (N, d), ``features`` (n, d), ``labels`` (n,)."""
    logits = features @ weight.T
    if bias is not None:
        logits = logits + bias
    data = loss.fn(logits, labels)
    obj = data + 0.5 * lambda_w * (weight * weight).sum() + 0.5 * lambda_h * (features * features).sum()
    if bias is not None:
        obj = obj + 0.5 * lambda_b * (bias * bias).sum()
    return obj, data


def _engine_metrics(h, labels, w, b) -> dict[str, float]:
    """The project's metric suite (``nclab.metrics.nc_metrics``, Zhu 2021 convention) on a solution.

    Our own :func:`nclab.theory.geometry.structure` keys are exact on collapsed solutions and are
    kept alongside (tests check they agree). The zero solution of the trivial region has no
    class structure; the engine may reject it, and then only our keys are reported.
    """
    from nclab.metrics import nc_metrics

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = nc_metrics(h, labels, weight=w, bias=b).to_dict()
    except (ValueError, ZeroDivisionError, FloatingPointError):
        return {}
    return {k: v for k, v in res.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def solve_ufm(
    *,
    num_classes: int,
    per_class: int,
    lambda_w: float,
    lambda_h: float,
    dim: int | None = None,
    loss: str = "ce",
    alpha: float | None = None,
    positive: bool = True,
    bias: bool = False,
    lambda_b: float = 0.0,
    starts: int = 4,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    tol: float = 1e-8,
    max_iter: int = 20000,
    init_scale: float = 0.5,
) -> UFMResult:
    """Solve the UFM from ``starts`` random starts and return the best (lowest objective).

    Starts are drawn from ``rng`` (default: the ``"theory.ufm"`` stream of ``seed``): W and H
    i.i.d. normal with std ``init_scale`` (absolute values for H when ``positive``), b = 0.
    ``dim`` defaults to N. ``converged`` is the best start's ``||pg||_2 <= tol``.
    """
    _check_common(num_classes, per_class, lambda_w, lambda_h)
    n_cls, k = int(num_classes), int(per_class)
    d = n_cls if dim is None else int(dim)
    if d < n_cls:
        raise ValueError(f"dim must be >= num_classes ({n_cls}); got {d}")
    if starts < 1:
        raise ValueError(f"starts must be >= 1; got {starts}")
    if lambda_b < 0 or not math.isfinite(lambda_b):
        raise ValueError(f"lambda_b must be a finite number >= 0; got {lambda_b}")
    if lambda_b > 0 and not bias:
        raise ValueError("lambda_b > 0 needs bias=True")
    choice = resolve_loss(loss, alpha=alpha) if alpha is not None else resolve_loss(loss)
    rng = rng if rng is not None else numpy_generator(seed, "theory.ufm")
    n = n_cls * k
    labels = np.repeat(np.arange(n_cls), k)
    labels_t = torch.from_numpy(labels)
    nw, nh, nb = n_cls * d, n * d, (n_cls if bias else 0)
    lower = np.full(nw + nh + nb, -np.inf)
    if positive:
        lower[nw : nw + nh] = 0.0
    upper = np.full_like(lower, np.inf)

    def split(x):
        w = x[:nw].reshape(n_cls, d)
        h = x[nw : nw + nh].reshape(n, d)
        b = x[nw + nh :] if bias else None
        return w, h, b

    def objective(t: torch.Tensor) -> torch.Tensor:
        w, h, b = split(t)
        return ufm_objective(w, h, labels_t, loss=choice, lambda_w=lambda_w, lambda_h=lambda_h, bias=b, lambda_b=lambda_b)[0]

    fg = torch_fg(objective)
    best = None
    start_objs = []
    for _ in range(starts):
        w0 = rng.normal(0.0, init_scale, size=(n_cls, d))
        h0 = rng.normal(0.0, init_scale, size=(n, d))
        if positive:
            h0 = np.abs(h0)
        x0 = np.concatenate([w0.ravel(), h0.ravel(), np.zeros(nb)])
        out = minimize_bounded(fg, x0, lower=lower, upper=upper, tol=tol, max_iter=max_iter)
        start_objs.append(out.fun)
        if best is None or out.fun < best.fun:
            best = out
    assert best is not None
    w, h, b = split(best.x)
    with torch.no_grad():
        _, data = ufm_objective(
            torch.from_numpy(w), torch.from_numpy(h), labels_t, loss=choice,
            lambda_w=lambda_w, lambda_h=lambda_h, bias=None if b is None else torch.from_numpy(b), lambda_b=lambda_b,
        )
    struct = {**_engine_metrics(h, labels, w, b), **structure(h, labels, w, b)}
    settings = {
        "num_classes": n_cls, "per_class": k, "dim": d, "lambda_w": lambda_w, "lambda_h": lambda_h,
        "loss": choice.label(), "positive": positive, "bias": bias, "lambda_b": lambda_b,
        "starts": starts, "tol": tol, "seed": seed,
    }
    cf = closed_form(
        num_classes=n_cls, per_class=k, lambda_w=lambda_w, lambda_h=lambda_h, loss=choice.key,
        alpha=choice.params.get("alpha"), positive=positive, bias=bias, lambda_b=lambda_b,
    ) if choice.key in ("ce", "ls", "mse") else None
    return UFMResult(
        weight=w.copy(), features=h.copy(), labels=labels, bias=None if b is None else b.copy(),
        objective=best.fun, loss_value=float(data), margin=struct["margin_mean"],
        feature_norm=float(np.linalg.norm(h) / math.sqrt(n)), weight_norm=float(np.linalg.norm(w) / math.sqrt(n_cls)),
        converged=best.converged, pg_norm=best.pg_norm, iterations=best.iterations,
        start_objectives=start_objs, structure=struct, closed_form=cf, settings=settings,
    )


def probe_dead_class(
    *,
    num_classes: int,
    per_class: int,
    lambda_w: float,
    lambda_h: float,
    loss: str = "ce",
    alpha: float | None = None,
    dim: int | None = None,
    bias: bool = False,
    lambda_b: float = 0.0,
    dead: int | None = None,
    starts: int = 8,
    trials: int = 8,
    perturb: float = 1e-4,
    seed: int = 0,
    tol: float = 1e-8,
    gap: float = 1e-7,
) -> dict[str, Any]:
    """Is the "dead class" configuration of the positive UFM a global minimum, a local one, or neither?

    Dead class: every feature of class ``dead`` (default the last) sits at 0. Procedure
    (numerical, float64):

    1. the best objective over ``starts`` random starts of :func:`solve_ufm` and the closed form
       give the global value ``f*`` (a class is reported dead in a solution when its mean
       feature has norm < 1e-3 of the largest class mean's);
    2. the dead-class optimum ``f_dead``: the same problem with class ``dead``'s features held
       at 0 (upper bound 0), from the best random-start solution with those features zeroed;
    3. ``trials`` times, that point plus a random feasible perturbation of relative size
       ``perturb`` (features stay >= 0) is re-solved without the restriction.

    ``kkt_violation``: the largest negative gradient component of the full problem on the held
    features at the dead point (> 0: moving those features off 0 decreases the objective at
    first order). ``status``: ``"global minimum"`` if ``f_dead <= f* + gap``; else ``"local
    minimum"`` if ``kkt_violation <= tol`` and no perturbed re-solve ends below ``f_dead - gap``;
    else ``"not a local minimum"`` (first-order descent, or a perturbation escapes: a saddle).
    Numerical evidence at the stated tolerances, not a proof. Returns a JSON-ready dict.
    """
    res = solve_ufm(num_classes=num_classes, per_class=per_class, lambda_w=lambda_w, lambda_h=lambda_h, dim=dim,
                    loss=loss, alpha=alpha, positive=True, bias=bias, lambda_b=lambda_b, starts=starts, seed=seed,
                    tol=tol)
    n_cls, k, d = int(num_classes), int(per_class), res.weight.shape[1]
    if dead is None:  # the class the best random-start solution left dead, if any; else the last
        norms = [np.linalg.norm(res.features[res.labels == c].mean(axis=0)) for c in range(n_cls)]
        low = [c for c in range(n_cls) if norms[c] < 1e-3 * max(max(norms), 1e-300)]
        dead = low[0] if len(low) == 1 else n_cls - 1
    dead = int(dead)
    if not 0 <= dead < n_cls:
        raise ValueError(f"dead must be a class index in [0, {n_cls}); got {dead}")
    if trials < 1 or not perturb > 0:
        raise ValueError(f"trials must be >= 1 and perturb > 0; got {trials}, {perturb}")
    choice = resolve_loss(loss, alpha=alpha) if alpha is not None else resolve_loss(loss)
    labels = res.labels
    labels_t = torch.from_numpy(labels)
    nw, nh, nb = n_cls * d, n_cls * k * d, (n_cls if bias else 0)

    def split(x):
        return x[:nw].reshape(n_cls, d), x[nw : nw + nh].reshape(n_cls * k, d), (x[nw + nh :] if bias else None)

    def objective(t: torch.Tensor) -> torch.Tensor:
        w, h, b = split(t)
        return ufm_objective(w, h, labels_t, loss=choice, lambda_w=lambda_w, lambda_h=lambda_h, bias=b,
                             lambda_b=lambda_b)[0]

    fg = torch_fg(objective)
    lower = np.full(nw + nh + nb, -np.inf)
    lower[nw : nw + nh] = 0.0
    upper = np.full_like(lower, np.inf)
    # the restricted problem: class `dead`'s features removed from the variables (held at 0)
    free = np.ones(nw + nh + nb, dtype=bool)
    free[nw : nw + nh].reshape(n_cls * k, d)[labels == dead] = False
    full = np.concatenate([res.weight.ravel(), res.features.ravel(), res.bias if bias else np.zeros(0)])
    full[~free] = 0.0

    def fg_held(y):
        x = np.zeros(free.size)
        x[free] = y
        f, g = fg(x)
        return f, g[free]

    held = minimize_bounded(fg_held, full[free], lower=lower[free], upper=upper[free], tol=tol)
    x_dead = np.zeros(free.size)
    x_dead[free] = held.x
    _, g_dead = fg(x_dead)
    # first-order (KKT) test of the full problem at the dead point: the held features sit on
    # their bound 0, so a negative gradient component there is a feasible descent direction
    kkt_violation = float(max(0.0, -g_dead[~free].min()))

    def dead_classes(x) -> list[int]:
        h = split(x)[1]
        norms = np.array([np.linalg.norm(h[labels == c].mean(axis=0)) for c in range(n_cls)])
        return [int(c) for c in np.flatnonzero(norms < 1e-3 * max(norms.max(), 1e-300))]

    rng = numpy_generator(seed, "theory.ufm.dead_class")
    scale = max(float(np.abs(x_dead).max()), 1e-12)
    escapes = []
    for _ in range(trials):
        x = x_dead + perturb * scale * rng.normal(size=x_dead.size)
        x[nw : nw + nh] = np.abs(x[nw : nw + nh] - x_dead[nw : nw + nh]) + x_dead[nw : nw + nh]
        out = minimize_bounded(fg, x, lower=lower, upper=upper, tol=tol)
        escapes.append({"objective": float(out.fun), "dead_classes": dead_classes(out.x), "converged": out.converged})
    cf = res.closed_form
    best = min([res.objective] + ([cf.objective] if cf is not None else []))
    if held.fun <= best + gap:
        status = "global minimum"
    elif kkt_violation <= tol and all(e["objective"] >= held.fun - gap for e in escapes):
        status = "local minimum"
    else:
        status = "not a local minimum"
    return {
        "settings": {"num_classes": n_cls, "per_class": k, "dim": d, "lambda_w": lambda_w, "lambda_h": lambda_h,
                     "loss": choice.label(), "bias": bias, "lambda_b": lambda_b, "dead": dead, "starts": starts,
                     "trials": trials, "perturb": perturb, "seed": seed},
        "status": status,
        "dead_objective": float(held.fun),
        "dead_converged": bool(held.converged),
        "kkt_violation": kkt_violation,
        "global_objective": float(best),
        "closed_form_objective": None if cf is None else float(cf.objective),
        "start_objectives": [float(v) for v in res.start_objectives],
        "best_start_dead_classes": dead_classes(np.concatenate([res.weight.ravel(), res.features.ravel(),
                                                                res.bias if bias else np.zeros(0)])),
        "perturbed": escapes,
        "lowest_perturbed": float(min(e["objective"] for e in escapes)),
    }
