"""Stacked training vs one run at a time, through the real sweep path.

Cases (same configs, same thread count per run = 1, all measured in this one process):

* ``sequential``   — ``--executor inline``: one run after another (the baseline);
* ``2 workers``    — two processes, one run each at a time (``-j 2``);
* ``stacked``      — ``--stack K`` in one process (same single core as ``sequential``);
* ``stacked x2``   — two processes, each training a stack (``-j 2 --stack K/2``).

Workloads:

* ``small``  — the study's ``--scale small`` binary Fashion-MNIST run (MLP 3x256, 2-D
  features, 1000 images, batch 32), ``--runs`` seeds x {CE, LS}, a fixed ``--epochs``
  (no early stop, so every case does the same work);
* ``digits`` — 8 runs of a 3x256 MLP on binary digits (360 images).

For each case: wall time, runs per hour, the ratio to ``sequential``, and two limits:

* the arithmetic limit: the FLOPs a run needs (2 per multiply-add: forward + 2x backward
  per training sample, one forward per sample for the per-epoch eval-mode pass) divided by
  the measured single-thread GEMM throughput of this machine (x2 for the two-process cases);
* ``+opt``: that plus the time of the SGD-with-momentum update over a stack's state
  (parameters, gradients and momentum buffers of K runs: K times a solo run's, so it
  leaves the caches and is bound by memory bandwidth — batching cannot make it cheaper per
  run), measured with torch's fused kernel at the stack's size. It is the better
  estimate of what a stacked run can reach on this CPU.

    python benchmarks/bench_stacked.py [--workload small|digits|both] [--epochs 20] [--runs 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from nclab.store.index import RunStore  # noqa: E402
from nclab.sweep import InlineExecutor, LocalExecutor, SweepSpec, expand, run_sweep  # noqa: E402
from nclab.sweep.trainer import train_run  # noqa: E402


def spec_for(workload: str, *, epochs: int, runs: int) -> SweepSpec:
    if workload == "small":
        base = {"epochs": epochs, "batch_size": 32, "eval_every": epochs, "checkpoint_every": epochs, "threads": 1,
                "device": "cpu", "dataset": {"name": "fashion-mnist", "classes": [0, 1], "per_class": 500},
                "noise": {"kind": "symmetric_all", "rate": 0.2},
                "model": {"name": "mlp", "depth": 3, "width": 256}, "optim": {"lr": 0.05, "weight_decay": 5e-4},
                "schedule": {"name": "cosine"}}
        return SweepSpec.model_validate({"name": "bench-small", "base": base, "grid": {"loss.name": ["ce", "ls"]},
                                         "seeds": list(range(max(1, runs // 2)))})
    base = {"epochs": epochs, "batch_size": 32, "eval_every": epochs, "checkpoint_every": epochs, "threads": 1,
            "device": "cpu", "dataset": {"name": "digits", "classes": 2}, "noise": {"kind": "symmetric_all", "rate": 0.2},
            "model": {"name": "mlp", "depth": 3, "width": 256}, "optim": {"lr": 0.05}, "schedule": {"name": "cosine"}}
    return SweepSpec.model_validate({"name": "bench-digits", "base": base, "seeds": list(range(runs))})


def mlp_dims(config: dict, input_dim: int, n_classes: int) -> list[int]:
    """Layer widths of one run's MLP: input, hidden blocks, features, logits."""
    m = config["model"]
    d = m.get("feature_dim") or n_classes
    return [input_dim] + [m["width"]] * (m["depth"] - 1) + [d, n_classes]


def run_flops(config: dict, n_train: int, input_dim: int, n_classes: int) -> float:
    """Multiply-add FLOPs of one run: 6 per weight per training sample (forward + backward),
    2 per weight per sample for the eval-mode pass every epoch."""
    dims = mlp_dims(config, input_dim, n_classes)
    weights = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    return config["epochs"] * n_train * weights * (6 + 2)


def gemm_gflops(seconds: float = 1.0) -> float:
    """Single-thread float32 GEMM throughput at a size like the first layer's batch GEMMs."""
    torch.set_num_threads(1)
    a, b = torch.randn(256, 784), torch.randn(784, 256)
    for _ in range(20):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * 256 * 784 * 256 / (time.perf_counter() - t0) / 1e9


def run_params(config: dict, input_dim: int, n_classes: int) -> int:
    """Trainable parameters of one run's MLP (weights, biases, BatchNorm scale and shift)."""
    dims = mlp_dims(config, input_dim, n_classes)
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:])) + 2 * sum(dims[1:-1])


