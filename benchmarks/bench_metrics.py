"""Metrics engine vs a naive baseline, measured in the same run.

Cases (streamed in batches of 1,024, float32 features as a network emits them):
  A: n = 50,000,  d = 512,  C = 10
  B: n = 100,000, d = 2048, C = 100

nclab: the full suite (NC1-NC4, CDNV, accuracy, ECE, memorization, dilation)
through ``evaluate_stream`` — two passes, ``within="projected"`` (default) and
``within="full"`` (Chan d×d scatter).
Baseline: what common research code does — class means, then a per-sample loop
of rank-1 Σ_W updates in float64 numpy, then ``scipy.linalg.pinv(Σ_B)``. For
case B the baseline loop is timed on a prefix and extrapolated linearly (it is
linear in n); the line says so.
Peak memory: the engine's peak RSS for n and 4n samples (fresh processes,
batches generated on the fly), to show it does not grow with n.

Usage: python benchmarks/bench_metrics.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import multiprocessing as mp
import time

import numpy as np
import scipy.linalg
import torch

from nclab.metrics import evaluate_stream

BATCH = 1024


def make_data(n, d, C, seed=0):
    rng = np.random.default_rng(seed)
    mu = np.abs(rng.normal(size=(C, d))).astype(np.float32) * 2
    y = rng.integers(0, C, n)
    yc = y.copy()
    flip = rng.random(n) < 0.2
    y[flip] = (y[flip] + 1) % C
    x = np.abs(mu[yc] + rng.normal(size=(n, d)).astype(np.float32))
    W = rng.normal(size=(C, d)).astype(np.float32)
    b = rng.normal(size=C).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(yc), torch.from_numpy(W), torch.from_numpy(b)


def nclab_suite(x, y, yc, W, b, C, within):
    def batches():
        for i in range(0, len(y), BATCH):
            yield {"features": x[i:i + BATCH], "labels": y[i:i + BATCH], "clean_labels": yc[i:i + BATCH]}

    return evaluate_stream(batches, num_classes=C, weight=W, bias=b, within=within, cache_bytes=0)


def naive_nc1(x, y, C, limit=None):
    """Per-sample rank-1 Σ_W updates + scipy pinv; returns (nc1 or None, seconds, samples looped)."""
    xn = x.numpy().astype(np.float64)
    yn = y.numpy()
    t0 = time.perf_counter()
    means = np.stack([xn[yn == c].mean(0) for c in range(C)])
    d = xn.shape[1]
    Sw = np.zeros((d, d))
    m = len(yn) if limit is None else min(limit, len(yn))
    t_loop = time.perf_counter()
    for i in range(m):
        v = xn[i] - means[yn[i]]
        Sw += np.outer(v, v)
    loop = time.perf_counter() - t_loop
    Sw /= m
    Mc = means - xn.mean(0)
    Sb = Mc.T @ Mc / C
    nc1 = np.trace(Sw @ scipy.linalg.pinv(Sb)) / C
    total = time.perf_counter() - t0
    if m < len(yn):  # extrapolate the loop linearly to n
        total += loop * (len(yn) / m - 1)
        return None, total, m
    return nc1, total, m


def _hwm_mib() -> float:
    """Peak resident memory of this process (VmHWM; unlike ru_maxrss it is not inherited over exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_child(n, d, C, threads, q):
    torch.set_num_threads(threads)
    rng = np.random.default_rng(1)
    mu = np.abs(rng.normal(size=(C, d))).astype(np.float32)

    def batches():
        g = np.random.default_rng(2)
        for i in range(0, n, BATCH):
            m = min(BATCH, n - i)
            yb = g.integers(0, C, m)
            yield {"features": torch.from_numpy(mu[yb] + g.normal(size=(m, d)).astype(np.float32)),
                   "labels": torch.from_numpy(yb)}

    base = _hwm_mib()
    evaluate_stream(batches, num_classes=C, cache_bytes=0)
    q.put((base, _hwm_mib()))


def peak_rss(n, d, C, threads):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_rss_child, args=(n, d, C, threads, q))
    p.start()
    base, peak = q.get()
    p.join()
    return base, peak  # MiB


def run_case(name, n, d, C, baseline_limit):
    x, y, yc, W, b = make_data(n, d, C)
    nclab_suite(x[:BATCH * 2], y[:BATCH * 2], yc[:BATCH * 2], W, b, C, "projected")  # warm-up
    t = time.perf_counter()
    res = nclab_suite(x, y, yc, W, b, C, "projected")
    t_proj = time.perf_counter() - t
    t = time.perf_counter()
    res_full = nclab_suite(x, y, yc, W, b, C, "full")
    t_full = time.perf_counter() - t
    nc1_naive, t_naive, looped = naive_nc1(x, y, C, limit=baseline_limit)
    print(f"case {name}: n={n:,} d={d} C={C}")
    print(f"  nclab full suite, projected : {t_proj:8.3f} s")
    print(f"  nclab full suite, full Σ_W  : {t_full:8.3f} s")
    note = "" if looped == n else f"  (loop timed on {looped:,} samples, extrapolated)"
    print(f"  naive baseline (NC1 only)   : {t_naive:8.3f} s{note}")
    print(f"  speed-up vs baseline        : {t_naive / t_proj:8.1f}x (projected), {t_naive / t_full:.1f}x (full)")
    if nc1_naive is not None:
        print(f"  NC1 nclab {res['nc1']:.10g} vs naive {nc1_naive:.10g} (rel diff {abs(res['nc1'] - nc1_naive) / nc1_naive:.1e})")
    print(f"  NC1 projected vs full rel diff {abs(res['nc1'] - res_full['nc1']) / res['nc1']:.1e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="case A only")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the per-batch GEMMs are small, and on a shared 2-core "
                         "machine extra OpenMP threads spin and slow everything down; the baseline is single-threaded)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    run_case("A", 50_000, 512, 10, baseline_limit=None)
    if not args.quick:
        run_case("B", 100_000, 2048, 100, baseline_limit=2_000)
    base1, p1 = peak_rss(50_000, 512, 10, args.threads)
    base4, p4 = peak_rss(200_000, 512, 10, args.threads)
    print(f"peak RSS growth while streaming (case A shape): n=50,000 -> +{p1 - base1:.0f} MiB; "
          f"n=200,000 -> +{p4 - base4:.0f} MiB (process baseline {base1:.0f} MiB; the data would be "
          f"{200_000 * 512 * 4 / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()
