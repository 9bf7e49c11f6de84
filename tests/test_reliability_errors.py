"""Every bad input or refusing system of issue 12 (items 8 and 9) gives a one-line error and a
documented exit code (2 bad input, 4 disk/permission/memory, 5 locked run dir), never a traceback."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nclab.cli import _register_all, app
from nclab.train import TrainConfig, train
from nclab.store.checkpoint import CheckpointError, MAGIC, load_checkpoint, save_checkpoint

_register_all()
runner = CliRunner()

TINY = {
    "epochs": 2, "batch_size": 16, "device": "cpu", "threads": 1,
    "dataset": {"name": "synthetic", "classes": 2,
                "options": {"train_per_class": 30, "test_per_class": 10, "shape": [1, 4, 4]}},
    "noise": {"kind": "symmetric", "rate": 0.2},
    "model": {"depth": 2, "width": 16},
    "optim": {"lr": 0.05},
}



@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    p.write_text(json.dumps(TINY))  # JSON is YAML
    return p


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("runs") / "tiny"
    train(TrainConfig.from_dict(TINY), run_dir=d, progress=False)
    return d


def clear_error(res, code: int, *needles: str) -> None:
    """Exit ``code``, an ``error``/message line naming the problem, no traceback."""
    out = res.output
    assert res.exit_code == code, (res.exit_code, out, res.exception)
    assert "Traceback" not in out, out
    flat = " ".join(out.split())
    for n in needles:
        assert n in flat, (n, out)


def train_cli(cfg_file: Path, run_dir: Path, *extra: str):
    return runner.invoke(app, ["train", str(cfg_file), "--run-dir", str(run_dir), "--no-progress", *extra])


# ------------------------------------------------------------------ item 8: tracebacks -> clear errors

def test_malformed_set_value(cfg_file, tmp_path):
    clear_error(train_cli(cfg_file, tmp_path / "r", "--set", "optim.lr=[1"), 2, "optim.lr=[1", "not valid YAML")


def test_run_dir_that_is_a_file(cfg_file, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    clear_error(train_cli(cfg_file, f), 2, "is a file")
    clear_error(train_cli(cfg_file, f / "sub"), 2, "is a file")


def test_read_only_run_dir(cfg_file, tmp_path, as_nobody):
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="nclab-rodir-", dir="/tmp"))
    try:
        os.chmod(base, 0o555)
        shutil.copy(cfg_file, Path(tempfile.gettempdir()) / f"nclab-ro-{os.getpid()}.yaml")
        cfg_copy = Path(tempfile.gettempdir()) / f"nclab-ro-{os.getpid()}.yaml"
        os.chmod(cfg_copy, 0o644)
        res_file = Path(tempfile.mkdtemp(prefix="nclab-res-", dir="/tmp"))
        os.chmod(res_file, 0o777)

        def child() -> int:
            res = train_cli(cfg_copy, base / "run")
            (res_file / "out.txt").write_text(f"{res.exit_code}\n{res.output}")
            return 0

        assert as_nobody(child) == 0
        code, out = (res_file / "out.txt").read_text().split("\n", 1)
        assert code == "2" and "Traceback" not in out and "cannot create run directory" in " ".join(out.split())
    finally:
        shutil.rmtree(base, ignore_errors=True)


class _FullDisk:
    def __init__(self, real, name: str):
        self.real, self.name = real, name

    def __call__(self, fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.endswith(self.name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, data)


def test_disk_full_during_train(cfg_file, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "write", _FullDisk(os.write, "metrics.jsonl"))
    res = train_cli(cfg_file, tmp_path / "r")
    monkeypatch.undo()
    clear_error(res, 4, "disk full", "metrics.jsonl")
    assert (tmp_path / "r" / "metrics.jsonl").read_bytes() == b""  # left as it was: no torn line


def test_disk_full_during_sweep(tmp_path, monkeypatch):
    import nclab.sweep as sweep_pkg

    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"name": "s", "base": TINY, "grid": {"seed": [0]}}))

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sweep_pkg, "run_sweep", full)
    res = runner.invoke(app, ["sweep", str(spec), "--store", str(tmp_path / "st"), "--executor", "inline",
                              "--no-progress"])
    clear_error(res, 4, "database or disk is full")


def test_corrupt_index_sqlite(tmp_path):
    st = tmp_path / "store"
    st.mkdir()
    (st / "index.sqlite").write_bytes(b"this is not sqlite" * 100)
    res = runner.invoke(app, ["store-export", str(st), "--out", str(tmp_path / "t.csv")])
    clear_error(res, 2, "not a readable nclab results store")


def test_analyze_non_torch_and_hostile_pt(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    res = runner.invoke(app, ["analyze", str(junk), "--model", "mlp", "--dataset", "synthetic"])
    clear_error(res, 2, "cannot be read as a weights-only torch file")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    hostile = tmp_path / "hostile.pt"
    torch.save({"model": Evil()}, hostile, pickle_module=pickle)
    res = runner.invoke(app, ["analyze", str(hostile), "--model", "mlp", "--dataset", "synthetic"])
    clear_error(res, 2, "weights-only")
    assert not (tmp_path / "pwned").exists()


def test_analyze_out_that_is_a_file_and_cuda_without_cuda(run, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    clear_error(runner.invoke(app, ["analyze", str(run), "--out", str(f)]), 2, "is a file")
    if not torch.cuda.is_available():
        clear_error(runner.invoke(app, ["analyze", str(run), "--device", "cuda"]), 2, "CUDA is not available")


def test_detect_out_file_dir_unwritable(run, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    clear_error(runner.invoke(app, ["detect", str(run), "--out", str(tmp_path)]), 2, "is a directory")
    clear_error(runner.invoke(app, ["detect", str(run), "--out", str(f / "s.csv")]), 2, "is a file")
    res = runner.invoke(app, ["detect", str(run), "--out", "/sys/nclab-suspicion.csv", "--top", "0"])
    clear_error(res, 4, "cannot write /sys/nclab-suspicion.csv")


def _npz_with_header(path: Path, shape: tuple) -> None:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("features.npy", buf.getvalue() + b"\0" * 64)
        lab = io.BytesIO()
        np.save(lab, np.zeros(4, dtype=np.int64))
        z.writestr("labels.npy", lab.getvalue())


def test_npz_header_claiming_1e18_elements(tmp_path):
    bad = tmp_path / "bad.npz"
    _npz_with_header(bad, (10**9, 10**9))
    clear_error(runner.invoke(app, ["metrics", str(bad)]), 2, "claims shape", "features.npy")
    from nclab.store.rundir import load_npz

    with pytest.raises(ValueError, match="claims shape"):
        load_npz(bad)


def test_model_too_large_for_memory(cfg_file, tmp_path):
    # a 2e6-wide layer (16 TB of weights) is refused by the stated width bound, before any allocation
    res = train_cli(cfg_file, tmp_path / "r", "--set", "model.depth=3", "--set", "model.width=2000000")
    clear_error(res, 2, "model.width must lie in [1, 16384]; got 2000000")


def test_batch_size_1_with_batchnorm_fails_before_training(cfg_file, tmp_path):
    res = train_cli(cfg_file, tmp_path / "r", "--set", "batch_size=1")
    clear_error(res, 2, "batch_size 1", "BatchNorm")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ item 9: loose validation

@pytest.mark.parametrize("override,needle", [
    ("epochs=true", "epochs must be a number, not a boolean"),
    ("batch_size=false", "batch_size must be a number, not a boolean"),
    ("optim.lr=.inf", "optim.lr: Input should be a finite number"),
    ("optim.lr=.nan", "optim.lr: Input should be a finite number"),
    ("noise.rate=.nan", "noise.rate: Input should be a finite number"),
    ("schedule.milestones=[true]", "milestones must hold numbers"),
    ("name=../../x", "is not a valid name"),
    ("name=/etc", "is not a valid name"),
])
def test_strict_config_values(cfg_file, tmp_path, override, needle):
    res = runner.invoke(app, ["train", str(cfg_file), "--set", override, "--no-progress"])
    clear_error(res, 2, needle)


def test_default_run_dir_stays_under_runs(cfg_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", str(cfg_file), "--set", "name=../../escape", "--no-progress"])
    clear_error(res, 2, "is not a valid name")
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "runs").exists()


def test_bad_json_row_in_store_names_the_run(tmp_path):
    from nclab.store.index import Owner, RunStore, StoreError

    st = RunStore(tmp_path / "store")
    st.register([{"hash": "abc123", "name": "run-x", "config": {}}])
    o = Owner()
    st.claim("abc123", o)
    st.complete("abc123", o, {"a": 1})
    st._con().execute("UPDATE runs SET final = '{broken' WHERE hash = 'abc123'")
    with pytest.raises(StoreError, match="abc123.*run-x.*'final'"):
        st.rows()
    res = runner.invoke(app, ["store-export", str(tmp_path / "store"), "--out", str(tmp_path / "t.csv")])
    clear_error(res, 2, "abc123", "run-x", "corrupt 'final' column")


def test_negative_labels_say_so(tmp_path):
    p = tmp_path / "neg.npz"
    np.savez(p, features=np.random.default_rng(0).normal(size=(6, 3)), labels=np.array([0, 1, -1, 0, 1, 0]))
    clear_error(runner.invoke(app, ["metrics", str(p)]), 2, "'labels' holds negative values")


def test_crafted_checkpoint_with_negative_epoch_changes_nothing(cfg_file, tmp_path):
    d = tmp_path / "r"
    cfg = TrainConfig.from_dict(TINY)
    train(cfg, run_dir=d, progress=False, max_epochs=1)
    before = (d / "metrics.jsonl").read_bytes()
    ck = d / "checkpoints" / "last.pt"
    state = load_checkpoint(ck)
    buf = io.BytesIO()
    torch.save({**state, "epoch": -5}, buf)
    data = buf.getvalue()
    import hashlib

    header = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "epoch": -5,
              "config_hash": cfg.config_hash(), "format_version": 2}
    ck.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + data)
    with pytest.raises(CheckpointError, match="epoch -5"):
        load_checkpoint(ck)
    clear_error(train_cli(cfg_file, d, "--resume"), 2, "epoch -5")
    assert (d / "metrics.jsonl").read_bytes() == before
    with pytest.raises(ValueError, match="epoch"):
        save_checkpoint(tmp_path / "x.pt", {"epoch": -1}, config_hash="h")


def test_one_file_checkpoint_commits_record_and_weights_together(tmp_path):
    """The record lives in the checkpoint file itself: no separate checksum file can go stale."""
    p = tmp_path / "c" / "last.pt"
    save_checkpoint(p, {"epoch": 3, "w": torch.arange(4.0)}, config_hash="h1")
    assert sorted(x.name for x in p.parent.iterdir()) == ["last.pt"]
    assert p.read_bytes().startswith(MAGIC)
    from nclab.store.checkpoint import checkpoint_info

    assert checkpoint_info(p)["epoch"] == 3 and load_checkpoint(p, config_hash="h1")["epoch"] == 3
    raw = bytearray(p.read_bytes())
    raw[-10] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(p)


def test_format1_checkpoint_still_loads(tmp_path):
    """Checkpoints written before the one-file format (archive + last.pt.json sidecar) resume."""
    import hashlib

    p = tmp_path / "last.pt"
    buf = io.BytesIO()
    torch.save({"epoch": 2, "w": torch.ones(2), "format_version": 1, "config_hash": "h"}, buf)
    p.write_bytes(buf.getvalue())
    (tmp_path / "last.pt.json").write_text(json.dumps({"sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                                                        "epoch": 2}))
    assert load_checkpoint(p, config_hash="h")["epoch"] == 2
    save_checkpoint(p, {"epoch": 3}, config_hash="h")
    assert not (tmp_path / "last.pt.json").exists() and load_checkpoint(p)["epoch"] == 3


def test_detect_into_a_run_dir_being_trained_is_refused(run):
    from nclab.store.rundir import RunLock

    with RunLock(run):
        res = runner.invoke(app, ["detect", str(run), "--top", "0"])
    clear_error(res, 5, f"pid {os.getpid()}")
    res = runner.invoke(app, ["detect", str(run), "--top", "0"])  # the lock is free again
    assert res.exit_code == 0, res.output