def optimizer_seconds(n_params: int, k: int, reps: int = 20) -> float:
    """One SGD-with-momentum step over k runs' stacked state (parameters, gradients, momentum
    buffers): torch's fused kernel, best of ``reps``. At these sizes it is bound by memory
    traffic, so stacking cannot make it cheaper per run: the part of the limit batching leaves."""
    from torch.optim.sgd import sgd

    p, g, b = (torch.randn(k * n_params) for _ in range(3))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        sgd([p], [g], [b], weight_decay=5e-4, momentum=0.9, lr=1e-3, dampening=0.0, nesterov=False,
            maximize=False, fused=True)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(workload: str, *, epochs: int, runs: int, stack: int, repeat: int = 1) -> None:
    spec = spec_for(workload, epochs=epochs, runs=runs)
    rs = expand(spec)
    from nclab.train import TrainConfig
    from nclab.train.data import prepare_data

    data = prepare_data(TrainConfig.model_validate(rs[0].config), torch.device("cpu"))
    flops = run_flops(rs[0].config, data.info["n_train"], math.prod(data.input_shape), data.num_classes)
    gf = gemm_gflops()
    n_params = run_params(rs[0].config, math.prod(data.input_shape), data.num_classes)
    steps = epochs * math.ceil(data.info["n_train"] / rs[0].config["batch_size"])
    print(f"\n== {workload}: {len(rs)} runs x {epochs} epochs, n_train {data.info['n_train']}, "
          f"input {math.prod(data.input_shape)}, {flops / 1e9:.2f} GFLOP per run; GEMM {gf:.1f} GFLOP/s (1 thread), "
          f"load {os.getloadavg()[0]:.2f}")
    half = max(2, stack // 2)
    cases = [("sequential", lambda: InlineExecutor(), None, 1),
             ("2 workers", lambda: LocalExecutor(2), None, 2),
             (f"stacked (1 process, stack {stack})", lambda: InlineExecutor(), stack, 1),
             (f"stacked x2 (2 processes, stack {half})", lambda: LocalExecutor(2), half, 2)]
    # per run, the fused SGD over a stack's state at that stack size (memory-bound)
    opt_s = {k: optimizer_seconds(n_params, k) * steps / k for k in (stack, half)}
    print(f"   {n_params:,} parameters per run, {steps} steps; GEMM alone {flops / gf / 1e6:.0f} ms per run; the "
          f"stacked SGD update {', '.join(f'{v * 1e3:.0f} ms per run at stack {k}' for k, v in opt_s.items())}")
    # interleaved, best of `repeat` per case: the machine's load drifts between cases
    best = {name: float("inf") for name, *_ in cases}
    for _ in range(repeat):
        for name, make, st, cores in cases:
            with tempfile.TemporaryDirectory() as tmp:
                store = RunStore(Path(tmp))
                with make() as ex:
                    if isinstance(ex, LocalExecutor):  # start both workers first: process start-up is not training
                        for f in [ex.submit(_warm, rs[0].config, tmp) for _ in range(2)]:
                            f.result()
                    t0 = time.perf_counter()
                    s = run_sweep(store, rs, run_fn=train_run, executor=ex, stack=st)
                    best[name] = min(best[name], time.perf_counter() - t0)
                assert s.completed == len(rs), (s.completed, s.failed)
    print(f"{'case':44s} {'wall s':>8s} {'runs/h':>8s} {'vs seq':>7s} {'limit runs/h':>13s} {'of limit':>9s} "
          f"{'+opt limit':>11s} {'of it':>6s}")
    base = None
    for name, _make, st, cores in cases:
        wall = best[name]
        rate = len(rs) / wall * 3600
        base = base or rate
        limit = cores * gf * 1e9 / flops * 3600
        line = f"{name:44s} {wall:8.1f} {rate:8.0f} {rate / base:6.2f}x {limit:13.0f} {rate / limit:8.1%}"
        if st is not None:
            # GEMMs at the measured throughput plus the stack's optimizer traffic (not overlapped;
            # two processes share one memory bus, so the traffic term is not divided by the cores)
            limit_opt = 3600 / (flops / (cores * gf * 1e9) + opt_s[st])
            line += f" {limit_opt:11.0f} {rate / limit_opt:6.1%}"
        print(line)
    print(f"   load after: {os.getloadavg()[0]:.2f}")


def _warm(config: dict, run_dir: str) -> dict:
    """Import the trainer and load the data set once in a worker (both are cached per process)."""
    import torch as _t

    from nclab.train import TrainConfig
    from nclab.train.data import prepare_data
    import nclab.train.stacked  # noqa: F401

    prepare_data(TrainConfig.model_validate(config), _t.device("cpu"))
    time.sleep(1.0)  # keep this worker busy so the second warm-up lands on the other one
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["small", "digits", "both"], default="both")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--runs", type=int, default=16, help="runs of the small workload (digits uses 8)")
    ap.add_argument("--stack", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1, help="best of this many interleaved rounds per case")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, python {sys.version.split()[0]}")
    if a.workload in ("small", "both"):
        measure("small", epochs=a.epochs, runs=a.runs, stack=a.stack, repeat=a.repeat)
    if a.workload in ("digits", "both"):
        measure("digits", epochs=a.epochs, runs=8, stack=8, repeat=a.repeat)


if __name__ == "__main__":
    main()
