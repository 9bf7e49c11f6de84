"""No symlink games, and a resume that checks the history it continues (issue 20, items 3 and 8):
links planted in a run directory or store never make nclab write or delete their targets; a
torn or deleted ``metrics.jsonl`` is rebuilt from the checkpoint or refused; a damaged
``dynamics/epoch_*.npy`` is named."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nclab.cli import _register_all, app
from nclab.store.files import append_jsonl, read_jsonl
from nclab.train import TIMING_KEYS, TrainConfig, train
from nclab.store.rundir import RunDirError
from tiny_run import TINY, tiny_config

_register_all()
runner = CliRunner()

def cfg(**over) -> TrainConfig:
    return tiny_config(**over)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """An uninterrupted 4-epoch run (the reference)."""
    d = tmp_path_factory.mktemp("full") / "run"
    train(cfg(), run_dir=d, progress=False)
    return d


@pytest.fixture()
def half_run(tmp_path) -> Path:
    """The same run stopped after 2 of 4 epochs (resumable)."""
    d = tmp_path / "run"
    r = train(cfg(), run_dir=d, progress=False, max_epochs=2)
    assert r.status == "stopped" and len(read_jsonl(d / "metrics.jsonl")) == 2
    return d


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _precious(tmp_path: Path) -> Path:
    p = tmp_path / "outside" / "precious.txt"
    p.parent.mkdir(exist_ok=True)
    p.write_text("do not touch\n")
    return p


# ------------------------------------------------------------------ no symlink games

def test_symlinked_lock_file_leaves_its_target_unchanged(tmp_path):
    precious = _precious(tmp_path)
    rd = tmp_path / "rd"
    rd.mkdir()
    os.symlink(precious, rd / ".nclab.lock")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps(TINY))
    res = runner.invoke(app, ["train", str(cfg_file), "--run-dir", str(rd), "--no-progress"])
    assert res.exit_code == 2, (res.output, res.exception)
    assert "symbolic link" in res.output and "Traceback" not in res.output
    assert precious.read_text() == "do not touch\n"
    assert not (rd / "metrics.jsonl").exists()


@pytest.mark.parametrize("name", ["metrics.jsonl", "status.json", "config.yaml"])
def test_symlinked_run_files_are_refused(half_run, tmp_path, name):
    precious = _precious(tmp_path)
    (half_run / name).unlink()
    os.symlink(precious, half_run / name)
    with pytest.raises(RunDirError, match=f"{name} is a symbolic link"):
        train(cfg(), run_dir=half_run, progress=False, resume=True)
    assert precious.read_text() == "do not touch\n"


def test_resume_never_deletes_through_a_symlinked_dynamics_folder(half_run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(half_run / "dynamics", elsewhere)
    for e in (3, 4, 5):  # what a resume from epoch 2 would delete
        np.save(elsewhere / f"epoch_{e:04d}.npy", np.zeros(3, np.float32))
    before = {p.name: _sha(p) for p in elsewhere.iterdir()}
    os.symlink(elsewhere, half_run / "dynamics")
    with pytest.raises(RunDirError, match="dynamics is a symbolic link"):
        train(cfg(), run_dir=half_run, progress=False, resume=True)
    assert {p.name: _sha(p) for p in elsewhere.iterdir()} == before


def test_append_never_follows_a_link(tmp_path):
    precious = _precious(tmp_path)
    os.symlink(precious, tmp_path / "m.jsonl")
    with pytest.raises(OSError):
        append_jsonl(tmp_path / "m.jsonl", {"epoch": 1})
    assert precious.read_text() == "do not touch\n"


def test_symlinked_store_index_is_never_written(tmp_path):
    from nclab.store.index import Owner, RunStore, StoreError

    real = tmp_path / "real"
    st = RunStore(real)
    st.register([{"hash": "a", "name": "a", "config": {}}])
    o = Owner()
    st.claim("a", o)
    st.complete("a", o, {"x": 1})
    st.close()
    before = _sha(real / "index.sqlite")
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(real / "index.sqlite", linked / "index.sqlite")
    with pytest.raises(StoreError, match="symbolic link"):
        RunStore(linked)
    ro = RunStore(linked, create=False)  # reading through it is fine, and read-only
    assert ro.readonly and [r["hash"] for r in ro.rows()] == ["a"]
    ro.close()
    assert _sha(real / "index.sqlite") == before


# ------------------------------------------------------------------ resume checks the history

def test_deleted_metrics_is_rebuilt_from_the_checkpoint(half_run, full_run):
    (half_run / "metrics.jsonl").unlink()
    with pytest.warns(UserWarning, match="metrics.jsonl.*rebuilt from the checkpoint"):
        r = train(cfg(), run_dir=half_run, progress=False, resume=True)
    assert r.status == "completed"
    assert _strip(read_jsonl(half_run / "metrics.jsonl")) == _strip(read_jsonl(full_run / "metrics.jsonl"))


def test_torn_last_line_before_the_checkpoint_is_rebuilt(half_run, full_run):
    m = half_run / "metrics.jsonl"
    m.write_bytes(m.read_bytes()[:-40])  # the epoch-2 record torn, the checkpoint is at epoch 2
    with pytest.warns(UserWarning, match="rebuilt from the checkpoint"):
        r = train(cfg(), run_dir=half_run, progress=False, resume=True)
    assert r.status == "completed" and [x["epoch"] for x in r.history] == [1, 2, 3, 4]
    assert _strip(read_jsonl(m)) == _strip(read_jsonl(full_run / "metrics.jsonl"))


def test_missing_history_without_a_copy_in_the_checkpoint_is_refused(half_run, monkeypatch):
    from nclab.store import checkpoint as ck

    # a checkpoint written before checkpoints carried the history
    state = ck.load_checkpoint(half_run / "checkpoints" / "last.pt")
    state.pop("metrics_jsonl", None)
    ck.save_checkpoint(half_run / "checkpoints" / "last.pt", state, config_hash=cfg().config_hash())
    lines = (half_run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (half_run / "metrics.jsonl").write_text(lines[1])  # epoch 1 lost
    with pytest.raises(Exception, match=r"metrics.jsonl.*1 of the 2 records.*epoch 1") as ei:
        train(cfg(), run_dir=half_run, progress=False, resume=True)
    assert "Traceback" not in str(ei.value)
    assert (half_run / "metrics.jsonl").read_text() == lines[1]  # left as it was


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_damaged_dynamics_file_is_named_on_resume(half_run, damage):
    bad = half_run / "dynamics" / "epoch_0001.npy"
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:-7])
    elif damage == "delete":
        bad.unlink()
    else:
        bad.write_bytes(b"\x93NUMPY garbage" * 10)
    with pytest.raises(Exception, match="epoch_0001.npy"):
        train(cfg(), run_dir=half_run, progress=False, resume=True)


def test_detect_dynamics_names_a_truncated_file(full_run, tmp_path):
    rd = tmp_path / "copy"
    shutil.copytree(full_run, rd)
    bad = rd / "dynamics" / "epoch_0003.npy"
    bad.write_bytes(bad.read_bytes()[:-5])
    from nclab.store.dynamics import load_dynamics

    with pytest.raises(ValueError, match="epoch_0003.npy"):
        load_dynamics(rd)
