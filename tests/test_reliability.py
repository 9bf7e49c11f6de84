"""Reliability under real faults: kill -9 at random moments, two trainers, overwrite, full disk,
signals, read-only stores.

Children are ``os.fork``-ed from the test process (torch already imported, one thread), so a
kill/resume cycle costs milliseconds of start-up instead of a fresh interpreter; the faults are
real (SIGKILL, a second live process holding the lock, a second user without write permission).
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from nclab.store.files import append_jsonl, read_jsonl
from nclab.train import TIMING_KEYS, TrainConfig, load_checkpoint, train
from nclab.store.rundir import LOCK, RunDirError, RunLock, RunLockError
from tiny_run import tiny_config

# a little larger than the shared tiny run (dotted keys: one nested field each)
SIZE = {"epochs": 6, "dataset.options.train_per_class": 40, "dataset.options.test_per_class": 20, "model.width": 16}


def tiny(**over) -> TrainConfig:
    return tiny_config(**{**SIZE, **over})


@pytest.fixture(autouse=True, scope="module")
def _warm(tmp_path_factory):
    # one run in this process first: forked children then inherit every lazy import and start warm
    train(tiny(epochs=1), run_dir=tmp_path_factory.mktemp("warm") / "run", progress=False)


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _fingerprint(run_dir: Path) -> dict:
    """Everything a finished run leaves that must not depend on interruptions."""
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    with np.load(run_dir / "features.npz") as f:
        feats = {k: f[k].copy() for k in f.files}
    dyn = {p.name: np.load(p) for p in sorted((run_dir / "dynamics").glob("*.npy"))}
    return {"metrics": _strip(read_jsonl(run_dir / "metrics.jsonl")), "epoch": ck["epoch"],
            "model": {k: v.clone() for k, v in ck["model"].items()}, "features": feats, "dynamics": dyn,
            "status": json.loads((run_dir / "status.json").read_text())["status"]}


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["status"] == b["status"] == "completed"
    assert a["epoch"] == b["epoch"]
    assert a["metrics"] == b["metrics"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["features"].keys() == b["features"].keys()
    for k in a["features"]:
        assert np.array_equal(a["features"][k], b["features"][k]), k
    assert a["dynamics"].keys() == b["dynamics"].keys()
    for k in a["dynamics"]:
        assert np.array_equal(a["dynamics"][k], b["dynamics"][k]), k


def _fork(fn) -> int:
    """Run ``fn()`` in a forked child; its exit code is fn's return value (1 on an exception)."""
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            torch.set_num_threads(1)
            code = int(fn() or 0)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _wait(pid: int, timeout: float = 60.0) -> int:
    t0 = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not finish in {timeout} s")
        time.sleep(0.005)


def _train_or_resume(cfg: TrainConfig, run_dir: Path):
    def go() -> int:
        resume = (run_dir / "config.yaml").exists()
        r = train(cfg, run_dir=run_dir, resume=resume, progress=False)
        return 0 if r.status == "completed" else 7
    return go


# ---------------------------------------------------------------------------------- kill -9

@pytest.mark.slow
def test_kill9_at_random_moments_every_run_resumes_identically(tmp_path):
    """>= 30 SIGKILLs at random moments of a tiny run; every chain resumes to the identical result."""
    cfg = tiny(epochs=4)
    ref_dir = tmp_path / "ref"
    t0 = time.monotonic()
    assert _wait(_fork(_train_or_resume(cfg, ref_dir))) == 0
    t_run = time.monotonic() - t0  # one whole run in a forked child, start-up included
    ref = _fingerprint(ref_dir)
    rng = random.Random(20261203)
    kills, chains, deadline = 0, 0, time.monotonic() + 50
    while kills < 30:
        assert time.monotonic() < deadline, f"only {kills} kills in the time box"
        d = tmp_path / f"chain{chains}"
        chains += 1
        for _attempt in range(100):
            pid = _fork(_train_or_resume(cfg, d))
            time.sleep(rng.uniform(0.0, 1.1 * t_run))
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                kills += 1
                continue
            assert os.waitstatus_to_exitcode(status) == 0, f"chain {chains - 1}: a resume failed"
            break
        else:
            raise AssertionError("a chain never finished")
        _assert_same_run(_fingerprint(d), ref)
        epochs = [r["epoch"] for r in read_jsonl(d / "metrics.jsonl")]
        assert epochs == list(range(1, cfg.epochs + 1))
    assert kills >= 30


# ---------------------------------------------------------------------------------- lock

