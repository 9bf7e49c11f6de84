"""The memorization-dilation (M-D) model — OUR reconstruction (``docs/theory-md-model.md``).

The paper's own statement of the model is not available to us; this is the project's
formulation, made concrete as follows (every choice below is ours):

Data. N classes, K samples per class (K only scales the feature regularizer, as in the UFM),
a fraction ``eta`` of each class mislabeled, the wrong label uniform over the other N-1 classes.

Variables. Classifier ``W`` (N x d) [and bias ``b``]; unshifted class centres ``g_c >= 0``
(d-vectors); for every ordered pair c != c' the unshifted feature ``e_{cc'} >= 0`` of the
samples of true class c labelled c'; a scalar ``s >= 0``.

Positivity (our choice; the model assumes non-negative features). Every modeled feature is
shifted by ``r 1`` (1 = all-ones): centres ``h_c = g_c + r 1``, noisy features
``f_{cc'} = e_{cc'} + r 1``. Then the clean spread points below satisfy
``h_c - r e_j >= 0`` and all features are >= 0 by construction (``min_feature`` in every row
checks it). The shift is the cheapest way to keep a mean-zero spread of radius r inside the
positive orthant; it costs norm (the regularizer sees it) and is logit-neutral when
``W 1 = 0`` (the symmetric binary solution). Alternatives (spreading only along feasible
coordinates) make the objective non-smooth; we did not take them.

Clean features. The clean samples of class c sit at the 2d points ``h_c +/- r e_j``
(j = 1..d): spread by r around ``h_c`` with mean ``h_c`` (a degree-3 cubature of the sphere
of radius r).

Memorization / dilation. ``M = sqrt(mean_{c != c'} ||f_{cc'} - h_c||^2)`` (the RMS
memorization; equal to the RMS of ``e_{cc'} - g_c``, so M does not depend on r), ``D = r``.
Limited expressivity, two variants (``constraint``):

* ``"hard"``: ``r >= lambda * M``, enforced as ``r = lambda*M + s``. With nothing in the
  objective rewarding dilation the bound is always active, so ``D = lambda M`` exactly and
  the D-against-M slope is lambda for every loss.
* ``"soft"``: ``r = s`` free, plus the cost ``(mu/2) max(0, lambda M - r)^2`` (``penalty`` = mu).
  Then r settles where the loss's marginal cost of dilation balances the penalty, r <= lambda M,
  so D/M can depend on the loss; mu -> infinity recovers ``"hard"``.

Rows report ``expressivity_slack = r - lambda M`` and ``constraint_binds`` (slack <= 1e-6 max(1, r):
hard: the bound is active; soft: the cost is active).

Objective::

    (1 - eta) * mean_{c, points} L(W x + b, c) + eta * mean_{c != c'} L(W f_{cc'} + b, c')
    + (lambda_W/2)||W||^2 + (lambda_H/2) N K [ (1-eta) mean_c(||h_c||^2 + r^2)
                                               + eta mean_{c != c'} ||f_{cc'}||^2 ]
    [+ (lambda_b/2)||b||^2]  [+ (mu/2) max(0, lambda M - r)^2  (soft)]

i.e. the UFM objective of ``nclab.theory.ufm`` evaluated on this structured feature set (at
eta = 0, r = 0 it *is* the UFM objective of N classes with K samples each). ``L`` is any loss of
``nclab.losses``. At eta = 0 the noisy features are absent (M = 0). The problem is non-convex;
it is solved by L-BFGS-B from several seeded starts and the spread over starts is reported.
Objective and gradient: analytic float64 numpy (``nclab.theory._md_numpy``) for CE and LS,
torch autograd (``_torch_parts``, the reference) for the other losses; both compute the same
function (tests: to 1e-10 relative), the numpy one ~10x faster per evaluation.

Test-error proxy. The probability that a clean test feature ``h_c + r u`` is misclassified by
``argmax(W x + b)``, averaged over classes, with ``u`` uniform on the unit sphere
(``test_noise="sphere"``) or ``u ~ N(0, I/d)`` (``"gaussian"``, so ``E||u||^2 = 1``; the
default, because on the sphere the proxy is exactly 0 until r reaches the decision boundary).
Binary case: closed form (normal CDF, or the regularized incomplete beta for the sphere);
N > 2: Monte Carlo with a seeded generator, with its standard error.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import multiprocessing
import numpy as np
import torch
from scipy.special import betainc, ndtr

from nclab.seeding import numpy_generator
from nclab.theory._md_numpy import ANALYTIC_LOSSES, CONSTRAINTS, MDObjective
from nclab.theory._solver import minimize_bounded, resolve_loss, torch_fg
from nclab.theory.geometry import etf_error, orthogonal_frame_error

__all__ = ["MDResult", "best_alpha_by_eta", "dm_slopes", "md_grid", "md_sweep", "solve_md", "error_proxy",
           "validate_md_points"]

TEST_NOISES = ("gaussian", "sphere")
BACKENDS = ("auto", "numpy", "torch")


def error_proxy(
    weight: np.ndarray,
    centres: np.ndarray,
    radius: float,
    *,
    bias: np.ndarray | None = None,
    noise: str = "gaussian",
    samples: int = 200_000,
    rng: np.random.Generator | None = None,
    method: str = "auto",
) -> tuple[float, float]:
    """``(p, standard_error)``: P[argmax(W(h_c + r u) + b) != c], averaged over classes c.

    ``weight`` (N, d), ``centres`` (N, d) (row c = h_c), ``u`` as in the module docstring.
    Binary: exact, with ``a = w_c - w_c'``, ``g = a.h_c + b_c - b_c'``:
    gaussian ``Phi(-g sqrt(d) / (r ||a||))``; sphere ``P[t < -g/(r||a||)]`` where
    ``t = a.u/||a||`` has CDF ``I_{(1+s)/2}((d-1)/2, (d-1)/2)`` (d >= 2). Ties count as errors.
    N > 2: Monte Carlo with ``samples`` draws per class from ``rng``; standard error returned.
    ``method``: ``"auto"`` (exact when N = 2), ``"exact"`` (N = 2 only) or ``"mc"``.
    """
    if method not in ("auto", "exact", "mc"):
        raise ValueError(f"method must be 'auto', 'exact' or 'mc'; got {method!r}")
    if noise not in TEST_NOISES:
        raise ValueError(f"noise must be one of {TEST_NOISES}; got {noise!r}")
    if not (math.isfinite(radius) and radius >= 0):
        raise ValueError(f"radius must be a finite number >= 0; got {radius}")
    weight = np.asarray(weight, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    n_cls, d = weight.shape
    b = np.zeros(n_cls) if bias is None else np.asarray(bias, dtype=np.float64)
    if method == "exact" and n_cls != 2:
        raise ValueError(f"the exact test-error proxy needs N = 2 classes; got N = {n_cls}")
    if n_cls == 2 and method != "mc":
        errs = []
        for c in range(2):
            a = weight[c] - weight[1 - c]
            g = float(a @ centres[c] + b[c] - b[1 - c])
            an = float(np.linalg.norm(a))
            if radius == 0.0 or an == 0.0:
                errs.append(0.0 if g > 0 else 1.0)
                continue
            x = g / (radius * an)
            if noise == "gaussian":
                errs.append(float(ndtr(-x * math.sqrt(d))))
            elif d == 1:
                errs.append(float((x <= 1.0) * 0.5 + (x <= -1.0) * 0.5))
            else:
                s = min(max(-x, -1.0), 1.0)
                errs.append(float(betainc((d - 1) / 2, (d - 1) / 2, (1.0 + s) / 2)))
        return float(np.mean(errs)), 0.0
    if samples < 1000:
        raise ValueError(f"samples must be >= 1000 for a useful Monte Carlo estimate; got {samples}")
    rng = rng if rng is not None else numpy_generator(0, "theory.md.test")
    wrong = 0
    for c in range(n_cls):
        u = rng.standard_normal((samples, d))
        if noise == "sphere":
            u /= np.linalg.norm(u, axis=1, keepdims=True)
        else:
            u /= math.sqrt(d)
        z = (centres[c] + radius * u) @ weight.T + b
        zc = z[:, c].copy()
        z[:, c] = -np.inf
        wrong += int((z.max(axis=1) >= zc).sum())
    total = n_cls * samples
    p = wrong / total
    return p, math.sqrt(max(p * (1 - p), 1.0 / total) / total)


@dataclass
class MDResult:
    """A solved M-D model. Arrays: ``weight`` (N, d), ``bias`` (N,) or None, ``centres`` (N, d),
    ``noisy_features`` (N, N, d) with entry [c, c'] = f_{cc'} (the diagonal is unused: h_c)."""

    settings: dict[str, Any]
    memorization: float
    dilation: float
    objective: float
    training_loss: float
    clean_loss: float
    noisy_loss: float
    test_error: float
    test_error_se: float
    noisy_fit: float
    margin: float
    converged: bool
    pg_norm: float
    start_objectives: list[float]
    start_memorization: list[float]
    start_dilation: list[float]
    weight: np.ndarray
    bias: np.ndarray | None
    centres: np.ndarray
    noisy_features: np.ndarray
    geometry: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays): settings, outputs, spread over starts, geometry."""
        objs = np.asarray(self.start_objectives)
        return {
            **self.settings,
            "memorization": self.memorization,
            "dilation": self.dilation,
            "objective": self.objective,
            "training_loss": self.training_loss,
            "clean_loss": self.clean_loss,
            "noisy_loss": self.noisy_loss,
            "test_error": self.test_error,
            "test_error_se": self.test_error_se,
            "noisy_fit": self.noisy_fit,
            "margin": self.margin,
            "converged": self.converged,
            "pg_norm": self.pg_norm,
            "start_spread": float(objs.max() - objs.min()),
            "start_memorization_spread": float(np.ptp(self.start_memorization)),
            "start_dilation_spread": float(np.ptp(self.start_dilation)),
            **self.geometry,
        }


