"""Sweep machinery overhead per run, and the wall time of a tiny end-to-end study.

1. 200 runs of a no-op run function through the store + local executor (2 worker processes)
   vs the same 200 calls in a plain loop: seconds per run and the ratio.
2. The tiny memorization-dilation study (digits, 16 short trainings) end to end, with report.

Usage: python benchmarks/bench_sweep.py [--runs 200] [--workers 2] [--skip-study]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from nclab.store.index import RunStore
from nclab.sweep import InlineExecutor, LocalExecutor, run_sweep
from nclab.sweep.testing import noop_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-study", action="store_true")
    a = ap.parse_args()
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
    print(f"local executor  : {local * 1e3:9.3f} ms/run  ({a.workers} spawned workers, incl. their start-up; ratio {local / base:,.0f}x)")
    print(f"resume check    : {resume * 1e3:9.1f} ms for {a.runs} already-completed runs")

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