def test_two_trainers_on_one_run_dir(tmp_path):
    d = tmp_path / "run"
    cfg = tiny(epochs=12)
    first = _fork(lambda: 0 if train(cfg, run_dir=d, progress=False).status == "completed" else 7)
    t0 = time.monotonic()
    while True:  # until the first trainer holds the lock and recorded itself
        try:
            if json.loads((d / LOCK).read_text()).get("pid") == first:
                break
        except (OSError, ValueError):
            pass
        assert time.monotonic() - t0 < 30
        time.sleep(0.002)
    msg = tmp_path / "second.txt"

    def second() -> int:
        try:
            train(cfg, run_dir=d, progress=False, resume=True)
        except RunLockError as exc:
            msg.write_text(str(exc))
            return 5
        return 0

    assert _wait(_fork(second)) == 5
    assert f"pid {first}" in msg.read_text()
    assert _wait(first) == 0
    epochs = [r["epoch"] for r in read_jsonl(d / "metrics.jsonl")]
    assert epochs == list(range(1, 13))  # strictly increasing, nothing interleaved


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    d = tmp_path / "run"

    def hold() -> int:
        RunLock(d, what="test").acquire()
        time.sleep(60)
        return 0

    pid = _fork(hold)
    t0 = time.monotonic()
    while not (d / LOCK).exists() or str(pid) not in (d / LOCK).read_text():
        assert time.monotonic() - t0 < 10
        time.sleep(0.002)
    with pytest.raises(RunLockError, match=f"in use by pid {pid}"):
        RunLock(d).acquire()
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with RunLock(d) as lock:  # stale: its holder is dead, the kernel dropped the flock
        assert lock.previous["pid"] == pid
        with pytest.raises(RunLockError, match="this process"):
            RunLock(d).acquire()
    assert RunLock(d).acquire().held


def test_cli_train_on_a_locked_run_dir_exits_5_naming_the_pid(tmp_path):
    from typer.testing import CliRunner

    from nclab.cli import _register_all, app

    _register_all()
    d = tmp_path / "run"
    with RunLock(d):
        res = CliRunner().invoke(app, ["train", "--set", "device=cpu", "--run-dir", str(d), "--no-progress"])
    assert res.exit_code == 5, res.output
    assert f"pid {os.getpid()}" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------------------------- overwrite

def test_overwrite_leaves_no_file_of_the_old_run(tmp_path):
    d = tmp_path / "run"
    train(tiny(epochs=3), run_dir=d, progress=False)
    (d / "suspicion-combined.csv").write_text("index,score\n")
    (d / "extra").mkdir()
    (d / "extra" / "note.txt").write_text("old")
    old_files = {p.relative_to(d) for p in d.rglob("*")}
    assert Path("dynamics/epoch_0003.npy") in old_files
    new = tiny(epochs=2, **{"optim.lr": 0.02})
    train(new, run_dir=d, progress=False, overwrite=True)
    fresh = tmp_path / "fresh"
    train(new, run_dir=fresh, progress=False)
    assert {p.relative_to(d) for p in d.rglob("*")} == {p.relative_to(fresh) for p in fresh.rglob("*")}
    assert sorted(p.name for p in (d / "dynamics").iterdir()) == ["epoch_0001.npy", "epoch_0002.npy"]


def test_overwrite_refuses_a_folder_nclab_did_not_write(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="refusing to overwrite"):
        train(tiny(epochs=1), run_dir=d, progress=False, overwrite=True)
    assert (d / "thesis.tex").read_text() == "precious"


# ---------------------------------------------------------------------------------- full disk

