"""Sweep signals by the exit-code table (issue 20, item 9): SIGTERM/SIGINT to ``nclab sweep``
stop its runs after their current epoch with a checkpoint, mark them ``interrupted``, release
their store rows and exit 143/130; a rerun completes every run as an uninterrupted sweep does.
A run whose directory is locked by another live process is skipped and reported, and never
fails its stack neighbours."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import nclab.store.files as files
from nclab.cli import _register_all, app
from nclab.store.index import RunStore
from nclab.train import TIMING_KEYS
from tiny_run import tiny_dict

_register_all()
runner = CliRunner()

BASE = tiny_dict(epochs=6)


def spec_file(tmp_path: Path, seeds=(0, 1, 2), **base_over) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(json.dumps({"name": "sig", "base": {**BASE, **base_over}, "grid": {"seed": list(seeds)}}))
    return p


def sweep(spec: Path, store: Path, *extra: str):
    return runner.invoke(app, ["sweep", str(spec), "--store", str(store), "--executor", "inline", "--no-progress",
                               *extra])


def finals(store: Path) -> dict[str, dict]:
    st = RunStore(store, create=False)
    out = {r["hash"]: {k: v for k, v in (r["final"] or {}).items() if k not in TIMING_KEYS}
           for r in st.rows(status="completed")}
    st.close()
    return out


def statuses(store: Path) -> dict[str, str]:
    st = RunStore(store, create=False)
    out = {r["hash"]: r["status"] for r in st.rows()}
    st.close()
    return out


def run_status(store: Path, h: str) -> str:
    return json.loads((store / "runs" / h / "status.json").read_text())["status"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """Finals of the same sweep, never interrupted."""
    d = tmp_path_factory.mktemp("ref")
    res = sweep(spec_file(d), d / "store")
    assert res.exit_code == 0, res.output
    return finals(d / "store")


class _SignalAtRecord:
    """Send ``signum`` to this process when the ``n``-th metrics record is being written
    (a fault at a fixed point of the run, whatever the machine's speed)."""

    def __init__(self, real, signum: int, n: int):
        self.real, self.signum, self.n, self.seen = real, signum, n, 0

    def __call__(self, fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.endswith("metrics.jsonl"):
            self.seen += 1
            if self.seen == self.n:
                os.kill(os.getpid(), self.signum)
        return self.real(fd, data)


@pytest.mark.parametrize("signum,code,stack", [(signal.SIGTERM, 143, "1"), (signal.SIGINT, 130, "1"),
                                              (signal.SIGTERM, 143, "3")])
def test_inline_sweep_signal_checkpoints_releases_and_a_rerun_is_identical(tmp_path, monkeypatch, reference,
                                                                          signum, code, stack):
    store = tmp_path / "store"
    spec = spec_file(tmp_path)
    # solo: run 2, epoch 2 (run 1 done, run 3 never started); a stack of 3: every member in epoch 3
    monkeypatch.setattr(files, "write_all", _SignalAtRecord(files.write_all, signum, 8))
    res = sweep(spec, store, "--stack", stack)
    monkeypatch.undo()
    assert res.exit_code == code, (res.output, res.exception)
    assert "Traceback" not in res.output and "rerun the same command" in res.output
    st = statuses(store)
    assert "running" not in st.values()
    stopped = [h for h, s in st.items() if s == "pending" and (store / "runs" / h / "status.json").exists()]
    if stack == "1":
        assert sorted(st.values()) == ["completed", "pending", "pending"]
        assert len(stopped) == 1  # the run in flight: checkpointed and marked, the third never started
    else:
        assert set(st.values()) == {"pending"} and len(stopped) == 3
    for h in stopped:
        assert run_status(store, h) == "interrupted"
        assert (store / "runs" / h / "checkpoints" / "last.pt").exists()

    res = sweep(spec, store, "--stack", stack)
    assert res.exit_code == 0, res.output
    assert set(statuses(store).values()) == {"completed"}
    assert finals(store) == reference


def test_signal_in_the_last_epoch_of_an_inline_run_still_stops_the_sweep(tmp_path, monkeypatch):
    store = tmp_path / "store"
    spec = spec_file(tmp_path)
    monkeypatch.setattr(files, "write_all", _SignalAtRecord(files.write_all, signal.SIGTERM, 6))  # run 1, epoch 6 of 6
    res = sweep(spec, store)
    monkeypatch.undo()
    assert res.exit_code == 143, (res.output, res.exception)
    assert sorted(statuses(store).values()) == ["completed", "pending", "pending"]  # runs 2 and 3 never started


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another live process holding ``run_dir``'s lock (as a second nclab would)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)"),
        str(run_dir / ".nclab.lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("stack", ["1", "3"])
def test_locked_member_is_skipped_and_its_neighbours_complete(tmp_path, reference, stack):
    store = tmp_path / "store"
    spec = spec_file(tmp_path)
    res = runner.invoke(app, ["sweep", str(spec), "--store", str(store), "--dry-run"])
    hashes = [line.split()[0] for line in res.output.splitlines() if line.strip() and not line.endswith(" runs")]
    assert len(hashes) == 3
    locked = hashes[1]
    holder = _hold_lock(store / "runs" / locked)
    try:
        res = sweep(spec, store, "--stack", stack)
        assert res.exit_code == 0, (res.output, res.exception)
        assert "1 runs skipped" in res.output and "locked by another live process" in res.output
        st = statuses(store)
        assert st[locked] == "pending" and [st[h] for h in hashes if h != locked] == ["completed", "completed"]
        assert not (store / "runs" / locked / "metrics.jsonl").exists()  # its files untouched
    finally:
        holder.kill()
        holder.wait()
    res = sweep(spec, store, "--stack", stack)
    assert res.exit_code == 0, res.output
    assert finals(store) == reference


@pytest.mark.slow
def test_sigterm_to_a_process_pool_sweep_exits_143_and_a_rerun_is_identical(tmp_path):
    """The real command line with a worker process: the driver forwards the signal to it. The
    worker is paused (SIGSTOP) from its first record until the driver has the signal, so the
    stop lands mid-run however fast the machine is."""
    spec = spec_file(tmp_path, seeds=(0,), epochs=8)
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "nclab", "sweep", str(spec), "--store", str(store), "-j", "1",
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    worker = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and worker is None:
            for m in store.glob("runs/*/metrics.jsonl"):
                if m.stat().st_size:
                    worker = json.loads((m.parent / ".nclab.lock").read_text())["pid"]
                    os.kill(worker, signal.SIGSTOP)
            time.sleep(0.002)
        assert worker is not None and worker != proc.pid, proc.communicate()[0]
        proc.send_signal(signal.SIGTERM)
        assert "SIGTERM received" in proc.stdout.readline() + proc.stdout.readline()
        time.sleep(0.5)  # the driver forwards the signal within one 0.2 s poll
        os.kill(worker, signal.SIGCONT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if worker is not None:
            with contextlib.suppress(OSError):
                os.kill(worker, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert "Traceback" not in out
    (h, s_), = statuses(store).items()
    assert s_ == "pending" and run_status(store, h) == "interrupted"
    assert 1 <= len((store / "runs" / h / "metrics.jsonl").read_text().splitlines()) < 8
    assert (store / "runs" / h / "checkpoints" / "last.pt").exists()
    res = sweep(spec, store)  # the rerun continues from the checkpoint
    assert res.exit_code == 0, res.output
    ref = tmp_path / "ref"
    assert sweep(spec, ref).exit_code == 0
    assert finals(store) == finals(ref)
