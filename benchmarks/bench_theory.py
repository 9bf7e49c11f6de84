"""Benchmark of the theory solvers (issue 4).

1. Positive UFM, N=10, K=10, d=16, CE, lambda_W = lambda_H = 5e-3, one start, to a
   projected-gradient 2-norm of 1e-8 (target < 2 s); baseline in the same run: plain projected
   gradient descent with a backtracking (Armijo) step, same start, same stopping rule, capped
   at 20000 iterations.
2. M-D sweep, N=2, 20 eta x (CE + 9 LS alphas) = 200 points, lambda = 0.5, 2 starts each,
   on ``--workers`` processes (target < 60 s on 2 cores); baseline: the per-point time of the
   same solves run serially on the first 10 points, extrapolated.

Run: ``.venv/bin/python benchmarks/bench_theory.py [--workers 2] [--quick]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def bench_ufm() -> None:
    from nclab.seeding import numpy_generator
    from nclab.theory._solver import projected_gradient, resolve_loss, single_torch_thread, torch_fg
    from nclab.theory.ufm import closed_form, solve_ufm, ufm_objective

    kw = dict(num_classes=10, per_class=10, dim=16, lambda_w=5e-3, lambda_h=5e-3)
    solve_ufm(num_classes=3, per_class=2, lambda_w=5e-3, lambda_h=5e-3, starts=1)  # warm-up (imports, JIT-free)
    t0 = time.perf_counter()
    res = solve_ufm(**kw, starts=1, seed=0, tol=1e-8)
    t_ours = time.perf_counter() - t0
    cf = closed_form(num_classes=10, per_class=10, lambda_w=5e-3, lambda_h=5e-3)

    # baseline: projected gradient descent with Armijo backtracking, same first start
    rng = numpy_generator(0, "theory.ufm")
    n, d, c = 100, 16, 10
    w0 = rng.normal(0, 0.5, (c, d))
    h0 = np.abs(rng.normal(0, 0.5, (n, d)))
    x = np.concatenate([w0.ravel(), h0.ravel()])
    lower = np.concatenate([np.full(c * d, -np.inf), np.zeros(n * d)])
    upper = np.full_like(lower, np.inf)
    loss = resolve_loss("ce")
    labels = torch.arange(c).repeat_interleave(10)

    def obj(t):
        return ufm_objective(t[: c * d].view(c, d), t[c * d :].view(n, d), labels, loss=loss,
                             lambda_w=5e-3, lambda_h=5e-3)[0]

    fg = torch_fg(obj)
    t0 = time.perf_counter()
    step, it = 1.0, 0
    with single_torch_thread():
        f, g = fg(x)
        pgn = np.linalg.norm(projected_gradient(x, g, lower, upper))
        while pgn > 1e-8 and it < 20000:
            while True:
                xn = np.clip(x - step * g, lower, upper)
                fn, gn = fg(xn)
                if fn <= f - 1e-4 * g @ (x - xn):
                    break
                step *= 0.5
            x, f, g = xn, fn, gn
            step *= 1.5
            it += 1
            pgn = np.linalg.norm(projected_gradient(x, g, lower, upper))
    t_pgd = time.perf_counter() - t0
    print(f"UFM N=10 K=10 d=16 positive CE, one start, ||pg||_2 <= 1e-8")
    print(f"  ours (L-BFGS-B + restarts): {t_ours:.3f} s, ||pg||={res.pg_norm:.1e}, converged={res.converged}, "
          f"rel. objective error {abs(res.objective - cf.objective) / cf.objective:.1e}")
    print(f"  baseline projected GD (Armijo): {t_pgd:.3f} s, {it} iterations, ||pg||={pgn:.1e}, "
          f"objective gap {f - cf.objective:.1e}")
    print(f"  speed-up vs baseline: {t_pgd / t_ours:.1f}x (baseline {'reached' if pgn <= 1e-8 else 'did NOT reach'} the tolerance)")


def bench_sweep(workers: int, quick: bool) -> None:
    from nclab.theory.md_model import md_grid, md_sweep

    etas = np.linspace(0.0, 0.4, 20 if not quick else 4).tolist()
    alphas = np.linspace(0.05, 0.45, 9).tolist() if not quick else [0.1]
    losses = [("ce", None)] + [("ls", a) for a in alphas]
    points = md_grid(etas=etas, losses=losses, expressivities=[0.5], starts=2)
    t0 = time.perf_counter()
    md_sweep(points[:10])
    t_serial10 = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = md_sweep(points, workers=workers)
    t_sweep = time.perf_counter() - t0
    conv = np.mean([r["converged"] for r in rows])
    est = t_serial10 / 10 * len(points)
    print(f"M-D sweep: {len(etas)} eta x {len(losses)} losses = {len(points)} points, 2 starts each, {workers} worker(s)")
    print(f"  ours: {t_sweep:.1f} s ({t_sweep / len(points) * 1e3:.0f} ms/point), converged {conv:.0%}")
    print(f"  baseline serial (10 points, extrapolated): {est:.1f} s; ratio {est / t_sweep:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a 4 x 2 sweep instead of 20 x 10")
    args = ap.parse_args()
    bench_ufm()
    bench_sweep(args.workers, args.quick)


if __name__ == "__main__":
    main()
