"""The results store: one SQLite file (``index.sqlite``) next to the run directories.

Layout of a store directory::

    STORE/
      index.sqlite       the run table (this module); WAL mode, safe for several processes
      runs/<hash>/       one run directory per config hash (trainer output: metrics.jsonl, ...)
      optuna.sqlite      hyperparameter-search state (nclab.sweep.search), when used

Every run is one row keyed by its config hash (PRIMARY KEY: no duplicate rows, ever). Its
``status`` moves ``pending -> running -> completed | failed`` and only through these
single-statement, conditional updates:

* ``claim``: ``pending -> running`` iff the row is still pending (SQLite serialises writers,
  so of two processes claiming the same run exactly one sees ``rowcount == 1``). The claimer
  writes its owner token, host, pid (+ the pid's start time, against pid reuse) and a
  heartbeat.
* ``complete`` / ``fail``: ``running -> completed | failed`` iff the row is still owned by the
  caller's token. The final metrics are written *in the same statement* that marks the run
  completed: a run directory without a committed row is never counted as a result.
* ``reclaim_stale``: ``running -> pending`` when the owner is dead (same host and its pid is
  gone or was reused) or its heartbeat is older than ``stale_after`` seconds (other hosts).
  A late ``complete`` from a reclaimed owner is then refused (the token no longer matches).

A run that diverged (non-finite loss, parameters or logits) is finished but is not a result:
``complete(..., outcome="diverged")`` stores it, and every read (``status_of``, ``counts``,
``rows``, ``get``, ``table``) reports its status as ``"diverged"``, never ``"completed"``, so
``rows(status="completed")`` and the exports leave it out and ``rows(status="diverged")``
lists it. (On disk it is the row ``status='completed', outcome='diverged'``: the status column's
CHECK predates the outcome, and this keeps old stores and read-only stores readable without a
migration.) A diverged run is not retried: it would diverge again.

``RunStore(root, readonly=True)`` (also chosen automatically when ``create=False`` and the
store cannot be written) opens ``index.sqlite`` through a ``mode=ro`` URI and never sets WAL
mode or writes anything, so reports and exports work on read-only media. If SQLite cannot
even create its shared-memory file there, a store with a non-empty ``-wal`` file is read from
a private copy of ``index.sqlite`` and its WAL (the WAL holds the newest commits: reading the
main file alone would be stale); without a WAL the file is read as ``immutable``.

Every SQLite error is raised as a :class:`StoreError` that names the file and carries the
command-line exit code: 2 for a corrupt or foreign file (also a zero-byte file opened for
reading, a non-integer ``schema_version`` and a row whose status is not one of
:data:`STATUSES`), 4 (:class:`StoreIOError`) when the system refuses (disk full, I/O error,
read-only, locked for longer than the busy timeout).

Works on local disks; SQLite's WAL mode does not work over network file systems (NFS/SMB):
share a store across machines through one driver (the Ray executor) instead.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from nclab.store.files import atomic_write_bytes, atomic_write_text, to_json

__all__ = ["RunStore", "Owner", "STATUSES", "StoreError", "StoreIOError", "pid_start_time", "pid_alive", "flatten"]

STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed", "diverged")
SCHEMA_VERSION = 1

# The status every read reports: a finished run whose outcome is "diverged" is not "completed".
_STATUS = "(CASE WHEN runs.status = 'completed' AND runs.outcome = 'diverged' THEN 'diverged' ELSE runs.status END)"


class StoreError(RuntimeError):
    """A results store that cannot be opened or read (corrupt file, bad row), named in the message.

    ``exit_code`` is the command-line exit code: 2 (bad input: corrupt or foreign store)."""

    exit_code = 2


class StoreIOError(StoreError):
    """The system refused the store (disk full, I/O error, read-only, locked): exit code 4."""

    exit_code = 4


# primary SQLite result codes (the low byte of an extended code) the system is to blame for
_IO_CODES = {
    sqlite3.SQLITE_FULL: "disk full (no space left for the store); nothing was lost: free space and rerun",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_READONLY: "read-only (cannot write the store)",
    sqlite3.SQLITE_CANTOPEN: "cannot be opened",
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_BUSY: "locked by another process for longer than the 60 s busy timeout; retry later",
    sqlite3.SQLITE_LOCKED: "locked by another connection; retry later",
    sqlite3.SQLITE_NOMEM: "out of memory",
    sqlite3.SQLITE_NOLFS: "too large for this file system",
}


def store_error(exc: BaseException, db_path: str | Path) -> StoreError:
    """The one-line :class:`StoreError` (exit 2) or :class:`StoreIOError` (exit 4) for an
    ``sqlite3`` error raised while using the store ``db_path``."""
    if isinstance(exc, StoreError):
        return exc
    code = getattr(exc, "sqlite_errorcode", None)
    text = " ".join(str(exc).split()) or type(exc).__name__
    if code is None and "database or disk is full" in text:
        code = sqlite3.SQLITE_FULL
    if code is not None and (code & 0xFF) in _IO_CODES:
        return StoreIOError(f"results store {db_path}: {_IO_CODES[code & 0xFF]} ({text})")
    return StoreError(
        f"{db_path} is not a readable nclab results store ({text}); restore it from a copy or start a new store"
    )


def _mapped(fn):
    """Raise every ``sqlite3`` error of a :class:`RunStore` method as a :func:`store_error`."""

    @functools.wraps(fn)
    def wrapper(self: "RunStore", *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except (sqlite3.Error, UnicodeDecodeError) as exc:  # text that is not UTF-8: a damaged page
            raise store_error(exc, self.db_path) from exc

    return wrapper

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    hash       TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    config     TEXT NOT NULL,
    outcome    TEXT,
    error      TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created    REAL NOT NULL,
    started    REAL,
    finished   REAL,
    duration   REAL,
    heartbeat  REAL,
    final      TEXT,
    owner      TEXT,
    host       TEXT,
    pid        INTEGER,
    pid_start  INTEGER
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL,
    hash  TEXT NOT NULL REFERENCES runs (hash),
    PRIMARY KEY (sweep, hash)
);
"""


