"""Crash-safe file writes: temp file in the same folder, fsync, atomic rename.

The one durable-write discipline of nclab:

* whole files (configs, checkpoints, npz, status) go through ``atomic_write_bytes``:
  temp file in the same folder, every byte written (``write_all`` loops over short
  writes), fsync, ``os.replace``, fsync of the folder. A reader never sees a
  half-written file: either the old content or the new.
* records are appended by ``append_jsonl``: the line is written in a loop until every
  byte is out, then fsynced; if the disk fills (or any write fails) the file is cut
  back to its previous length and the ``OSError`` is raised, so the file always ends
  on a complete line. A torn last line left by other means is skipped by
  ``read_jsonl`` with a warning.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte of ``data`` is written (a write may be short, e.g. on a
    nearly full disk); a write that makes no progress raises ``OSError(ENOSPC)``."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, "no space left on device (a write made no progress)")
        view = view[n:]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (temp file, fsync, rename, fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        # mkstemp creates 0600; give the file the usual umask-based mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _jsonable(obj: Any) -> Any:
    """Numbers, arrays and tensors to plain JSON; non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(obj: Any, *, indent: int | None = None) -> str:
    return json.dumps(_jsonable(obj), indent=indent, sort_keys=indent is not None, allow_nan=False)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as one complete line, durably, or leave the file as it was.

    The line is written in a loop until every byte is out (``write_all``), then fsynced.
    On any failure (disk full, I/O error) the file is truncated back to its previous
    length before the ``OSError`` propagates, so a torn line never merges with the next
    record. One writer per file is assumed (the run-directory lock guarantees it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (to_json(record) + "\n").encode("utf-8")
    # O_NOFOLLOW: never append through a symbolic link planted in a run directory (ELOOP instead)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            write_all(fd, line)
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)  # shrinking needs no new blocks: works on a full disk
                os.fsync(fd)
            except OSError:
                pass
            raise OSError(exc.errno, f"could not append to {path}: {exc.strerror or exc} "
                                     "(the file was left as it was)") from exc
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict]:
    """All complete records; a torn (unterminated or unparsable) final line is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes().decode("utf-8", errors="replace")
    out: list[dict] = []
    lines = raw.split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i >= len(lines) - 2:
                warnings.warn(f"{path}: skipped a torn last line (interrupted write)", stacklevel=2)
            else:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON (corrupt file)") from None
            continue
        if not isinstance(record, dict):  # valid JSON but not a record: a corrupt or foreign file
            raise ValueError(f"{path}: line {i + 1} is not a JSON object but {type(record).__name__} (corrupt file)")
        out.append(record)
    return out


def truncate_jsonl(path: str | Path, keep: Iterable[dict]) -> None:
    """Rewrite a JSONL file atomically with exactly ``keep`` (used on resume)."""
    atomic_write_text(path, "".join(to_json(r) + "\n" for r in keep))


FEATURE_FILE_ARRAYS = {
    "features": "n×d penultimate features (required)",
    "labels": "n integer labels (required)",
    "clean_labels": "n clean labels (optional; enables memorization/dilation)",
    "W": "C×d classifier weight (optional)",
    "b": "C classifier bias (optional)",
    "logits": "n×C logits (optional)",
}


def npy_header(f: Any) -> tuple[tuple[int, ...], bool, Any]:
    """``(shape, fortran_order, dtype)`` from an open ``.npy`` stream (format 1.0 or 2.0),
    leaving the stream at the start of the data; nothing is allocated."""
    import numpy as np

    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def check_npz(path: str | Path) -> None:
    """Refuse an ``.npz`` whose array headers claim more data than the archive holds.

    ``np.load`` trusts each ``.npy`` header and allocates ``prod(shape) * itemsize``
    bytes first, so a crafted header (say 10^18 elements) would exhaust memory; here each
    member's header is read and its size checked against the member's real length.
    Raises ``ValueError`` naming the file and the array.
    """
    import math
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as f:
                    shape, _, dtype = npy_header(f)
                    header_len = f.tell()
                if dtype.hasobject:
                    raise ValueError(f"{path}: array {info.filename!r} holds Python objects (pickles are refused)")
                need = math.prod(int(n) for n in shape) * dtype.itemsize
                have = info.file_size - header_len
                if need > have:
                    raise ValueError(
                        f"{path}: array {info.filename!r} claims shape {tuple(shape)} ({need} bytes) but the file "
                        f"holds only {have} bytes for it (corrupt or crafted header)"
                    )
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npz file (corrupt or wrong format): {exc}") from None
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path} is not a readable .npz file: {exc}") from None


def load_feature_file(path: str | Path) -> dict:
    """Read an ``.npz`` of features for ``nclab metrics``; clear errors for every failure.

    Returns a dict with the arrays present (keys of ``FEATURE_FILE_ARRAYS``).
    Unknown arrays are an error (a typo such as ``weights`` would otherwise be ignored).
    """
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a readable .npz file (not a zip archive: corrupt or wrong format)")
    check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, MemoryError) as exc:
        raise ValueError(f"{path} is not a readable .npz file (corrupt or wrong format): {exc}") from exc
    missing = [k for k in ("features", "labels") if k not in data]
    if missing:
        raise ValueError(f"{path} is missing required array(s) {missing}; it holds {sorted(data)}")
    unknown = sorted(set(data) - set(FEATURE_FILE_ARRAYS))
    if unknown:
        raise ValueError(
            f"{path} holds unknown array(s) {unknown}; expected some of {list(FEATURE_FILE_ARRAYS)}"
        )
    for key in ("labels", "clean_labels"):
        a = data.get(key)
        if a is not None and a.dtype.kind in "iuf" and a.size and float(a.min()) < 0:
            raise ValueError(
                f"{path}: {key!r} holds negative values (min {a.min()}); labels must be class ids 0..C-1"
            )
    return data
