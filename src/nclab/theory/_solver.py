"""Shared numerics for the theory models: loss resolution and a bound-constrained solver.

The models are small (at most a few thousand float64 parameters), so we use scipy's
L-BFGS-B with box bounds and exact gradients from torch float64 autograd. L-BFGS-B's own
stopping test is on the sup-norm of the projected gradient and also stops on small relative
decrease; we run it with the decrease test switched off and then check *our* stated rule,
the Euclidean norm of the projected gradient

    pg_i = g_i                 if x_i is strictly inside its bounds,
    pg_i = min(g_i, 0)         if x_i sits on its lower bound,
    pg_i = max(g_i, 0)         if x_i sits on its upper bound,

restarting L-BFGS-B from its last point (fresh curvature memory) until ``||pg||_2 <= tol``
or the round / iteration budget is spent; ``converged`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import contextlib

import numpy as np
import torch
from scipy.optimize import minimize

try:  # ships with scikit-learn (a dependency); scoped, so no global state is touched
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

from nclab.losses import LOSSES, get_loss


@dataclass(frozen=True)
class LossChoice:
    """A resolved loss: registry key, its parameters and a callable ``(logits, labels) -> mean``."""

    key: str
    params: dict[str, float]
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    @property
    def alpha(self) -> float:
        """Smoothing parameter for LS/LR, 0 for every other loss (CE is LS(0))."""
        return float(self.params.get("alpha", 0.0))

    def label(self) -> str:
        """Short display name, e.g. ``ce`` or ``ls(0.1)``."""
        if not self.params:
            return self.key
        inner = ",".join(f"{v:g}" for v in self.params.values())
        return f"{self.key}({inner})"


def resolve_loss(loss: str, *, alpha: float | None = None, gamma: float | None = None) -> LossChoice:
    """Resolve a loss name of ``nclab.losses`` and its parameters.

    ``alpha`` is required for ``ls`` / ``lr`` (``ls`` with ``alpha = 0`` is CE and kept as
    ``ls`` so sweeps over alpha stay uniform); ``gamma`` for ``focal``. Passing a parameter
    the loss does not take is an error, so ``--alpha`` with ``ce`` never silently does nothing.
    """
    key = loss.lower()
    aliases = {"cross-entropy": "ce", "label-smoothing": "ls", "label-relaxation": "lr"}
    key = aliases.get(key, key)
    given = {k: v for k, v in (("alpha", alpha), ("gamma", gamma)) if v is not None}
    if key in LOSSES:
        wanted = LOSSES[key].params
        missing = [p for p in wanted if p not in given]
        if missing:
            raise ValueError(f"loss {key!r} needs {missing[0]} (e.g. --{missing[0]} 0.1)")
        extra = [p for p in given if p not in wanted]
        if extra:
            raise ValueError(f"loss {key!r} takes no parameter {extra[0]!r}")
    # get_loss validates the name (with a suggestion) and the parameter ranges.
    module = get_loss(key, **{k: float(v) for k, v in given.items()})
    return LossChoice(key=key, params={k: float(v) for k, v in given.items()}, fn=module)


@dataclass
class SolveOutcome:
    """Raw result of :func:`minimize_bounded`."""

    x: np.ndarray
    fun: float
    pg_norm: float
    converged: bool
    iterations: int
    evaluations: int


def projected_gradient(x: np.ndarray, g: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Projected gradient for box bounds (see module docstring); ``lower``/``upper`` may hold ±inf."""
    pg = g.copy()
    at_lo = x <= lower
    at_hi = x >= upper
    pg[at_lo] = np.minimum(g[at_lo], 0.0)
    pg[at_hi] = np.maximum(g[at_hi], 0.0)
    return pg


def minimize_bounded(
    fg: Callable[[np.ndarray], tuple[float, np.ndarray]],
    x0: np.ndarray,
    *,
    lower: np.ndarray,
    upper: np.ndarray,
    tol: float,
    max_iter: int = 20000,
    max_rounds: int = 10,
    memory: int = 20,
) -> SolveOutcome:
    """Minimize ``f`` over the box ``[lower, upper]`` with L-BFGS-B until ``||pg||_2 <= tol``.

    ``fg(x)`` returns ``(f(x), grad f(x))`` in float64. The start is clipped into the box.
    """
    if tol <= 0:
        raise ValueError(f"tol must be > 0; got {tol}")
    # L-BFGS-B's small dense BLAS calls get ~20x slower with a multi-threaded OpenBLAS.
    limit = threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()
    with limit, single_torch_thread():
        return _minimize_bounded(fg, x0, lower=lower, upper=upper, tol=tol, max_iter=max_iter,
                                 max_rounds=max_rounds, memory=memory)


@contextlib.contextmanager
def single_torch_thread():
    """Run torch single-threaded inside the block, restoring the previous setting after.

    The models' tensors are tiny; torch's intra-op pool only adds spin-wait overhead there
    (measured 30x slower per evaluation on a loaded 2-core machine).
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def _minimize_bounded(fg, x0, *, lower, upper, tol, max_iter, max_rounds, memory) -> SolveOutcome:
    x = np.clip(np.asarray(x0, dtype=np.float64), lower, upper)
    bounds = list(zip(np.where(np.isfinite(lower), lower, None), np.where(np.isfinite(upper), upper, None)))
    n = x.size
    iters = evals = 0
    f, g = fg(x)
    pg = projected_gradient(x, g, lower, upper)
    pgn = float(np.linalg.norm(pg))
    for _ in range(max_rounds):
        if pgn <= tol or iters >= max_iter:
            break
        res = minimize(
            fg,
            x,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={
                # sup-norm test scaled so that it implies (roughly) our 2-norm test;
                # ftol=0 disables the relative-decrease exit that stops far too early.
                "gtol": tol / np.sqrt(n),
                "ftol": 0.0,
                "maxiter": max_iter - iters,
                "maxcor": memory,
                "maxls": 50,
            },
        )
        iters += int(res.nit)
        evals += int(res.nfev)
        x_new = np.clip(res.x, lower, upper)
        f_new, g_new = fg(x_new)
        if not f_new < f:
            break  # a fresh L-BFGS-B round made no progress: we are at float64 precision
        x, f, g = x_new, f_new, g_new
        pg = projected_gradient(x, g, lower, upper)
        pgn = float(np.linalg.norm(pg))
    if not np.isfinite(f):
        raise FloatingPointError("objective became non-finite during the solve")
    return SolveOutcome(x=x, fun=float(f), pg_norm=pgn, converged=pgn <= tol, iterations=iters, evaluations=evals)


def torch_fg(objective: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """Wrap a float64 torch objective of a flat parameter vector as ``x -> (f, grad)`` for scipy."""

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).requires_grad_(True)
        f = objective(t)
        (grad,) = torch.autograd.grad(f, t)
        return float(f.detach()), grad.numpy().astype(np.float64, copy=True)

    return fg
