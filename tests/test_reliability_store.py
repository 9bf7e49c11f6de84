"""A results store is read correctly or refused in one line (issue 20, items 4-6): corrupt,
zero-byte and foreign files, bad rows, a full disk, and a read-only store whose newest commits
are still in its WAL file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nclab.cli import _register_all, app
from nclab.store.index import Owner, RunStore, StoreError, StoreIOError

_register_all()
runner = CliRunner()


def one_line_error(res, code: int, *needles: str) -> None:
    """Exit ``code`` with a single ``error:`` line naming the problem, no traceback."""
    out = res.output
    assert res.exit_code == code, (res.exit_code, out, res.exception)
    assert "Traceback" not in out, out
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    flat = " ".join(out.split())
    for n in needles:
        assert n in flat, (n, out)


def make_store(root: Path, n: int = 30) -> RunStore:
    st = RunStore(root)
    st.register([{"hash": f"h{i:03d}", "name": f"r{i}", "config": {"seed": i, "pad": "x" * 100}}
                 for i in range(n)], sweep="s")
    o = Owner()
    for i in range(n):
        st.claim(f"h{i:03d}", o)
        st.complete(f"h{i:03d}", o, {"acc": i / n})
    st.close()
    return st


def export(store: Path, out: Path, *extra: str):
    return runner.invoke(app, ["store-export", str(store), "--out", str(out), "--status", "all", *extra])


def sweep_spec(tmp_path: Path, n: int = 2) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"name": "s", "base": {"fake": {"epochs": 1}}, "grid": {"seed": list(range(n))}}))
    return spec


def sweep(spec: Path, store: Path):
    return runner.invoke(app, ["sweep", str(spec), "--store", str(store), "--executor", "inline", "--no-progress",
                               "--run-fn", "nclab.sweep.testing:fake_run"])


# ------------------------------------------------------------------ corrupt, zero-byte, foreign files

def test_flipped_bytes_anywhere_give_the_same_table_or_one_line_exit_2(tmp_path):
    orig = tmp_path / "orig"
    make_store(orig)
    assert export(orig, tmp_path / "ref.csv").exit_code == 0
    ref = (tmp_path / "ref.csv").read_text()
    data = (orig / "index.sqlite").read_bytes()
    page = 4096
    assert len(data) >= 4 * page
    refused = 0
    # every page's b-tree header, the middle of every page, and the last page
    offsets = sorted({o for p in range(0, len(data), page) for o in (p + (100 if p == 0 else 0), p + page // 2)})[::2]
    for off in offsets:
        d = tmp_path / f"c{off}"
        shutil.copytree(orig, d)
        b = bytearray(data)
        for k in range(off, min(off + 16, len(b))):
            b[k] ^= 0xFF
        (d / "index.sqlite").write_bytes(bytes(b))
        res = export(d, d / "t.csv")
        if res.exit_code == 0:  # bytes SQLite cannot check (e.g. inside a timestamp): still a full table
            assert (d / "t.csv").read_text().count("\n") == ref.count("\n"), off
        else:
            one_line_error(res, 2, str(d / "index.sqlite"), "not a readable nclab results store")
            refused += 1
    assert refused >= len(offsets) // 2


def test_corrupt_last_page_and_mid_file_exit_2_from_every_command(tmp_path):
    for where in ("mid", "last"):
        st = tmp_path / where
        make_store(st)
        db = st / "index.sqlite"
        b = bytearray(db.read_bytes())
        pages = len(b) // 4096
        start = (pages // 2 if where == "mid" else pages - 1) * 4096
        for k in range(start, start + 12):  # the page's b-tree header
            b[k] ^= 0xFF
        db.write_bytes(bytes(b))
        one_line_error(export(st, tmp_path / "t.csv"), 2, str(db), "corrupt")
        one_line_error(runner.invoke(app, ["report", str(st), "--out", str(tmp_path / "rep")]), 2, str(db))
        one_line_error(sweep(sweep_spec(tmp_path), st), 2, str(db))
        with pytest.raises(StoreError, match="corrupt") as ei:
            RunStore(st, create=False)
        assert ei.value.exit_code == 2


def test_zero_byte_index_is_not_an_empty_store(tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    (st / "index.sqlite").write_bytes(b"")
    one_line_error(export(st, tmp_path / "t.csv"), 2, "index.sqlite", "empty (0 bytes)")
    one_line_error(runner.invoke(app, ["report", str(st), "--out", str(tmp_path / "rep")]), 2, "empty (0 bytes)")
    assert not (tmp_path / "t.csv").exists()


def test_foreign_files_are_refused_and_left_alone(tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    (text / "index.sqlite").write_text("name,score\nalice,3\n" * 300)
    one_line_error(export(text, tmp_path / "t.csv"), 2, str(text / "index.sqlite"), "not a readable")
    one_line_error(sweep(sweep_spec(tmp_path), text), 2, str(text / "index.sqlite"))

    other = tmp_path / "other"  # another program's SQLite database
    other.mkdir()
    con = sqlite3.connect(other / "index.sqlite")
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    con.execute("INSERT INTO users (email) VALUES ('a@b.c')")
    con.commit()
    con.close()
    before = (other / "index.sqlite").read_bytes()
    one_line_error(export(other, tmp_path / "t.csv"), 2, "not an nclab results store", "users")
    one_line_error(sweep(sweep_spec(tmp_path), other), 2, "not an nclab results store", "users")
    assert (other / "index.sqlite").read_bytes() == before  # no nclab tables added to it


def test_non_integer_schema_version(tmp_path):
    st = tmp_path / "st"
    make_store(st, 2)
    con = sqlite3.connect(st / "index.sqlite")
    con.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    one_line_error(export(st, tmp_path / "t.csv"), 2, "schema_version 'one' is not an integer")
    one_line_error(sweep(sweep_spec(tmp_path), st), 2, "schema_version 'one' is not an integer")


def test_status_outside_the_check_constraint_is_reported(tmp_path):
    st = tmp_path / "st"
    make_store(st, 3)
    con = sqlite3.connect(st / "index.sqlite")
    con.execute("PRAGMA ignore_check_constraints = ON")
    con.execute("UPDATE runs SET status = 'paused' WHERE hash = 'h001'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="h001 .*'paused'"):
        RunStore(st, create=False)
    one_line_error(export(st, tmp_path / "t.csv"), 2, "run h001 (r1)", "status 'paused'")


def test_search_on_an_unusable_store(tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    (st / "index.sqlite").write_bytes(b"\x00garbage" * 600)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}")
    res = runner.invoke(app, ["search", str(cfg), "--store", str(st), "--executor", "inline", "--trials", "1",
                              "--run-fn", "nclab.sweep.testing:fake_run"])
    one_line_error(res, 2, str(st / "index.sqlite"))


# ------------------------------------------------------------------ disk full

def test_disk_full_store_exits_4_and_keeps_the_store(tmp_path, monkeypatch):
    st = tmp_path / "st"
    make_store(st, 2)
    real_connect = sqlite3.connect

    def capped(*args, **kwargs):  # SQLite's own limit: the database cannot grow by one page
        con = real_connect(*args, **kwargs)
        con.execute("PRAGMA max_page_count = 1")  # clamps to the current size
        return con

    monkeypatch.setattr(sqlite3, "connect", capped)
    res = sweep(sweep_spec(tmp_path, 200), st)
    monkeypatch.undo()
    one_line_error(res, 4, str(st / "index.sqlite"), "disk full")
    assert "restore it from a copy" not in res.output
    assert len(RunStore(st, create=False).rows()) == 2  # intact: the failed transaction left nothing


@contextlib.contextmanager
def _tiny_tmpfs(size: str):
    mnt = Path(tempfile.mkdtemp(prefix="nclab-full-"))
    try:
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                                               capture_output=True).returncode:
            pytest.skip("mounting a small tmpfs needs root")
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)


def test_really_full_file_system_exits_4(tmp_path):
    with _tiny_tmpfs("256k") as mnt:
        st = mnt / "st"
        make_store(st, 2)
        filler = mnt / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        res = sweep(sweep_spec(tmp_path, 300), st)
        assert res.exit_code == 4, (res.output, res.exception)
        assert "Traceback" not in res.output and "restore it from a copy" not in res.output
        assert "disk full" in res.output or "disk I/O error" in res.output, res.output
        filler.unlink()
        assert len(RunStore(st, create=False).rows()) == 2


# ------------------------------------------------------------------ read-only store with a WAL

def test_read_only_store_with_a_wal_and_no_shm_is_read_with_its_newest_commits(tmp_path, as_nobody):
    base = Path(tempfile.mkdtemp(prefix="nclab-rowal-", dir="/tmp"))
    src, ro, outdir = base / "src", base / "ro", base / "out"
    try:
        make_store(src, 8)
        # a live writer whose commits are still only in the WAL (no checkpoint yet)
        con = sqlite3.connect(src / "index.sqlite", isolation_level=None)
        con.execute("PRAGMA wal_autocheckpoint = 0")
        con.execute("UPDATE runs SET status = 'failed', outcome = 'failed' WHERE hash = 'h003'")
        con.execute("UPDATE runs SET name = 'renamed-' || name WHERE hash IN ('h000', 'h001', 'h002')")
        ro.mkdir()
        shutil.copy(src / "index.sqlite", ro)
        shutil.copy(src / "index.sqlite-wal", ro)  # copied without its -shm, as a backup or mount would be
        con.close()
        assert (ro / "index.sqlite-wal").stat().st_size > 0 and not (ro / "index.sqlite-shm").exists()
        for p in ro.iterdir():
            os.chmod(p, 0o444)
        os.chmod(ro, 0o555)
        outdir.mkdir()
        os.chmod(outdir, 0o777)
        os.chmod(base, 0o755)
        files_before = sorted(p.name for p in ro.iterdir())

        def read_it() -> int:
            assert not os.access(ro, os.W_OK)
            res = export(ro, outdir / "t.csv")
            assert res.exit_code == 0, res.output
            st = RunStore(ro, create=False)
            assert st.readonly and st.counts()["completed"] == 7 and st.counts()["failed"] == 1
            return 0

        assert as_nobody(read_it) == 0
        import csv

        rows = {r["hash"]: r for r in csv.DictReader((outdir / "t.csv").open())}
        assert [rows[h]["status"] for h in sorted(rows)].count("completed") == 7 and rows["h003"]["status"] == "failed"
        assert rows["h000"]["name"] == "renamed-r0" and rows["h002"]["name"] == "renamed-r2"
        assert sorted(p.name for p in ro.iterdir()) == files_before  # nothing written to the store
    finally:
        os.chmod(ro, 0o755) if ro.exists() else None
        shutil.rmtree(base, ignore_errors=True)


def test_store_io_error_is_a_store_error_with_exit_4():
    assert issubclass(StoreIOError, StoreError) and StoreIOError.exit_code == 4 and StoreError.exit_code == 2
