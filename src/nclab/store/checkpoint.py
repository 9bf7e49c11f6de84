"""Atomic, checksummed, weights-only checkpoints: the record and the weights in ONE file.

File format (``FORMAT_VERSION`` 2)::

    b"NCLABCKPT2\\n"                       magic line
    {"sha256": ..., "bytes": ..., "epoch": ..., "config_hash": ..., "format_version": 2}\\n
    <torch.save archive of the state>     exactly "bytes" bytes

``save_checkpoint`` builds the whole file in memory and writes it with
``atomic_write_bytes`` (temp file, fsync, rename, fsync of the folder), so the
checksum record and the checkpoint it describes are committed together: a kill at
any moment leaves either the previous complete checkpoint or the new one, never a
new checkpoint beside an old checksum. ``load_checkpoint`` verifies the sha256 of the
archive and loads it with ``weights_only=True`` (no pickled code runs), so RNG states
are stored as tensors.

Checkpoints of format 1 (a bare archive plus a ``<name>.json`` sidecar with its
sha256) are still read; a new save replaces them and removes the old sidecar.
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import os
from pathlib import Path
from typing import Any

import torch

from nclab.config import TemplatedError
from nclab.store.files import atomic_write_bytes

FORMAT_VERSION = 2
MAGIC = b"NCLABCKPT2\n"
_MAX_HEADER = 64 * 1024  # the JSON record line is a few hundred bytes

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_info", "sidecar_path",
           "FORMAT_VERSION"]


class CheckpointError(TemplatedError, RuntimeError):
    """A checkpoint that is missing, corrupt, or belongs to a different run (a message that
    names an option, e.g. ``{overwrite}``, see :class:`~nclab.config.TemplatedError`)."""


def sidecar_path(path: str | Path) -> Path:
    """Where format-1 checkpoints kept their checksum (``last.pt.json``); read for old runs only."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_checkpoint(path: str | Path, state: dict[str, Any], *, config_hash: str) -> str:
    """Write ``state`` (must contain ``"epoch"``, an int >= 0) atomically, record included;
    returns the sha256 of the torch archive."""
    epoch = state.get("epoch")
    try:
        epoch = operator.index(epoch) if not isinstance(epoch, bool) else -1
    except TypeError:
        epoch = -1
    if epoch < 0:
        raise ValueError(f"checkpoint state needs 'epoch' as an int >= 0; got {state.get('epoch')!r}")
    buf = io.BytesIO()
    torch.save({**state, "format_version": FORMAT_VERSION, "config_hash": config_hash}, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    header = {"sha256": digest, "bytes": len(data), "epoch": epoch, "config_hash": config_hash,
              "format_version": FORMAT_VERSION}
    atomic_write_bytes(path, MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + data)
    try:  # a format-1 sidecar beside a format-2 file would only mislead a reader
        os.unlink(sidecar_path(path))
    except FileNotFoundError:
        pass
    return digest


def _split(path: Path, raw: bytes) -> tuple[dict[str, Any], bytes]:
    """(record, archive bytes) of a file's content; format 1 reads the sidecar."""
    if raw.startswith(MAGIC):
        end = raw.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
        if end < 0:
            raise CheckpointError(f"checkpoint {path} is corrupt: its record line is missing or truncated")
        try:
            meta = json.loads(raw[len(MAGIC):end])
            if not isinstance(meta, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path} is corrupt: its record line is not JSON ({exc})") from None
        return meta, raw[end + 1:]
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path}: not an nclab checkpoint (no record line) and its format-1 checksum file "
            f"{side.name} is missing or unreadable ({exc})"
        ) from None
    return meta, raw


def _valid_epoch(path: Path, epoch: Any) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"checkpoint {path} records epoch {epoch!r}; an epoch must be an int >= 0")
    return epoch


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The record of a checkpoint (``epoch``, ``sha256``, ``bytes``, ``config_hash``) without
    loading or verifying the weights; raises ``CheckpointError`` when there is none."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + _MAX_HEADER)
    except OSError as exc:
        raise CheckpointError(f"checkpoint not found or unreadable: {path} ({exc.strerror or exc})") from None
    meta, _ = _split(path, head if head.startswith(MAGIC) else b"")
    meta["epoch"] = _valid_epoch(path, meta.get("epoch"))
    return meta


def load_checkpoint(path: str | Path, *, config_hash: str | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises ``CheckpointError`` when the file is missing, its record is missing or
    unreadable, the sha256 of the archive differs from the record's (a torn or edited
    file), the archive cannot be read as a weights-only torch file, the epoch is not an
    int >= 0, or ``config_hash`` is given and differs from the one stored (a checkpoint
    of another configuration).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc.strerror or exc}") from None
    meta, data = _split(path, raw)
    expected = meta.get("sha256")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(
            "checkpoint {path} is corrupt: sha256 {actual}... does not match {expected}... in its record; "
            "delete the run directory's checkpoints (or use {overwrite}) to start over", options=("overwrite",),
            path=path, actual=actual[:12], expected=str(expected)[:12])
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling/zip failure means an unusable file
        raise CheckpointError(f"checkpoint {path} cannot be read as a weights-only torch file: {exc}") from None
    if not isinstance(state, dict) or state.get("format_version") not in (1, FORMAT_VERSION):
        raise CheckpointError(f"checkpoint {path} has an unknown format (expected nclab format {FORMAT_VERSION})")
    state["epoch"] = _valid_epoch(path, state.get("epoch"))
    if config_hash is not None and state.get("config_hash") != config_hash:
        raise CheckpointError(
            f"checkpoint {path} belongs to a different configuration "
            f"(config hash {str(state.get('config_hash'))[:12]}... vs {config_hash[:12]}...)"
        )
    return state