def pid_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 2 (comm) may contain spaces; fields after the last ')' are space separated
    rest = raw.rsplit(")", 1)[-1].split()
    try:
        return int(rest[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` exists on this host (and, if ``start`` is given, is the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if start is not None:
        now = pid_start_time(pid)
        if now is not None and now != start:
            return False  # the pid was reused by a new process
    # a zombie (killed, not yet reaped) is dead for our purposes
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    return True


@dataclass(frozen=True)
class Owner:
    """Who claims runs: a random token plus host, pid and the pid's start time."""

    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    pid_start: int | None = field(default_factory=lambda: pid_start_time(os.getpid()))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": value}``; lists kept as JSON strings (one CSV cell each)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


class RunStore:
    """The SQLite run index of a store directory (see the module docstring).

    Parameters
    ----------
    root : store directory (created if missing).
    stale_after : seconds without a heartbeat after which another host's running claim is
        considered dead (same-host claims are checked by pid, immediately).
    """

    def __init__(self, root: str | Path, *, stale_after: float = 300.0, create: bool = True,
                 readonly: bool = False):
        self.root = Path(root)
        self.db_path = self.root / "index.sqlite"
        self.wal_path = self.root / "index.sqlite-wal"
        self._copy: Path | None = None  # private copy of db + WAL (read-only media, see _connect_readonly)
        self._copy_lock = threading.Lock()
        if (not create or readonly) and not self.db_path.exists():
            raise FileNotFoundError(f"no results store at {self.root} (missing {self.db_path})")
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"results store {self.root} is a file, not a directory")
        if self.db_path.exists() and not self.db_path.is_file():
            raise StoreError(f"{self.db_path} is not a file")
        if (not create or readonly) and _size(self.db_path) == 0 and not _size(self.wal_path):
            # SQLite would read a zero-byte file as an empty database: a store that lost its data
            raise StoreError(f"{self.db_path} is empty (0 bytes), not an nclab results store; "
                             "restore it from a copy or delete it to start a new store")
        if not create and not readonly:
            # nothing to create: open read-only when this process cannot write the store
            readonly = (not (os.access(self.db_path, os.W_OK) and os.access(self.root, os.W_OK | os.X_OK))
                        or self.db_path.is_symlink())  # read through a link, never write through one
        self.readonly = readonly
        if not readonly:  # SQLite follows links: a planted one would make us write its target
            for p in (self.db_path, self.wal_path, self.root / "index.sqlite-shm"):
                if p.is_symlink():
                    raise StoreError(f"{p} is a symbolic link (to {os.readlink(p)}); nclab does not write a "
                                     "results store through links: remove the link or open the store read-only")
        if not readonly:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create results store {self.root}: {exc.strerror or exc}") from None
        self.runs_dir = self.root / "runs"
        self.stale_after = float(stale_after)
        self._local = threading.local()
        try:
            self._init_schema()
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            if create or readonly or not isinstance(exc, sqlite3.OperationalError) or not _is_readonly_error(exc):
                self.close()
                raise store_error(exc, self.db_path) from exc
            self.close()  # read-only media that os.access did not detect: read it read-only
            self.readonly = True
            try:
                self._init_schema()
            except (sqlite3.Error, UnicodeDecodeError) as exc2:
                self.close()
                raise store_error(exc2, self.db_path) from exc2

    # ------------------------------------------------------------------ connection
    def _connect_readonly(self) -> sqlite3.Connection:
        if self._copy is not None:
            return _connect_ro(self._copy)
        con = _connect_ro(self.db_path)
        try:
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return con
        except sqlite3.OperationalError:
            con.close()
        # A WAL database on media where SQLite cannot create its -shm file (nobody can write
        # there either). ``immutable`` would ignore the WAL, whose commits are the newest: read a
        # private copy of the database and its WAL instead; without a WAL the file is complete.
        if not _size(self.wal_path):
            return _connect_ro(self.db_path, immutable=True)
        with self._copy_lock:
            if self._copy is None:
                self._copy = self._private_copy()
        return _connect_ro(self._copy)

    def _private_copy(self) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix="nclab-store-"))
        weakref.finalize(self, shutil.rmtree, str(tmp), True)
        copy = tmp / "index.sqlite"
        try:
            shutil.copyfile(self.db_path, copy)
            shutil.copyfile(self.wal_path, tmp / "index.sqlite-wal")
            con = sqlite3.connect(copy, isolation_level=None)
            try:
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # fold the WAL's commits into the copy
            finally:
                con.close()
        except OSError as exc:
            raise StoreIOError(
                f"results store {self.db_path} is read-only with a WAL file, and copying it to read it failed: "
                f"{exc.strerror or exc} ({tempfile.gettempdir()})"
            ) from exc
        return copy

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None or getattr(self._local, "pid", None) != os.getpid():
            if self.readonly:
                con = self._connect_readonly()
                con.row_factory = sqlite3.Row
                con.execute("PRAGMA busy_timeout = 60000")
                self._local.con = con
                self._local.pid = os.getpid()
                return con
            # one connection per thread and process: sqlite3 connections must not cross forks
            con = sqlite3.connect(self.db_path, timeout=60.0, isolation_level=None)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA busy_timeout = 60000")
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"{self.db_path}: could not enable WAL mode (got {mode!r}); is this a network file system?")
            con.execute("PRAGMA synchronous = NORMAL")  # WAL+NORMAL: durable across process crashes
            con.execute("PRAGMA foreign_keys = ON")
            self._local.con = con
            self._local.pid = os.getpid()
        return con

    class _Tx:
        def __init__(self, con: sqlite3.Connection):
            self.con = con

        def __enter__(self) -> sqlite3.Connection:
            self.con.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
            return self.con

        def __exit__(self, exc_type, exc, tb) -> None:
            if exc_type is None:
                self.con.execute("COMMIT")
            elif self.con.in_transaction:  # SQLite may have rolled back itself (e.g. disk full)
                try:
                    self.con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # keep the original error

    def _tx(self) -> "RunStore._Tx":
        return RunStore._Tx(self._con())

    def _init_schema(self) -> None:
        """Check (read-only) or create the schema; raises ``sqlite3`` errors and StoreError."""
        if not self.readonly and _size(self.db_path):
            # look before the read-write connection switches the file to WAL mode (a write)
            probe = _connect_ro(self.db_path)
            try:
                self._refuse_foreign(self._tables(probe))
            finally:
                probe.close()
        con = self._con()
        # pages a query would not touch can be corrupt too: refuse the store now, in one line
        problem = con.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            if "CHECK constraint" in str(problem) and "runs" in self._tables(con):
                bad = self._unknown_status(con)  # name the run, not just the table
                if bad is not None:
                    raise bad
            problem = " ".join(str(problem).replace("*** in database main ***", "").split())
            raise StoreError(f"{self.db_path} is corrupt ({problem}); not a readable nclab results store: "
                             "restore it from a copy or start a new store")
        if self.readonly:
            tables = self._tables(con)
            if not {"meta", "runs", "sweep_runs"} <= tables:
                raise StoreError(f"{self.db_path} is not an nclab results store (tables: {sorted(tables)})")
            self._check_version(con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone())
            return
        with self._tx() as c:  # one transaction: a concurrent opener sees no half-made schema
            self._refuse_foreign(self._tables(c))
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)  # idempotent (IF NOT EXISTS)
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self._check_version(row)

    def _refuse_foreign(self, tables: set[str]) -> None:
        if tables and "meta" not in tables:  # another program's database: never add tables to it
            raise StoreError(f"{self.db_path} is not an nclab results store (tables: {sorted(tables)})")

    @staticmethod
    def _tables(con: sqlite3.Connection) -> set[str]:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _check_version(self, row: Any) -> None:
        if row is None:
            return
        try:
            version = int(row[0])
        except (TypeError, ValueError):
            raise StoreError(
                f"{self.db_path}: schema_version {row[0]!r} is not an integer; not a readable nclab results store"
            ) from None
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.db_path}: schema version {version}, this nclab reads {SCHEMA_VERSION}")

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def _unknown_status(self, con: sqlite3.Connection) -> StoreError | None:
        """The error for the first row whose status is not one of STATUSES (None if all are)."""
        known = ",".join(f"'{s}'" for s in STATUSES)
        r = con.execute(f"SELECT hash, name, status FROM runs WHERE {_STATUS} NOT IN ({known}) "
                        "OR status IS NULL ORDER BY rowid LIMIT 1").fetchone()
        if r is None:
            return None
        return StoreError(f"run {r['hash']} ({r['name']}) in {self.db_path} has status {r['status']!r}, "
                          f"not one of {', '.join(STATUSES)}; fix or delete its row")

    # ------------------------------------------------------------------ writes
    def run_dir(self, hash_: str) -> Path:
        """The run directory of ``hash_`` (``STORE/runs/<hash>``)."""
        return self.runs_dir / hash_

    @_mapped
    def register(self, runs: Iterable[Any], *, sweep: str | None = None) -> int:
        """Insert runs (objects or dicts with ``hash``, ``name``, ``config``) as pending unless
        present; returns how many rows are new. Existing rows are never changed."""
        now = time.time()
        new = 0
        with self._tx() as con:
            for r in runs:
                h, name, cfg = _field(r, "hash"), _field(r, "name"), _field(r, "config")
                cur = con.execute(
                    "INSERT OR IGNORE INTO runs (hash, name, status, config, created) VALUES (?, ?, 'pending', ?, ?)",
                    (h, name, to_json(cfg), now),
                )
                new += cur.rowcount
                if sweep is not None:
                    con.execute("INSERT OR IGNORE INTO sweep_runs (sweep, hash) VALUES (?, ?)", (sweep, h))
        return new

    @_mapped
    def claim(self, hash_: str, owner: Owner) -> bool:
        """Atomically ``pending -> running`` for ``owner``; False if the run is not pending."""
        now = time.time()
        cur = self._con().execute(
            "UPDATE runs SET status = 'running', owner = ?, host = ?, pid = ?, pid_start = ?, "
            "started = ?, heartbeat = ?, finished = NULL, duration = NULL, error = NULL, "
            "attempts = attempts + 1 WHERE hash = ? AND status = 'pending'",
            (owner.token, owner.host, owner.pid, owner.pid_start, now, now, hash_),
        )
        return cur.rowcount == 1

    @_mapped
    def heartbeat(self, owner: Owner) -> int:
        """Refresh the heartbeat of every run ``owner`` holds; returns how many."""
        cur = self._con().execute(
            "UPDATE runs SET heartbeat = ? WHERE owner = ? AND status = 'running'", (time.time(), owner.token)
        )
        return cur.rowcount

    @_mapped
    def complete(self, hash_: str, owner: Owner, final: dict[str, Any], *, outcome: str = "completed") -> bool:
        """``running -> completed`` with the final metrics, iff ``owner`` still holds the run."""
        now = time.time()
        cur = self._con().execute(
            "UPDATE runs SET status = 'completed', final = ?, outcome = ?, finished = ?, "
            "duration = ? - started, heartbeat = ? WHERE hash = ? AND owner = ? AND status = 'running'",
            (to_json(final), outcome, now, now, now, hash_, owner.token),
        )
        return cur.rowcount == 1

    @_mapped
    def fail(self, hash_: str, owner: Owner, error: str) -> bool:
        """``running -> failed`` with the error text (traceback), iff ``owner`` still holds it."""
        now = time.time()
        cur = self._con().execute(
            "UPDATE runs SET status = 'failed', error = ?, outcome = 'failed', finished = ?, "
            "duration = ? - started WHERE hash = ? AND owner = ? AND status = 'running'",
            (error, now, now, hash_, owner.token),
        )
        return cur.rowcount == 1

    @_mapped
    def release(self, hash_: str, owner: Owner) -> bool:
        """Give a claimed run back (``running -> pending``), e.g. on Ctrl-C."""
        cur = self._con().execute(
            "UPDATE runs SET status = 'pending', owner = NULL, heartbeat = NULL "
            "WHERE hash = ? AND owner = ? AND status = 'running'",
            (hash_, owner.token),
        )
        return cur.rowcount == 1

    @_mapped
    def reclaim_stale(self, *, host: str | None = None) -> list[str]:
        """Return dead owners' runs to ``pending``: on this host when the claiming pid is gone
        (or reused), anywhere when the heartbeat is older than ``stale_after``."""
        host = host or socket.gethostname()
        now = time.time()
        reclaimed: list[str] = []
        with self._tx() as con:
            rows = con.execute(
                "SELECT hash, host, pid, pid_start, heartbeat FROM runs WHERE status = 'running'"
            ).fetchall()
            for r in rows:
                dead = False
                if r["host"] == host and r["pid"] is not None:
                    dead = not pid_alive(int(r["pid"]), r["pid_start"])
                if not dead and (r["heartbeat"] is None or now - float(r["heartbeat"]) > self.stale_after):
                    dead = True
                if dead:
                    con.execute(
                        "UPDATE runs SET status = 'pending', owner = NULL, heartbeat = NULL, "
                        "error = 'reclaimed: previous owner died' WHERE hash = ? AND status = 'running'",
                        (r["hash"],),
                    )
                    reclaimed.append(r["hash"])
        return reclaimed

    @_mapped
    def requeue_failed(self, hashes: Sequence[str] | None = None) -> int:
        """``failed -> pending`` for ``hashes`` (all failed runs if None); returns how many."""
        con = self._con()
        if hashes is None:
            return con.execute("UPDATE runs SET status = 'pending', owner = NULL WHERE status = 'failed'").rowcount
        n = 0
        with self._tx() as c:
            for h in hashes:
                n += c.execute(
                    "UPDATE runs SET status = 'pending', owner = NULL WHERE hash = ? AND status = 'failed'", (h,)
                ).rowcount
        return n

    # ------------------------------------------------------------------ reads
    @_mapped
    def status_of(self, hashes: Sequence[str]) -> dict[str, str]:
        """``{hash: status}`` for the given hashes that exist."""
        out: dict[str, str] = {}
        con = self._con()
        hs = list(hashes)
        for i in range(0, len(hs), 500):
            chunk = hs[i : i + 500]
            q = f"SELECT hash, {_STATUS} AS status FROM runs WHERE hash IN ({','.join('?' * len(chunk))})"
            for r in con.execute(q, chunk):
                if r["status"] not in STATUSES:
                    raise self._unknown_status(con) or StoreError(f"{self.db_path}: unknown status {r['status']!r}")
                out[r["hash"]] = r["status"]
        return out

    @_mapped
    def counts(self, hashes: Sequence[str] | None = None) -> dict[str, int]:
        """Number of runs per status (all runs, or only ``hashes``)."""
        out = dict.fromkeys(STATUSES, 0)
        if hashes is None:
            con = self._con()
            for r in con.execute(f"SELECT {_STATUS} AS status, COUNT(*) AS n FROM runs GROUP BY 1"):
                if r["status"] not in STATUSES:
                    raise self._unknown_status(con) or StoreError(f"{self.db_path}: unknown status {r['status']!r}")
                out[r["status"]] = r["n"]
        else:
            for s in self.status_of(hashes).values():
                out[s] += 1
        return out

    @_mapped
    def get(self, hash_: str) -> dict[str, Any] | None:
        """One run as a dict (config and final decoded), or None."""
        r = self._con().execute("SELECT * FROM runs WHERE hash = ?", (hash_,)).fetchone()
        return None if r is None else _decode(r, self.db_path)

    @_mapped
    def rows(self, *, status: str | None = None, sweep: str | None = None) -> list[dict[str, Any]]:
        """All runs (optionally one status and/or one sweep), in insertion order, decoded."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {STATUSES}")
        q = "SELECT runs.* FROM runs"
        args: list[Any] = []
        conds = []
        if sweep is not None:
            q += " JOIN sweep_runs ON sweep_runs.hash = runs.hash"
            conds.append("sweep_runs.sweep = ?")
            args.append(sweep)
        if status is not None:
            conds.append(f"{_STATUS} = ?")
            args.append(status)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY runs.rowid"
        return [_decode(r, self.db_path) for r in self._con().execute(q, args)]

    @_mapped
    def sweeps(self) -> list[str]:
        """Names of the sweeps registered in this store."""
        return [r[0] for r in self._con().execute("SELECT DISTINCT sweep FROM sweep_runs ORDER BY sweep")]

    @_mapped
    def total_rows(self) -> int:
        return int(self._con().execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    # ------------------------------------------------------------------ export
    @_mapped
    def table(self, *, status: str | None = "completed", sweep: str | None = None) -> list[dict[str, Any]]:
        """Flat records: run columns, ``config.<dotted>`` and ``final.<metric>`` columns."""
        out = []
        for r in self.rows(status=status, sweep=sweep):
            rec = {k: r[k] for k in ("hash", "name", "status", "outcome", "attempts", "started", "finished", "duration")}
            rec["error"] = (r["error"] or "").strip().splitlines()[-1] if r["error"] else None
            rec.update(flatten(r["config"], "config."))
            rec.update(flatten(r["final"] or {}, "final."))
            out.append(rec)
        return out

    @_mapped
    def export_csv(self, path: str | Path, *, status: str | None = "completed", sweep: str | None = None) -> int:
        """Write :meth:`table` as CSV (union of columns, blanks where missing); returns rows."""
        recs = self.table(status=status, sweep=sweep)
        cols = _columns(recs)
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="raise")
        w.writeheader()
        for rec in recs:
            w.writerow({c: rec.get(c) for c in cols})
        atomic_write_text(path, buf.getvalue())  # never a half-written export
        return len(recs)

    @_mapped
    def export_parquet(self, path: str | Path, *, status: str | None = "completed", sweep: str | None = None) -> int:
        """Write :meth:`table` as Parquet (needs ``pyarrow``: ``pip install 'nclab[parquet]'``)."""
        try:
            import pyarrow as pa  # noqa: PLC0415
            import pyarrow.parquet as pq  # noqa: PLC0415
        except ImportError as exc:
            raise RuntimeError(
                "Parquet export needs pyarrow, which is not installed; "
                "install it with `pip install 'nclab[parquet]'` or export CSV instead"
            ) from exc
        recs = self.table(status=status, sweep=sweep)
        cols = _columns(recs)
        # mixed-type columns (e.g. a metric None in some runs) are left to pyarrow's inference
        data = {c: [rec.get(c) for rec in recs] for c in cols}
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(data), sink)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        return len(recs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows())


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def _decode(r: sqlite3.Row, db_path: Path | str = "the results store") -> dict[str, Any]:
    d = dict(r)
    if d.get("status") == "completed" and d.get("outcome") == "diverged":
        d["status"] = "diverged"  # see the module docstring
    if d.get("status") not in STATUSES:  # a CHECK bypassed by another program: say so, never skip it
        raise StoreError(f"run {d.get('hash')} ({d.get('name')}) in {db_path} has status {d.get('status')!r}, "
                         f"not one of {', '.join(STATUSES)}; fix or delete its row")
    for key, empty in (("config", {}), ("final", None)):
        try:
            d[key] = json.loads(d[key]) if d[key] else empty
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"run {d.get('hash')} ({d.get('name')}) in the results store has a corrupt {key!r} column "
                f"(not JSON: {exc}); re-run it or delete its row"
            ) from None
    return d


def _size(path: Path) -> int | None:
    """Size of ``path`` in bytes, None when it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def _connect_ro(path: Path, *, immutable: bool = False) -> sqlite3.Connection:
    uri = Path(path).resolve().as_uri() + "?mode=ro" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)


def _is_readonly_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("readonly", "read-only", "unable to open", "disk i/o error"))


def _columns(recs: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    seen: set[str] = set()
    for rec in recs:
        for c in rec:
            if c not in seen:
                seen.add(c)
                cols.append(c)
    return cols