def validate_md_points(points, *, losses, num_classes: int, per_class: int, lambda_w: float, lambda_h: float,
                       starts: int, constraint: str, penalty: float) -> None:
    """Check a grid of :func:`md_grid` points before any solve (``ValueError`` naming the
    first bad argument): the losses and their parameters, every point's noise fraction and
    expressivity, the constraint and its penalty."""
    for name, val in losses:
        resolve_loss(name, gamma=val) if name == "focal" else resolve_loss(name, alpha=val)
    for p in points:
        _check_md(num_classes, per_class, p["eta"], p["expressivity"], lambda_w, lambda_h, 0.0, starts, None)
    if constraint not in CONSTRAINTS:
        raise ValueError(f"--constraint must be one of {', '.join(CONSTRAINTS)}; got {constraint!r}")
    if constraint == "soft" and not penalty > 0:
        raise ValueError(f"--penalty must be > 0; got {penalty}")


def _check_md(num_classes, per_class, eta, expressivity, lambda_w, lambda_h, lambda_b, starts, dim):
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes}")
    if int(per_class) != per_class or per_class < 1:
        raise ValueError(f"per_class must be an integer >= 1; got {per_class}")
    if not (0.0 <= eta < 1.0):
        raise ValueError(f"eta (noise fraction) must lie in [0, 1); got {eta}")
    if not (math.isfinite(expressivity) and expressivity >= 0):
        raise ValueError(f"expressivity (lambda) must be a finite number >= 0; got {expressivity}")
    for name, v in (("lambda_w", lambda_w), ("lambda_h", lambda_h)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0; got {v}")
    if not (math.isfinite(lambda_b) and lambda_b >= 0):
        raise ValueError(f"lambda_b must be a finite number >= 0; got {lambda_b}")
    if starts < 1:
        raise ValueError(f"starts must be >= 1; got {starts}")
    if dim is not None and dim < num_classes:
        raise ValueError(f"dim must be >= num_classes ({num_classes}); got {dim}")


def _torch_parts(problem: MDObjective, choice) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """Reference torch implementation of the objective: ``t -> (obj, data, clean, noisy, M, r)``.

    Same flat layout as ``problem`` (:class:`MDObjective`); gradients come from autograd.
    """
    n_cls, d, eta, expressivity = problem.n, problem.d, problem.eta, problem.lam
    lambda_w, lambda_h, lambda_b, k = problem.lambda_w, problem.lambda_h, problem.lambda_b, problem.k
    noisy = problem.noisy
    pairs = [(c, cp) for c in range(n_cls) for cp in range(n_cls) if cp != c]
    src = torch.tensor([p[0] for p in pairs])
    noisy_labels = torch.tensor([p[1] for p in pairs])
    clean_labels = torch.arange(n_cls).repeat_interleave(2 * d)
    eye = torch.eye(d, dtype=torch.float64)
    signs = torch.cat([eye, -eye])  # (2d, d): the directions +/- e_j

    def parts(t: torch.Tensor):
        w, b, g, e, s = problem.split(t)
        if noisy:
            delta = e - g[src]
            # tiny floor: sqrt is not differentiable at M = 0 (never optimal for eta > 0)
            mem = torch.sqrt((delta * delta).sum(dim=1).mean() + 1e-300)
        else:
            mem = torch.zeros((), dtype=t.dtype)
        r = s if problem.soft else expressivity * mem + s
        h = g + r  # the shift keeps every spread point h_c - r e_j >= 0
        pts = h[:, None, :] + r * signs[None, :, :]  # (N, 2d, d)
        logits = pts.reshape(-1, d) @ w.T
        if b is not None:
            logits = logits + b
        clean = choice.fn(logits, clean_labels)
        feat = (h * h).sum(dim=1).mean() + r * r
        if noisy:
            f = e + r
            nlog = f @ w.T + (b if b is not None else 0.0)
            nloss = choice.fn(nlog, noisy_labels)
            data = (1 - eta) * clean + eta * nloss
            feat = (1 - eta) * feat + eta * (f * f).sum(dim=1).mean()
        else:
            nloss = torch.zeros((), dtype=t.dtype)
            data = clean
        obj = data + 0.5 * lambda_w * (w * w).sum() + 0.5 * lambda_h * n_cls * k * feat
        if b is not None:
            obj = obj + 0.5 * lambda_b * (b * b).sum()
        if problem.soft:
            obj = obj + 0.5 * problem.mu * torch.clamp(expressivity * mem - r, min=0.0) ** 2
        return obj, data, clean, nloss, mem, r

    return parts


def solve_md(
    *,
    eta: float,
    expressivity: float,
    loss: str = "ce",
    alpha: float | None = None,
    gamma: float | None = None,
    num_classes: int = 2,
    per_class: int = 10,
    dim: int | None = None,
    lambda_w: float = 5e-3,
    lambda_h: float = 5e-3,
    bias: bool = False,
    lambda_b: float = 0.0,
    starts: int = 4,
    seed: int = 0,
    rng: np.random.Generator | None = None,
    tol: float = 1e-8,
    max_iter: int = 20000,
    init_scale: float = 0.5,
    test_noise: str = "gaussian",
    mc_samples: int = 200_000,
    backend: str = "auto",
    constraint: str = "hard",
    penalty: float = 10.0,
) -> MDResult:
    """Solve the M-D model (module docstring) from ``starts`` seeded random starts; keep the best.

    ``expressivity`` is lambda in ``r >= lambda M``; ``dim`` defaults to N (the official code's
    feature dimension). Starts come from ``rng`` (default: stream ``"theory.md"`` of ``seed``, so
    every point of a sweep uses the same starts). The Monte Carlo test proxy (N > 2) draws from
    stream ``"theory.md.test"`` of ``seed``.

    ``backend`` computes the objective and gradient: ``"numpy"`` (analytic, ``_md_numpy``; CE and
    LS in closed form, any other loss through torch autograd on the logits only), ``"torch"``
    (full torch autograd, the reference) or ``"auto"`` (numpy for CE/LS, torch otherwise). Both
    compute the same function; results agree to solver tolerance.

    ``constraint``: ``"hard"`` enforces ``r >= lambda M`` exactly; ``"soft"`` replaces it by the
    cost ``(penalty/2) max(0, lambda M - r)^2`` (module docstring), so r may fall below lambda M.
    ``penalty`` is used by ``"soft"`` only.
    """
    _check_md(num_classes, per_class, eta, expressivity, lambda_w, lambda_h, lambda_b, starts, dim)
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}; got {constraint!r}")
    if constraint == "soft" and not (math.isfinite(penalty) and penalty > 0):
        raise ValueError(f"penalty (mu of the soft expressivity cost) must be a finite number > 0; got {penalty}")
    if test_noise not in TEST_NOISES:
        raise ValueError(f"test_noise must be one of {TEST_NOISES}; got {test_noise!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    choice = resolve_loss(loss, alpha=alpha, gamma=gamma)
    n_cls, k = int(num_classes), int(per_class)
    d = n_cls if dim is None else int(dim)
    rng = rng if rng is not None else numpy_generator(seed, "theory.md")
    if backend == "auto":
        backend = "numpy" if choice.key in ANALYTIC_LOSSES else "torch"
    problem = MDObjective(num_classes=n_cls, per_class=k, dim=d, eta=eta, expressivity=expressivity,
                          lambda_w=lambda_w, lambda_h=lambda_h, bias=bias, lambda_b=lambda_b, loss=choice,
                          constraint=constraint, penalty=penalty)
    if backend == "numpy":
        fg, parts = problem.fg, problem.parts
    else:
        tparts = _torch_parts(problem, choice)
        fg = torch_fg(lambda t: tparts(t)[0])

        def parts(x):
            with torch.no_grad():
                return tuple(float(v) for v in tparts(torch.from_numpy(x)))

    noisy = problem.noisy
    pairs = [(c, cp) for c in range(n_cls) for cp in range(n_cls) if cp != c]
    nw, nb, nc, nf = problem.nw, problem.nb, problem.nc, problem.nf
    lower = np.full(problem.size, -np.inf)
    lower[nw + nb :] = 0.0  # unshifted centres g, noisy features e and s are >= 0
    upper = np.full(problem.size, np.inf)
    split = problem.split
    outs = []
    for _ in range(starts):
        x0 = np.concatenate([
            rng.normal(0.0, init_scale, nw),
            np.zeros(nb),
            np.abs(rng.normal(0.0, init_scale, nc + nf)),
            [0.0],
        ])
        out = minimize_bounded(fg, x0, lower=lower, upper=upper, tol=tol, max_iter=max_iter)
        outs.append((out, list(parts(out.x))))
    best, (obj, data, clean, nloss, mem, r) = min(outs, key=lambda o: o[0].fun)
    w, b, _, _, _ = split(best.x)
    h, f, _, _ = problem.features(best.x)
    feats = np.repeat(h[:, None, :], n_cls, axis=1)
    if noisy:
        for i, (c, cp) in enumerate(pairs):
            feats[c, cp] = f[i]
    test_rng = numpy_generator(seed, "theory.md.test")
    p_err, p_se = error_proxy(w, h, r, bias=b, noise=test_noise, samples=mc_samples, rng=test_rng)
    logits_c = h @ w.T + (0.0 if b is None else b)
    other = logits_c.copy()
    np.fill_diagonal(other, -np.inf)
    margin = float(np.mean(np.diag(logits_c) - other.max(axis=1)))
    if noisy:
        nlog = f @ w.T + (0.0 if b is None else b)
        fit = float(np.mean(nlog.argmax(axis=1) == np.array([cp for _, cp in pairs])))
    else:
        fit = float("nan")
    # every modeled feature, computed literally (a check on the parameterization, not a restatement)
    spread = (h[:, None, :] - r * np.eye(d)[None, :, :]).ravel()
    min_feature = float(min(spread.min(), h.min(), f.min() if noisy else np.inf))
    slack = float(r - expressivity * mem)
    bind_tol = 1e-6 * max(1.0, r)
    hn = np.linalg.norm(h, axis=1)
    centre_dist = float(np.mean([np.linalg.norm(h[c] - h[cp]) for c, cp in pairs]))
    geometry = {
        "centre_norm": float(np.sqrt((hn**2).mean())),
        "weight_norm": float(np.linalg.norm(w) / math.sqrt(n_cls)),
        "orthogonal_frame_error": orthogonal_frame_error(h.T),
        "etf_error_weights": etf_error(w.T),
        "centre_distance": centre_dist,
        # scale-free versions: LS shrinks the whole configuration, so raw M and D mix scale and shape
        "memorization_normalized": mem / centre_dist if centre_dist > 0 else float("nan"),
        "dilation_normalized": r / centre_dist if centre_dist > 0 else float("nan"),
        "min_feature": min_feature,
        "expressivity_slack": slack,
        # hard: r = lambda M (the bound is active); soft: r <= lambda M (the cost is pulling r up)
        "constraint_binds": bool(noisy and slack <= bind_tol),
        "dm_ratio": r / mem if mem > 0 else float("nan"),
    }
    settings = {
        "num_classes": n_cls, "per_class": k, "dim": d, "eta": float(eta), "expressivity": float(expressivity),
        "loss": choice.key, "alpha": choice.alpha if choice.key in ("ls", "lr") else 0.0,
        "loss_label": choice.label(), "lambda_w": lambda_w, "lambda_h": lambda_h, "bias": bias,
        "lambda_b": lambda_b, "starts": starts, "seed": seed, "test_noise": test_noise,
        "constraint": constraint, "penalty": float(penalty) if constraint == "soft" else None,
    }
    return MDResult(
        settings=settings, memorization=mem, dilation=r, objective=obj, training_loss=data,
        clean_loss=clean, noisy_loss=nloss, test_error=p_err, test_error_se=p_se, noisy_fit=fit,
        margin=margin, converged=best.converged, pg_norm=best.pg_norm,
        start_objectives=[o[1][0] for o in outs], start_memorization=[o[1][4] for o in outs],
        start_dilation=[o[1][5] for o in outs], weight=w.copy(), bias=None if b is None else b.copy(),
        centres=h.copy(), noisy_features=feats, geometry=geometry,
    )


def md_grid(
    *,
    etas: Iterable[float],
    losses: Iterable[tuple[str, float | None]],
    expressivities: Iterable[float],
    **common: Any,
) -> list[dict[str, Any]]:
    """Cartesian grid of :func:`solve_md` keyword sets: losses (``(name, alpha)``) x lambdas x etas."""
    pts = []
    for name, alpha in losses:
        for lam in expressivities:
            for eta in etas:
                pts.append({**common, "loss": name, "alpha": alpha, "expressivity": float(lam), "eta": float(eta)})
    return pts


def _solve_point(kwargs: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)  # worker process only: tiny problems, threads just contend
    return solve_md(**kwargs).to_dict()


def md_sweep(
    points: Sequence[dict[str, Any]],
    *,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    serial_seconds: float = 20.0,
) -> list[dict[str, Any]]:
    """Solve every point (keyword sets of :func:`solve_md`) and return their ``to_dict()`` rows, in order.

    ``workers > 1`` solves in a process pool (workers forked from a ``forkserver`` that imports
    this module once; results do not depend on the number of workers since every point draws
    its own seeded streams). Starting the pool costs seconds (the server imports torch), so
    points are first solved in this process while the projected
    serial time of the points left (mean time so far x count left) stays <= ``serial_seconds``;
    only the rest, if any, goes to the pool (``serial_seconds=0``: the pool gets all but the
    first point). ``progress(done, total)`` is called after each point.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    if not serial_seconds >= 0:
        raise ValueError(f"serial_seconds must be >= 0; got {serial_seconds}")
    total = len(points)
    rows: list[dict[str, Any] | None] = [None] * total
    done = 0
    t0 = time.perf_counter()
    while done < total:
        rows[done] = solve_md(**points[done]).to_dict()
        done += 1
        if progress:
            progress(done, total)
        if workers > 1 and (time.perf_counter() - t0) / done * (total - done) > serial_seconds:
            break
    if done == total:
        return rows  # type: ignore[return-value]
    ctx = multiprocessing.get_context("forkserver")
    # read when this process's server starts (a sweep pool may have started it already: then
    # the workers import this module after the fork, as spawned ones would)
    ctx.set_forkserver_preload(["__main__", __name__])
    with ProcessPoolExecutor(max_workers=min(workers, total - done), mp_context=ctx) as pool:
        futures = {pool.submit(_solve_point, dict(points[i])): i for i in range(done, total)}
        for fut in as_completed(futures):
            rows[futures[fut]] = fut.result()
            done += 1
            if progress:
                progress(done, total)
    return rows  # type: ignore[return-value]


def best_alpha_by_eta(rows: Sequence[dict[str, Any]]) -> list[tuple[float, float, float]]:
    """``(eta, alpha*, error*)``: the smoothing minimizing the test-error proxy (CE counts as alpha = 0).

    Ties (e.g. several alphas with error 0) resolve to the smallest alpha.
    """
    by_eta: dict[float, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if r["loss"] in ("ce", "ls"):
            by_eta[float(r["eta"])].append((float(r["alpha"]), float(r["test_error"])))
    out = []
    for eta in sorted(by_eta):
        a, e = min(by_eta[eta], key=lambda t: (t[1], t[0]))
        out.append((eta, a, e))
    return out


def dm_slopes(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Least-squares slope of D on M across eta > 0, per (lambda, loss label): raw and normalized.

    ``{expressivity, loss_label, slope, slope_normalized, n}``; groups with < 2 noisy rows are left out.
    Under the hard constraint every slope is lambda; the soft variant lets them differ by loss.
    """
    groups: dict[tuple[float, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if float(r["eta"]) > 0:
            groups[(float(r["expressivity"]), str(r["loss_label"]))].append(r)
    out = []
    for (lam, label), rs in sorted(groups.items()):
        m = np.array([r["memorization"] for r in rs])
        if len(rs) < 2 or np.ptp(m) == 0:
            continue
        slope = float(np.polyfit(m, [r["dilation"] for r in rs], 1)[0])
        mn = np.array([r["memorization_normalized"] for r in rs])
        sn = float(np.polyfit(mn, [r["dilation_normalized"] for r in rs], 1)[0]) if np.ptp(mn) > 0 else float("nan")
        out.append({"expressivity": lam, "loss_label": label, "slope": slope, "slope_normalized": sn, "n": len(rs)})
    return out
