"""Soak test: kill -9 the real ``nclab train`` command at random moments, resume, repeat.

Each chain trains one small run (``python -m nclab train ... --run-dir D``, then ``--resume``
after every kill) until it completes; the chain's final ``metrics.jsonl`` (timing keys
dropped), checkpoint weights, ``features.npz`` and ``dynamics/`` must equal those of one
uninterrupted run. Half the kill moments are uniform over the length of an uninterrupted
command, interpreter start-up included (imports, data preparation, training, final files);
the other half are uniform over its training loop (from the moment the attempt's trainer
writes ``status.json`` = running with its pid), where epochs, evaluations, appends and
checkpoint writes happen. The runs use a frozen copy of the package.

Run: ``python benchmarks/soak_kill.py [--kills 200] [--epochs 30] [--seed 0]``.
Prints how many kills it survived (every chain resumed and ended identical), how many chains
and how long. Exit status 1 if any chain failed to resume or ended different.

The fast, bounded version of this test (fork-based, 30 kills) is
``tests/test_reliability.py::test_kill9_at_random_moments_every_run_resumes_identically``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nclab.store.files import read_jsonl
from nclab.train import TIMING_KEYS, load_checkpoint

CONFIG = {
    "epochs": 30, "batch_size": 16, "device": "cpu", "threads": 1, "record_dynamics": True,
    "dataset": {"name": "synthetic", "classes": 2,
                "options": {"train_per_class": 60, "test_per_class": 20, "shape": [1, 4, 4]}},
    "noise": {"kind": "symmetric", "rate": 0.2},
    "model": {"depth": 2, "width": 32},
    "optim": {"lr": 0.05},
}


def command(cfg: Path, run_dir: Path, *, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "nclab", "train", str(cfg), "--run-dir", str(run_dir), "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def fingerprint(d: Path) -> dict:
    ck = load_checkpoint(d / "checkpoints" / "last.pt")
    with np.load(d / "features.npz") as f:
        feats = {k: f[k].tobytes() for k in f.files}
    return {
        "metrics": [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_jsonl(d / "metrics.jsonl")],
        "model": {k: v.numpy().tobytes() for k, v in ck["model"].items()},
        "features": feats,
        "dynamics": {p.name: p.read_bytes() for p in sorted((d / "dynamics").glob("*.npy"))},
        "status": json.loads((d / "status.json").read_text())["status"],
    }


def in_training(d: Path, pid: int) -> bool:
    """Whether this attempt is past start-up: its trainer wrote status.json = running with its pid."""
    try:
        st = json.loads((d / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return st.get("status") == "running" and st.get("pid") == pid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--report-every", type=int, default=10, help="print progress every N chains")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="nclab-soak-"))
    cfg = root / "config.yaml"
    cfg.write_text(json.dumps({**CONFIG, "epochs": args.epochs}))
    # a frozen copy of the package: edits to the working tree during the soak must not change the runs
    import shutil

    import nclab

    shutil.copytree(Path(nclab.__file__).parent, root / "src" / "nclab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}

    # the first command warms the page cache (imports); the second, timed one sets the kill window
    ref_dir = root / "ref"
    subprocess.run(command(cfg, ref_dir, resume=False), check=True, env=env, capture_output=True)
    t0 = time.monotonic()
    p = subprocess.Popen(command(cfg, root / "ref2", resume=False), env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    t_loop_start = None
    while p.poll() is None:
        if t_loop_start is None and in_training(root / "ref2", p.pid):
            t_loop_start = time.monotonic()
        time.sleep(0.01)
    assert p.returncode == 0, "the uninterrupted command failed"
    t_run = time.monotonic() - t0
    t_loop = time.monotonic() - (t_loop_start or t0)
    ref = fingerprint(ref_dir)
    if fingerprint(root / "ref2") != ref:
        print("two uninterrupted runs differ: the comparison below would be meaningless")
        return 1
    print(f"uninterrupted command: {t_run:.2f} s, {t_loop:.2f} s of it in the training loop; half the kills at "
          f"uniform moments of the command, half at uniform moments of the loop", flush=True)

    kills = chains = failures = in_run = 0
    start = time.monotonic()
    while kills < args.kills:
        d = root / f"chain{chains:04d}"
        chains += 1
        chain_kills = 0
        while True:
            resume = (d / "config.yaml").exists()
            p = subprocess.Popen(command(cfg, d, resume=resume), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                if rng.random() < 0.5:  # anywhere: start-up, data, training, checkpoints, final files
                    p.wait(timeout=rng.uniform(0.0, 1.1 * t_run))
                else:  # inside the training loop (start-up dominates the command's length)
                    while p.poll() is None and not in_training(d, p.pid):
                        time.sleep(0.005)
                    p.wait(timeout=rng.uniform(0.0, 1.1 * t_loop))
            except BaseException as exc:  # the kill moment (or Ctrl-C on the soak itself)
                if not isinstance(exc, subprocess.TimeoutExpired):
                    p.kill()
                    p.wait()
                    raise
                in_run += in_training(d, p.pid)
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills += 1
                chain_kills += 1
                continue
            err = p.stderr.read().decode(errors="replace") if p.stderr else ""
            if p.returncode != 0:
                failures += 1
                print(f"chain {chains - 1}: exit {p.returncode} after {chain_kills} kills: {err.strip()[-300:]}")
                break
            if fingerprint(d) != ref:
                failures += 1
                print(f"chain {chains - 1}: finished after {chain_kills} kills but differs from the reference")
            break
        if chains % args.report_every == 0:
            print(f"  {kills} kills ({in_run} in the training loop), {chains} chains, {failures} failures, "
                  f"{time.monotonic() - start:.0f} s", flush=True)
    elapsed = time.monotonic() - start
    if failures:
        print(f"FAILED: {failures} of {chains} chains did not resume or ended different ({kills} kills, {elapsed:.0f} s)")
    else:
        print(f"survived {kills} kills ({in_run} of them inside the training loop): all {chains} chains "
              f"resumed and ended identical to the uninterrupted run ({elapsed:.0f} s)")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
