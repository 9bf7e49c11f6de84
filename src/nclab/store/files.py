"""Crash-safe file writes: temp file in the same folder, fsync, atomic rename.

A reader never sees a half-written file: either the old content or the new.
``append_jsonl`` appends one complete line per record and fsyncs it; a torn last
line (a kill mid-write) is skipped by ``read_jsonl`` with a warning.
"""

from __future__ import annotations

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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
    """Append one record as a single line and fsync (O_APPEND makes each write whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (to_json(record) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
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
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:
                warnings.warn(f"{path}: skipped a torn last line (interrupted write)", stacklevel=2)
            else:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON (corrupt file)") from None
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
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable .npz file (corrupt or wrong format): {exc}") from exc
    missing = [k for k in ("features", "labels") if k not in data]
    if missing:
        raise ValueError(f"{path} is missing required array(s) {missing}; it holds {sorted(data)}")
    unknown = sorted(set(data) - set(FEATURE_FILE_ARRAYS))
    if unknown:
        raise ValueError(
            f"{path} holds unknown array(s) {unknown}; expected some of {list(FEATURE_FILE_ARRAYS)}"
        )
    return data
