"""The SQLite results store: no duplicate rows, atomic claims, owner checks, stale reclaim, export."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading

import pytest

from nclab.store.index import Owner, RunStore, pid_alive, pid_start_time


def _runs(n, prefix="r"):
    return [{"hash": f"{prefix}{i:03d}", "name": f"{prefix}-{i}", "config": {"i": i, "optim": {"lr": 0.1 * (i + 1)}}} for i in range(n)]


def test_register_is_idempotent_and_never_duplicates(tmp_path):
    st = RunStore(tmp_path)
    assert st.register(_runs(5), sweep="a") == 5
    assert st.register(_runs(7), sweep="b") == 2  # 5 known, 2 new
    assert st.total_rows() == 7
    assert st.counts()["pending"] == 7
    assert len(st.rows(sweep="a")) == 5 and len(st.rows(sweep="b")) == 7
    assert st.sweeps() == ["a", "b"]


def test_claim_is_exclusive_under_threads(tmp_path):
    st = RunStore(tmp_path)
    st.register(_runs(30))
    wins: dict[str, list[str]] = {}
    owners = [Owner() for _ in range(4)]

    def worker(o):
        s = RunStore(tmp_path)  # own connection, as another process would have
        wins[o.token] = [r["hash"] for r in _runs(30) if s.claim(r["hash"], o)]

    ts = [threading.Thread(target=worker, args=(o,)) for o in owners]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    claimed = [h for v in wins.values() for h in v]
    assert sorted(claimed) == sorted(r["hash"] for r in _runs(30))  # each exactly once
    assert st.counts()["running"] == 30


def test_complete_requires_the_owner_and_records_final(tmp_path):
    st = RunStore(tmp_path)
    st.register(_runs(2))
    a, b = Owner(), Owner()
    assert st.claim("r000", a)
    assert not st.claim("r000", b)
    assert not st.complete("r000", b, {"acc": 1.0})  # not b's run
    assert st.complete("r000", a, {"acc": 0.75, "nan": float("nan")})
    row = st.get("r000")
    assert row["status"] == "completed" and row["final"] == {"acc": 0.75, "nan": None}
    assert row["duration"] >= 0 and row["attempts"] == 1
    assert not st.complete("r000", a, {"acc": 0.0})  # already completed: nothing changes
    assert st.get("r000")["final"]["acc"] == 0.75
    assert st.claim("r001", a) and st.fail("r001", a, "Traceback...\nValueError: boom")
    assert st.get("r001")["status"] == "failed" and "boom" in st.get("r001")["error"]
    assert st.requeue_failed(["r001"]) == 1 and st.get("r001")["status"] == "pending"


def test_dead_owner_is_reclaimed_live_owner_is_not(tmp_path):
    st = RunStore(tmp_path, stale_after=3600)
    st.register(_runs(2))
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # a pid that existed and is now gone
    dead = Owner(pid=p.pid, pid_start=None)
    live = Owner()
    assert st.claim("r000", dead) and st.claim("r001", live)
    assert not pid_alive(p.pid)
    assert st.reclaim_stale() == ["r000"]
    assert st.get("r000")["status"] == "pending" and st.get("r001")["status"] == "running"
    assert not st.complete("r000", dead, {"x": 1})  # a late completion from the dead owner is refused


def test_stale_heartbeat_on_another_host_is_reclaimed(tmp_path):
    st = RunStore(tmp_path, stale_after=0.0)
    st.register(_runs(1))
    far = Owner(host="another-host", pid=os.getpid())
    assert st.claim("r000", far)
    assert st.reclaim_stale() == ["r000"]


def test_pid_reuse_is_detected():
    me = os.getpid()
    start = pid_start_time(me)
    assert start is not None and pid_alive(me, start)
    assert not pid_alive(me, start + 1)  # same pid, different start time: a different process


def test_export_csv_flattens_config_and_final(tmp_path):
    st = RunStore(tmp_path)
    st.register(_runs(3))
    o = Owner()
    for i in range(2):
        st.claim(f"r{i:03d}", o)
        st.complete(f"r{i:03d}", o, {"test_acc": 0.5 + i / 10, "train.nc1": 0.1})
    n = st.export_csv(tmp_path / "out.csv")
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert n == 2 and len(rows) == 2
    assert rows[1]["config.optim.lr"] == "0.2" and rows[1]["final.test_acc"] == "0.6"
    assert rows[0]["final.train.nc1"] == "0.1"


def test_export_parquet(tmp_path):
    st = RunStore(tmp_path)
    st.register(_runs(1))
    o = Owner()
    st.claim("r000", o)
    st.complete("r000", o, {"acc": 1.0})
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(RuntimeError, match="pyarrow"):
            st.export_parquet(tmp_path / "x.parquet")
        return
    st.export_parquet(tmp_path / "x.parquet")
    assert pq.read_table(tmp_path / "x.parquet").to_pydict()["final.acc"] == [1.0]


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results store"):
        RunStore(tmp_path / "nope", create=False)
