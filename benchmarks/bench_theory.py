"""Benchmark of the theory solvers (issue 4).

1. Positive UFM, N=10, K=10, d=16, CE, lambda_W = lambda_H = 5e-3, one start, to a
   projected-gradient 2-norm of 1e-8 (target < 2 s); baseline in the same run: plain projected
   gradient descent with a backtracking (Armijo) step, same start, same stopping rule, capped
   at 20000 iterations.
2. M-D sweep, N=2, 20 eta x (CE + 9 LS alphas) = 200 points, lambda = 0.5, 2 starts each
   (target < 60 s on 2 cores), with the analytic numpy objective (the default for CE/LS),
   serially and on ``--workers`` processes; baseline in the same run: the torch-autograd
   objective (``backend="torch"``) on a 10-point subset spread over the grid, run serially and
   extrapolated, plus the fast path on that same subset for a like-for-like ratio.
3. Fitting the soft-constraint M-D model to CE data (``nclab.theory.md_fit``): data generated
   by the model itself (lambda = 0.8, scale 1.3) at 4 noise rates; ours = a 7-point log table,
   refined near the fit and interpolated, plus 200 refits of jittered targets on the same table;
   baseline in the same run: a dense 60-point table (same model solves), compared on time and on
   the error of the recovered lambda.

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
    print("UFM N=10 K=10 d=16 positive CE, one start, ||pg||_2 <= 1e-8")
    print(f"  ours (L-BFGS-B + restarts): {t_ours:.3f} s, ||pg||={res.pg_norm:.1e}, converged={res.converged}, "
          f"rel. objective error {abs(res.objective - cf.objective) / cf.objective:.1e}")
    print(f"  baseline projected GD (Armijo): {t_pgd:.3f} s, {it} iterations, ||pg||={pgn:.1e}, "
          f"objective gap {f - cf.objective:.1e}")
    print(f"  speed-up vs baseline: {t_pgd / t_ours:.1f}x (baseline {'reached' if pgn <= 1e-8 else 'did NOT reach'} the tolerance)")


def bench_fit() -> None:
    import math

    from nclab.theory.md_fit import fit_lambda, model_curves, refine, tabulate

    etas = [0.05, 0.1, 0.15, 0.2]
    cur = model_curves(etas, expressivity=0.8)
    m = 1.3 * np.array([c["memorization"] for c in cur])
    d = 1.3 * np.array([c["dilation"] for c in cur])
    rng = np.random.default_rng(0)
    boot = np.stack([m, d]) * (1 + rng.normal(0, 0.02, size=(200, 2, len(etas))))  # 200 jittered target sets
    t0 = time.perf_counter()
    table = tabulate(etas, np.geomspace(0.02, 4.0, 7), alpha=0.1)
    table = refine(table, float(fit_lambda(table, m, d)[0][0]))
    lam = float(fit_lambda(table, m, d)[0][0])
    lam_b = fit_lambda(table, boot[:, 0], boot[:, 1])[0]
    t_ours = time.perf_counter() - t0
    # baseline: a dense 60-point table of direct solves (CE and LS), no refinement
    t0 = time.perf_counter()
    grid = np.exp(np.linspace(math.log(0.02), math.log(4.0), 60))
    dense = tabulate(etas, grid, alpha=0.1)
    lam_grid = float(fit_lambda(dense, m, d)[0][0])
    t_grid = time.perf_counter() - t0
    print("M-D fit to model-generated CE data (lambda 0.8, scale 1.3, 4 noisy rates), soft constraint")
    print(f"  ours (7-point table, refined, interpolated; + 200 bootstrap refits): {t_ours:.2f} s, lambda {lam:.5f} "
          f"(error {abs(lam - 0.8):.1e}); refits' lambda 2.5-97.5%: {np.nanquantile(lam_b, 0.025):.3f}-"
          f"{np.nanquantile(lam_b, 0.975):.3f}")
    print(f"  baseline dense 60-point table: {t_grid:.2f} s, lambda {lam_grid:.5f} (error {abs(lam_grid - 0.8):.1e}); "
          f"time ratio {t_grid / t_ours:.1f}x")


def bench_sweep(workers: int, quick: bool) -> None:
    from nclab.theory.md_model import md_grid, md_sweep

    etas = np.linspace(0.0, 0.4, 20 if not quick else 4).tolist()
    alphas = np.linspace(0.05, 0.45, 9).tolist() if not quick else [0.1]
    losses = [("ce", None)] + [("ls", a) for a in alphas]
    points = md_grid(etas=etas, losses=losses, expressivities=[0.5], starts=2)
    # a subset spread over losses and etas (every 19th point) for the slow torch baseline
    subset = points[:: max(1, len(points) // 10 - 1)][:10]
    md_sweep([{**points[1], "backend": "torch"}])  # warm-up: imports, first-call costs
    t0 = time.perf_counter()
    rows_torch = md_sweep([{**p, "backend": "torch"} for p in subset])
    t_torch_sub = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows_fast_sub = md_sweep(subset)
    t_fast_sub = time.perf_counter() - t0
    dev = max(abs(a[k] - b[k]) for a, b in zip(rows_fast_sub, rows_torch)
              for k in ("memorization", "dilation", "objective", "test_error"))
    t0 = time.perf_counter()
    rows_serial = md_sweep(points)
    t_serial = time.perf_counter() - t0
    t_par = t_pool = float("nan")
    if workers > 1:
        t0 = time.perf_counter()
        rows = md_sweep(points, workers=workers)  # spawns a pool only if serial is projected > 20 s
        t_par = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows_pool = md_sweep(points, workers=workers, serial_seconds=0.0)  # always the pool
        t_pool = time.perf_counter() - t0
        assert all(a["objective"] == b["objective"] == c["objective"]
                   for a, b, c in zip(rows, rows_pool, rows_serial))
    conv = np.mean([r["converged"] for r in rows_serial])
    est_torch = t_torch_sub / len(subset) * len(points)
    best = min(t_serial, t_par, t_pool) if workers > 1 else t_serial
    print(f"M-D sweep: {len(etas)} eta x {len(losses)} losses = {len(points)} points, 2 starts each")
    print(f"  subset of {len(subset)} points, serial: torch autograd {t_torch_sub:.2f} s, "
          f"numpy analytic {t_fast_sub:.2f} s; ratio {t_torch_sub / t_fast_sub:.1f}x; "
          f"max |difference| of M, D, objective, error {dev:.1e}")
    print(f"  fast path, full sweep: serial {t_serial:.1f} s ({t_serial / len(points) * 1e3:.0f} ms/point)"
          + (f", --workers {workers} {t_par:.1f} s (pool only if serial is projected > 20 s), "
             f"forced {workers}-process pool {t_pool:.1f} s" if workers > 1 else "")
          + f"; converged {conv:.0%}")
    print(f"  torch path, full sweep serial (subset extrapolated): {est_torch:.1f} s; "
          f"ratio {est_torch / best:.1f}x vs the best fast-path time ({best:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a 4 x 2 sweep instead of 20 x 10")
    args = ap.parse_args()
    bench_ufm()
    bench_sweep(args.workers, args.quick)
    bench_fit()


if __name__ == "__main__":
    main()
