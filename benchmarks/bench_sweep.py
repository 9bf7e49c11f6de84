"""Sweep machinery overhead per run, and the wall time of a tiny end-to-end study.

1. 200 runs of a no-op run function through the store + local executor (2 worker processes)
   vs the same 200 calls in a plain loop: seconds per run and the ratio.
2. Worker start-up of the local executor: a fresh driver process runs one short training
   per worker, with workers forked from the preloaded forkserver (the default) and with
   spawned workers (each imports torch and the trainer itself). Wall time and the CPU time
   of the whole machine, alternating the two, best of ``--repeats``.
3. The tiny memorization-dilation study (digits, 16 short trainings) end to end, with report.

Usage: python benchmarks/bench_sweep.py [--runs 200] [--workers 2] [--repeats 3] [--skip-study]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nclab.store.index import RunStore
from nclab.sweep import InlineExecutor, LocalExecutor, run_sweep
from nclab.sweep.testing import noop_run


TINY_RUN = {"epochs": 1, "batch_size": 16, "threads": 1, "save_features": False,
            "dataset": {"name": "synthetic", "classes": 2,
                        "options": {"train_per_class": 20, "test_per_class": 10, "shape": [1, 4, 4]}},
            "model": {"depth": 1, "width": 8}}


def _busy_cpu_s() -> float:
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / 100.0


def _pool_startup_child(context: str, workers: int) -> None:
    """In a fresh driver: ``workers`` one-epoch runs through LocalExecutor(workers, context)."""
    from nclab.sweep.trainer import train_run  # noqa: PLC0415

    runs = [{"hash": f"{i:016x}", "name": f"start-{i}", "config": {**TINY_RUN, "seed": i}} for i in range(workers)]
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with LocalExecutor(workers, context=context) as ex:
            s = run_sweep(RunStore(d), runs, run_fn=train_run, executor=ex)
        wall = time.perf_counter() - t
    assert s.completed == workers, s
    print(json.dumps({"wall": wall}))


def pool_startup(workers: int, repeats: int) -> dict[str, tuple[float, float]]:
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        for context in ("forkserver", "spawn"):  # alternated, so both see the same machine load
            c0 = _busy_cpu_s()
            out = subprocess.run([sys.executable, __file__, "--pool-startup", context, "--workers", str(workers)],
                                 capture_output=True, text=True, check=True).stdout
            cpu = _busy_cpu_s() - c0  # the driver's own start-up included, the same in both
            wall = json.loads(out.splitlines()[-1])["wall"]
            old = best.get(context)
            best[context] = (min(wall, old[0]), min(cpu, old[1])) if old else (wall, cpu)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-study", action="store_true")
    ap.add_argument("--pool-startup", choices=("forkserver", "spawn"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.pool_startup:
        _pool_startup_child(a.pool_startup, a.workers)
        return
    runs = [{"hash": f"{i:016x}", "name": f"bench-{i}", "config": {"i": i, "optim": {"lr": 0.1}}} for i in range(a.runs)]

    t = time.perf_counter()
    for r in runs:
        noop_run(r["config"], "/nonexistent")
    base = (time.perf_counter() - t) / a.runs

    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        s = run_sweep(RunStore(d), runs, run_fn=noop_run, executor=InlineExecutor())
        inline = (time.perf_counter() - t) / a.runs
        assert s.completed == a.runs
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with LocalExecutor(a.workers) as ex:
            s = run_sweep(RunStore(d), runs, run_fn=noop_run, executor=ex)
        local = (time.perf_counter() - t) / a.runs
        assert s.completed == a.runs
        t = time.perf_counter()
        s2 = run_sweep(RunStore(d), runs, run_fn=noop_run, executor=InlineExecutor())
        resume = time.perf_counter() - t
        assert s2.already_done == a.runs
    print(f"plain loop      : {base * 1e6:9.2f} us/run")
    print(f"inline executor : {inline * 1e3:9.3f} ms/run  (store claim + commit per run; ratio {inline / base:,.0f}x)")
    print(f"local executor  : {local * 1e3:9.3f} ms/run  ({a.workers} workers, incl. their start-up; ratio {local / base:,.0f}x)")
    print(f"resume check    : {resume * 1e3:9.1f} ms for {a.runs} already-completed runs")

    best = pool_startup(a.workers, a.repeats)
    (fw, fc), (sw, sc) = best["forkserver"], best["spawn"]
    print(f"pool start-up   : {a.workers} workers, one 1-epoch training each, best of {a.repeats} (driver start-up included)")
    print(f"  forkserver    : {fw:6.2f} s wall, {fc:6.2f} s CPU")
    print(f"  spawn         : {sw:6.2f} s wall, {sc:6.2f} s CPU   (forkserver: {sw / fw:.2f}x wall, {sc / fc:.2f}x less CPU)")

    if a.skip_study:
        return
    import typer  # noqa: PLC0415
    from typer.testing import CliRunner  # noqa: PLC0415

    from nclab.cli.sweep import register  # noqa: PLC0415

    app = typer.Typer()
    register(app)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        res = CliRunner().invoke(app, ["reproduce", "memorization-dilation", "--scale", "small", "--tiny", "--datasets", "digits",
                                       "--store", str(Path(d) / "s"), "--workers", str(a.workers), "--no-progress"])
        wall = time.perf_counter() - t
        if res.exit_code != 0:
            raise SystemExit(res.output)
    print(f"tiny study      : {wall:9.1f} s wall (16 digits runs + report, {a.workers} workers)")


if __name__ == "__main__":
    main()
