"""Atomic, checksummed, weights-only checkpoints.

``save_checkpoint`` serialises a dict of tensors / plain containers with
``torch.save`` into memory, writes it with ``atomic_write_bytes`` and then a
sidecar ``<name>.json`` holding its sha256, epoch and config hash.
``load_checkpoint`` verifies the checksum and loads with ``weights_only=True``
(no pickled code runs), so RNG states are stored as tensors.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from nclab.store.files import atomic_write_bytes, atomic_write_json

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or belongs to a different run."""


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_checkpoint(path: str | Path, state: dict[str, Any], *, config_hash: str) -> str:
    """Write ``state`` (must contain ``"epoch"``) atomically; returns the file's sha256."""
    buf = io.BytesIO()
    torch.save({**state, "format_version": FORMAT_VERSION, "config_hash": config_hash}, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(path, data)
    atomic_write_json(
        sidecar_path(path),
        {"sha256": digest, "epoch": int(state["epoch"]), "config_hash": config_hash, "bytes": len(data)},
    )
    return digest


def load_checkpoint(path: str | Path, *, config_hash: str | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises ``CheckpointError`` when the file or its sidecar is missing, the
    sha256 differs from the sidecar's (a torn or edited file), the file cannot be
    read as a weights-only torch archive, or ``config_hash`` is given and differs
    from the one stored (a checkpoint of another configuration).
    """
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    try:
        meta = json.loads(side.read_text())
        expected = meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its checksum file {side} is missing or unreadable ({exc})") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: sha256 {actual[:12]}... does not match {expected[:12]}... "
            f"recorded in {side.name}; delete the run directory's checkpoints (or use --overwrite) to start over"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling/zip failure means an unusable file
        raise CheckpointError(f"checkpoint {path} cannot be read as a weights-only torch file: {exc}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown format (expected nclab format {FORMAT_VERSION})")
    if config_hash is not None and state.get("config_hash") != config_hash:
        raise CheckpointError(
            f"checkpoint {path} belongs to a different configuration "
            f"(config hash {str(state.get('config_hash'))[:12]}... vs {config_hash[:12]}...)"
        )
    return state
