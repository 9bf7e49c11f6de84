"""The run directory: its layout, the rules for reusing one, and one reader (:class:`RunDir`).

::

    run_dir/
      config.yaml              resolved config, every default written out
      env.json                 versions, seed, device, git commit, hostname, data info
      metrics.jsonl            one flat record per evaluation
      noise.npz                noisy/clean labels, transition, train/val indices
      features.npz             final training features, labels, classifier (nclab metrics' format)
      status.json              completed | stopped | diverged | interrupted, with the last epoch
      checkpoints/last.pt      record line (sha256, epoch, config hash) + weights, one atomic file
      dynamics/epoch_XXXX.npy  logit margins per epoch (nclab.store.dynamics)
      .nclab.lock              advisory lock of the process writing the run (pid, host, start)

The trainer writes it (through the functions here, :mod:`nclab.store.checkpoint` and
:mod:`nclab.store.dynamics`); detection, collection and reports read it through :class:`RunDir`.

Only one process writes a run directory at a time: :class:`RunLock` holds an OS
advisory lock (``flock``) on ``.nclab.lock`` for the run's life. The kernel drops the
lock when its process dies (kill -9 included), so a lock file left by a dead process
is simply taken over; a second live process gets :class:`RunLockError` naming the
holder's pid.
"""

from __future__ import annotations

import errno
import functools
import fcntl
import io
import json
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nclab.config import ConfigError, read_yaml_file
from nclab.store.files import atomic_write_bytes, atomic_write_json, atomic_write_text, check_npz, to_json, write_all

CONFIG = "config.yaml"
ENV = "env.json"
METRICS = "metrics.jsonl"
NOISE = "noise.npz"
FEATURES = "features.npz"
STATUS = "status.json"
CHECKPOINT = Path("checkpoints") / "last.pt"

LOCK = ".nclab.lock"

# A folder holding any of these is an nclab run: ``overwrite`` may empty it.
_MARKERS = (CONFIG, ENV, METRICS, NOISE, FEATURES, STATUS, "checkpoints", "dynamics")


class RunDir:
    """Read access to one run directory: the paths of its files and readers that parse them."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    config_path = property(lambda self: self.path / CONFIG)
    env_path = property(lambda self: self.path / ENV)
    metrics_path = property(lambda self: self.path / METRICS)
    noise_path = property(lambda self: self.path / NOISE)
    features_path = property(lambda self: self.path / FEATURES)
    status_path = property(lambda self: self.path / STATUS)
    checkpoint_path = property(lambda self: self.path / CHECKPOINT)

    def is_run(self) -> bool:
        """Whether this is an nclab run directory (it has ``config.yaml``)."""
        return self.config_path.is_file()

    def require_run(self) -> "RunDir":
        if not self.is_run():
            raise FileNotFoundError(f"{self.path} is not an nclab run directory (no {CONFIG})")
        return self

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.exists()

    def has_features(self) -> bool:
        return self.features_path.is_file()

    def env(self) -> dict[str, Any]:
        """``env.json``, or ``{}`` when it is missing or unreadable."""
        try:
            env = json.loads(self.env_path.read_text())
        except (OSError, ValueError):
            return {}
        return env if isinstance(env, dict) else {}

    def data_info(self) -> dict[str, Any]:
        """``env.json``'s ``data`` section (sizes, class names, ``source``/``model`` of Python runs)."""
        info = self.env().get("data", {})
        return info if isinstance(info, dict) else {}

    def class_names(self) -> list[str] | None:
        return self.data_info().get("class_names") or None

    def history(self) -> list[dict[str, Any]]:
        """The epoch records of ``metrics.jsonl`` (``FileNotFoundError`` without the file)."""
        from nclab.store.files import read_jsonl

        if not self.metrics_path.is_file():
            raise FileNotFoundError(f"{self.path}: no {METRICS} here (not an nclab run directory?)")
        return [r for r in read_jsonl(self.metrics_path) if isinstance(r, dict) and "epoch" in r]

    def noise(self) -> dict[str, np.ndarray]:
        """``noise.npz``'s arrays, or ``{}`` when the run has none."""
        return load_npz(self.noise_path) if self.noise_path.exists() else {}

    def features(self) -> dict[str, np.ndarray]:
        """``features.npz`` checked as ``nclab metrics`` reads it (``FileNotFoundError`` without it)."""
        from nclab.store.files import load_feature_file

        return load_feature_file(self.features_path)

    def dynamics(self) -> Any:
        """The recorded logit margins (:func:`nclab.store.dynamics.load_dynamics`)."""
        from nclab.store.dynamics import load_dynamics

        return load_dynamics(self.path)


class RunDirError(ConfigError):
    """A run directory that cannot be used as asked (different config, existing run...)."""


class RunLockError(RunDirError):
    """The run directory is locked by another live process (``pid`` names it, when known)."""

    def __init__(self, message: str, *, pid: int | None = None, run_dir: Path | None = None):
        super().__init__(message)
        self.pid = pid
        self.run_dir = run_dir  # the locked directory (which member of a stack)