class _FullDisk:
    """A fake ``os.write`` for files named ``name``: short writes, then ENOSPC while armed."""

    def __init__(self, real, name: str):
        self.real, self.name, self.armed, self.calls = real, name, False, 0

    def __call__(self, fd, data):
        if self.armed:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = ""
            if target.endswith(self.name):
                self.calls += 1
                if self.calls == 1:
                    return self.real(fd, bytes(data)[: max(1, len(data) // 3)])  # a short write
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, data)


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real = os.write
    calls = []

    def dribble(fd, data):  # at most 7 bytes per call
        calls.append(1)
        return real(fd, bytes(data)[:7])

    monkeypatch.setattr(os, "write", dribble)
    append_jsonl(tmp_path / "m.jsonl", {"epoch": 1, "x": "y" * 50})
    monkeypatch.undo()
    assert read_jsonl(tmp_path / "m.jsonl") == [{"epoch": 1, "x": "y" * 50}] and len(calls) > 5


def test_disk_full_during_append_leaves_whole_lines_and_the_run_resumes(tmp_path, monkeypatch):
    cfg = tiny(epochs=5)
    ref = tmp_path / "ref"
    train(cfg, run_dir=ref, progress=False)
    d = tmp_path / "run"
    fake = _FullDisk(os.write, "metrics.jsonl")
    monkeypatch.setattr(os, "write", fake)
    real_append = append_jsonl
    n = {"appends": 0}

    def arm_on_third(path, record):
        n["appends"] += 1
        fake.armed = n["appends"] == 3
        return real_append(path, record)

    monkeypatch.setattr("nclab.train.session.append_jsonl", arm_on_third)
    with pytest.raises(OSError) as exc:
        train(cfg, run_dir=d, progress=False)
    assert exc.value.errno == errno.ENOSPC and "left as it was" in str(exc.value)
    raw = (d / "metrics.jsonl").read_bytes()
    assert raw.endswith(b"\n") and [json.loads(line)["epoch"] for line in raw.splitlines()] == [1, 2]
    monkeypatch.undo()  # space returns
    r = train(cfg, run_dir=d, progress=False, resume=True)
    assert r.status == "completed"
    _assert_same_run(_fingerprint(d), _fingerprint(ref))


# ---------------------------------------------------------------------------------- signals

def _wait_records(d: Path, n: int) -> None:
    t0 = time.monotonic()
    while not (d / "metrics.jsonl").exists() or len(read_jsonl(d / "metrics.jsonl")) < n:
        assert time.monotonic() - t0 < 30
        time.sleep(0.002)


def test_sigint_writes_checkpoint_and_status_then_resumes(tmp_path):
    cfg = tiny(epochs=12, checkpoint_every=7)
    d = tmp_path / "run"
    out = tmp_path / "result.json"

    def child() -> int:
        r = train(cfg, run_dir=d, progress=False, handle_signals=True)
        out.write_text(json.dumps({"status": r.status, "epoch": r.epoch, "signum": r.signum, "message": r.message}))
        return 128 + r.signum if r.signum else 0

    pid = _fork(child)
    _wait_records(d, 2)
    os.kill(pid, signal.SIGINT)
    assert _wait(pid) == 130
    res = json.loads(out.read_text())
    status = json.loads((d / "status.json").read_text())
    assert res["status"] == status["status"] == "interrupted" and "--resume" in res["message"]
    assert 2 <= status["epoch"] < 12
    assert load_checkpoint(d / "checkpoints" / "last.pt")["epoch"] == status["epoch"]  # even off the every-7 grid
    r = train(cfg, run_dir=d, progress=False, resume=True)
    ref = train(cfg, run_dir=tmp_path / "ref", progress=False)
    assert r.status == "completed" and _strip(r.history) == _strip(ref.history)


def test_cli_sigterm_exits_143_and_prints_how_to_resume(tmp_path):
    from typer.testing import CliRunner

    from nclab.cli import _register_all, app

    _register_all()
    d = tmp_path / "run"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps(tiny(epochs=15).to_dict()))  # JSON is YAML
    out = tmp_path / "out.txt"

    def child() -> int:
        res = CliRunner().invoke(app, ["train", str(cfg_file), "--run-dir", str(d), "--no-progress"])
        out.write_text(res.output)
        return res.exit_code

    pid = _fork(child)
    _wait_records(d, 2)
    os.kill(pid, signal.SIGTERM)
    assert _wait(pid) == 143
    text = out.read_text()
    assert "interrupted by SIGTERM" in text and f"--run-dir {d} --resume" in text and "Traceback" not in text
    assert json.loads((d / "status.json").read_text())["status"] == "interrupted"


# ---------------------------------------------------------------------------------- divergence

@pytest.mark.parametrize("record_dynamics", [False, True])
def test_non_finite_logits_are_divergence_not_bad_input(tmp_path, monkeypatch, record_dynamics):
    """Finite weights, finite training loss, but eval-mode logits overflow (a BatchNorm running
    mean of -inf): that is divergence (status diverged, exit 3), not bad input."""
    from nclab.train.engine import StackEngine

    real = StackEngine.train_epoch
    calls = {"n": 0}

    def poisoned(self, lrs):
        losses = real(self, lrs)
        calls["n"] += 1
        if calls["n"] == 2:
            for name, buf in self.model.buffers.items():
                if name.endswith("running_mean"):
                    buf.fill_(float("-inf"))  # buffers, not parameters: only eval mode sees it
        return losses

    monkeypatch.setattr(StackEngine, "train_epoch", poisoned)
    d = tmp_path / "run"
    r = train(tiny(epochs=3, record_dynamics=record_dynamics), run_dir=d, progress=False)
    assert r.status == "diverged" and r.diverged_epoch == 2 and r.epoch == 1
    st = json.loads((d / "status.json").read_text())
    assert st["status"] == "diverged" and st["diverged_epoch"] == 2 and "logits" in st["message"]
    assert "epoch 1" in st["message"] and load_checkpoint(d / "checkpoints" / "last.pt")["epoch"] == 1
    assert [rec["epoch"] for rec in read_jsonl(d / "metrics.jsonl")] == [1]


def test_divergence_in_epoch_1_in_a_sweep_and_the_store_never_counts_it_completed(tmp_path):
    from nclab.store.index import Owner, RunStore
    from nclab.sweep.trainer import train_run

    cfg = tiny(epochs=2, **{"optim.lr": 1e6, "loss.name": "mse"}).to_dict()
    final = train_run(cfg, str(tmp_path / "run"))
    assert final["status"] == "diverged" and final["diverged_epoch"] == 1
    st = RunStore(tmp_path / "store")
    st.register([{"hash": "a", "name": "ok", "config": {}}, {"hash": "b", "name": "nan", "config": {}}])
    o = Owner()
    for h in "ab":
        assert st.claim(h, o)
    st.complete("a", o, {"test_acc": 0.9})
    st.complete("b", o, {"train.memorization": 1.2e11}, outcome=final.pop("status"))
    assert [r["hash"] for r in st.rows(status="completed")] == ["a"]
    assert [r["hash"] for r in st.rows(status="diverged")] == ["b"]
    assert st.counts()["completed"] == 1 and st.counts()["diverged"] == 1
    assert st.status_of(["a", "b"]) == {"a": "completed", "b": "diverged"}
    assert [r["hash"] for r in st.table()] == ["a"]  # exports and tables leave it out
    assert st.get("b")["status"] == "diverged"


# ---------------------------------------------------------------------------------- read-only store

def _as_other_user(fn) -> int:
    """Run ``fn`` in a child that cannot write what root owns (setuid nobody when root)."""
    def go() -> int:
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        return fn()
    return _wait(_fork(go))


def _make_store(root: Path) -> None:
    from nclab.store.index import Owner, RunStore

    st = RunStore(root)
    st.register([{"hash": h, "name": f"r{h}", "config": {"seed": i}} for i, h in enumerate("abc")], sweep="s")
    o = Owner()
    for h in "abc":
        st.claim(h, o)
    st.complete("a", o, {"test_acc": 0.5})
    st.complete("b", o, {"test_acc": 0.7})
    st.complete("c", o, {"test_acc": 0.1}, outcome="diverged")
    st.close()


def test_read_only_store_can_be_reported_and_exported(tmp_path):
    import hashlib
    import shutil
    import tempfile

    from typer.testing import CliRunner

    from nclab.cli import _register_all, app
    from nclab.store.index import RunStore

    _register_all()
    base = Path(tempfile.mkdtemp(prefix="nclab-ro-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        store, outdir = base / "store", base / "out"
        _make_store(store)
        outdir.mkdir()
        os.chmod(outdir, 0o777)
        os.chmod(store / "index.sqlite", 0o444)
        os.chmod(store, 0o555)
        before = hashlib.sha256((store / "index.sqlite").read_bytes()).hexdigest()
        files_before = sorted(p.name for p in store.iterdir())
        result = outdir / "ok.txt"

        def read_it() -> int:
            assert not os.access(store, os.W_OK)
            st = RunStore(store, create=False)
            assert st.readonly and [r["hash"] for r in st.rows(status="completed")] == ["a", "b"]
            assert st.counts()["diverged"] == 1
            res = CliRunner().invoke(app, ["store-export", str(store), "--out", str(outdir / "t.csv")])
            assert res.exit_code == 0, res.output
            from nclab.report.study_data import runs_table

            recs = runs_table(store)  # the report's reader works on the read-only store too
            assert {r["hash"] for r in recs} >= {"a", "b"}
            assert all(r.get("status") != "completed" for r in recs if r["hash"] == "c")
            result.write_text("ok")
            return 0

        assert _as_other_user(read_it) == 0 and result.read_text() == "ok"
        assert (outdir / "t.csv").read_text().count("\n") == 3  # header + 2 completed runs
        assert hashlib.sha256((store / "index.sqlite").read_bytes()).hexdigest() == before
        assert sorted(p.name for p in store.iterdir()) == files_before  # no -wal/-shm created
        # explicitly read-only, even where writing would be allowed
        os.chmod(store, 0o755)
        ro = RunStore(store, readonly=True)
        assert len(ro.rows()) == 3
        with pytest.raises(Exception, match="readonly|read-only"):
            ro.register([{"hash": "z", "name": "z", "config": {}}])
    finally:
        os.chmod(base / "store", 0o755) if (base / "store").exists() else None
        shutil.rmtree(base, ignore_errors=True)