def ensure_run_dir(run_dir: str | Path) -> Path:
    """Create ``run_dir`` (and parents) or raise ``RunDirError`` saying why it cannot be used
    (a file in the way, no permission, read-only file system)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} is a file, not a directory; choose another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(f"cannot create run directory {run_dir}: a parent of it is a file") from None
    except OSError as exc:
        raise RunDirError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from None
    return run_dir


class RunLock:
    """Exclusive advisory lock on a run directory, held from :meth:`acquire` to :meth:`release`.

    Use as ``with RunLock(run_dir): ...``. The lock is ``flock(LOCK_EX | LOCK_NB)`` on
    ``run_dir/.nclab.lock``; the file records the holder (pid, host, start time, what) for
    the error message of a second process. The kernel releases the lock when the holder
    exits or is killed, so a stale file from a dead process never blocks anyone. Not
    re-entrant: a second ``RunLock`` on the same folder fails even in the same process.
    Local file systems only (``flock`` over NFS may not exclude other hosts).
    """

    def __init__(self, run_dir: str | Path, *, what: str = "train"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.what = what
        self._fd: int | None = None
        self.previous: dict | None = None  # the record of the last holder, when one was taken over

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            raise RuntimeError(f"RunLock on {self.run_dir} is already held by this object")
        ensure_run_dir(self.run_dir)
        try:
            # O_NOFOLLOW: a symlink planted as the lock file must not make us truncate its target
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunDirError(_link_message(self.path)) from None
            raise RunDirError(f"cannot write to run directory {self.run_dir}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunDirError(f"{self.path} is not a regular file; remove it (nclab keeps its lock there)")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RunDirError(f"cannot lock run directory {self.run_dir}: {exc.strerror or exc}") from None
            pid = holder.get("pid") if isinstance(holder.get("pid"), int) else None
            who = f"pid {pid}" if pid is not None else "a process whose pid is not recorded yet"
            if pid == os.getpid():
                who += " (this process)"
            extra = ", ".join(f"{k} {holder[k]}" for k in ("host", "what", "started") if holder.get(k))
            raise RunLockError(
                f"run directory {self.run_dir} is in use by {who}{' (' + extra + ')' if extra else ''}; "
                "wait for it to finish or stop it, or choose another run directory",
                pid=pid, run_dir=self.run_dir,
            ) from None
        try:
            self.previous = _read_holder(fd) or None
            info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            write_all(fd, (json.dumps(info) + "\n").encode())
        except OSError:
            pass  # the record is only for messages; the lock itself is held
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: deleting it would let two processes lock two inodes)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        info = json.loads(raw.decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _link_message(path: Path) -> str:
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return (f"{path} is a symbolic link (to {target}); nclab never writes or deletes through links inside a "
            "run directory: remove the link (or choose another run directory)")


def refuse_links(run_dir: Path) -> None:
    """Raise ``RunDirError`` when an entry nclab writes or deletes inside ``run_dir`` is a
    symbolic link: its files, ``checkpoints/`` and ``dynamics/`` and what they hold (a link
    there would make a write, a truncation or a resume's deletions act on the link's target).
    The run directory itself may be a link: that is where the user asked the run to live."""
    if not run_dir.is_dir():
        return
    for entry in run_dir.iterdir():
        if entry.is_symlink():
            raise RunDirError(_link_message(entry))
        if entry.name in ("checkpoints", "dynamics") and entry.is_dir():
            for sub in entry.iterdir():
                if sub.is_symlink():
                    raise RunDirError(_link_message(sub))


def clear_run_dir(run_dir: Path) -> None:
    """Delete everything in an nclab run directory except the lock file (``overwrite``).

    Refuses a folder that holds files but none of nclab's (a mistyped ``--run-dir``
    must not delete someone's data). The checkpoint goes first, so an interrupted
    clear never leaves a resumable-looking half run; ``config.yaml`` goes last.
    """
    entries = [p for p in run_dir.iterdir() if p.name != LOCK]
    if entries and not any((run_dir / m).exists() for m in _MARKERS):
        names = ", ".join(sorted(p.name for p in entries)[:5])
        raise RunDirError(
            f"refusing to overwrite {run_dir}: it holds files nclab did not write ({names}); "
            "choose an empty folder or an nclab run directory"
        )
    order = {"checkpoints": 0, CONFIG: 2}
    for p in sorted(entries, key=lambda q: order.get(q.name, 1)):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise RunDirError(f"cannot remove {p} to overwrite the run: {exc.strerror or exc}") from None


def prepare_run_dir(run_dir: Path, config: Any, *, resume: bool, overwrite: bool) -> bool:
    """Check ``run_dir`` against ``config``; returns True when there is a run to resume.

    - empty / new folder: fresh run;
    - holds ``config.yaml`` of a *different* config: refused unless ``overwrite``;
    - holds a run of the same config: ``resume`` continues it, otherwise refused
      unless ``overwrite`` (which deletes everything of the old run, ``dynamics/`` and
      derived files included, see :func:`clear_run_dir`, and starts over).

    Call it while holding :class:`RunLock` on ``run_dir``.
    """
    if resume and overwrite:
        raise RunDirError("choose either {resume} or {overwrite}, not both", options=("resume", "overwrite"))
    ensure_run_dir(run_dir)
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"run directory {run_dir} is not writable")
    refuse_links(run_dir)
    cfg_path = run_dir / CONFIG
    if overwrite:
        clear_run_dir(run_dir)
        return False
    if not cfg_path.exists():
        if resume:
            raise RunDirError(f"nothing to resume in {run_dir}: no {CONFIG} there")
        if (run_dir / METRICS).exists() or (run_dir / CHECKPOINT).exists():
            raise RunDirError("{run_dir} holds run files but no {config}; use {overwrite} to start over",
                          options=("overwrite",), run_dir=run_dir, config=CONFIG)
        return False
    try:
        old = read_yaml_file(cfg_path)  # bounded: a crafted run dir cannot hold an alias bomb
    except ConfigError as exc:
        raise RunDirError("{problem}; use {overwrite} to start over", options=("overwrite",), problem=exc) from None
    new = config.to_dict()
    if old != new:
        diff = _dict_diff(old if isinstance(old, dict) else {}, new)
        raise RunDirError(
            "{run_dir} already holds a run with a different config ({diff}); "
            "choose another run directory or pass {overwrite}", options=("overwrite",), run_dir=run_dir,
            diff="; ".join(diff[:5]))
    if not resume:
        raise RunDirError("{run_dir} already holds a run of this config; pass {resume} to continue it or {overwrite}",
                          options=("resume", "overwrite"), run_dir=run_dir)
    return True


def _dict_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _dict_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def history_snapshot(run_dir: Path) -> str:
    """The whole lines of ``metrics.jsonl``: the copy of the history a checkpoint carries, so
    that a resume can rebuild a deleted or torn file (:func:`check_history`)."""
    try:
        raw = (run_dir / METRICS).read_bytes()
    except FileNotFoundError:
        return ""
    return raw[: raw.rfind(b"\n") + 1].decode("utf-8", errors="replace")


def _records(text: str) -> list[dict]:
    """The records of whole, parsable lines (a torn or damaged line is left out)."""
    out = []
    for line in text.split("\n")[:-1]:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def check_history(run_dir: Path, *, epoch: int, saved: str | None, eval_every: int, epochs: int) -> None:
    """Before resuming from a checkpoint at ``epoch``: ``metrics.jsonl`` must hold every record
    up to it. If it does not (deleted, torn, damaged), it is rebuilt from ``saved`` (the
    checkpoint's copy, :func:`history_snapshot`) with a warning; a checkpoint without a copy
    (older nclab) needs the record of every evaluation epoch, else ``RunDirError`` names the
    file and the missing epochs and nothing is changed."""
    import warnings

    path = run_dir / METRICS
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    have = [r for r in _records(text) if _epoch(r) <= epoch]
    if saved is not None:
        want = [r for r in _records(saved) if _epoch(r) <= epoch]
        if have != want:
            atomic_write_text(path, "".join(to_json(r) + "\n" for r in want))
            warnings.warn(f"{path} held {len(have)} of the {len(want)} records up to the checkpoint (epoch {epoch}); "
                          "rebuilt from the checkpoint", stacklevel=3)
        return
    need = [e for e in range(1, epoch + 1) if e % eval_every == 0 or e == epochs]
    got = {_epoch(r) for r in have}
    missing = [e for e in need if e not in got]
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        raise RunDirError(
            "{path} holds {have} of the {need} records up to the checkpoint (epoch {epoch}; missing epoch {shown}) "
            "and the checkpoint carries no copy of them; resuming would lose them: restore the file, or start "
            "over with {overwrite}", options=("overwrite",), path=path, have=len(need) - len(missing),
            need=len(need), epoch=epoch, shown=shown)


def _epoch(record: dict) -> int:
    e = record.get("epoch", 0)
    return e if isinstance(e, int) and not isinstance(e, bool) else 0


def write_config(run_dir: Path, config: Any) -> None:
    atomic_write_text(run_dir / CONFIG, config.to_yaml())


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the code this process imported (asked once: a sweep worker opens many runs)."""
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(config: Any, device: torch.device) -> dict[str, Any]:
    """Versions, seed, device, git commit and host of this process."""
    import nclab

    env = {
        "nclab": getattr(nclab, "__version__", None),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "seed": config.seed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "git_commit": _git_commit(),
        "config_hash": config.config_hash(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def write_env(run_dir: Path, env: dict[str, Any]) -> None:
    atomic_write_json(run_dir / ENV, env)


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (no pickles; headers checked against the file's size first)."""
    check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        raise ValueError(f"{path} is not a readable .npz file: {exc}") from None
