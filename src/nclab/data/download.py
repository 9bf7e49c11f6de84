"""Checksummed downloads, written atomically.

The file is streamed into a temporary file next to its destination while MD5 and SHA-256
are computed; only when the expected digest matches is it renamed into place. On a mismatch
or any error the temporary file is removed, so a failed download never leaves a file behind
that a later run could mistake for good data. ``file://`` URLs work (used by the tests).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Sequence

from nclab.data.errors import ChecksumError

_CHUNK = 1 << 20
TIMEOUT_S = 60.0


def _urlopen(url: str):
    """Indirection so tests can substitute the network (monkeypatch this)."""
    req = urllib.request.Request(url, headers={"User-Agent": "nclab (python urllib)"})
    return urllib.request.urlopen(req, timeout=TIMEOUT_S)


def file_digests(path: str | Path) -> dict[str, str]:
    """``{"md5": ..., "sha256": ...}`` of a file, read in 1 MiB chunks."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            md5.update(block)
            sha.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def fetch(urls: Sequence[str] | str, dest: str | Path, *, md5: str | None = None, sha256: str | None = None) -> Path:
    """Download the first working URL of ``urls`` to ``dest`` and verify its checksum.

    At least one of ``md5``/``sha256`` is required (the published digests of the datasets
    nclab knows are MD5). Mirrors are tried in order on network errors; a checksum mismatch
    is final (raises :class:`ChecksumError`) because it means the source serves other bytes.
    """
    if md5 is None and sha256 is None:
        raise ValueError("fetch needs an expected md5 or sha256; refusing to download unverified data")
    if isinstance(urls, str):
        urls = [urls]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            h_md5, h_sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                try:
                    with _urlopen(url) as resp:
                        for block in iter(lambda: resp.read(_CHUNK), b""):
                            out.write(block)
                            h_md5.update(block)
                            h_sha.update(block)
                except OSError as e:  # URLError, HTTPError, timeouts are OSErrors
                    failures.append(f"{url}: {e}")
                    continue
                out.flush()
                os.fsync(out.fileno())
            got = {"md5": h_md5.hexdigest(), "sha256": h_sha.hexdigest()}
            for algo, want in (("md5", md5), ("sha256", sha256)):
                if want is not None and got[algo] != want.lower():
                    raise ChecksumError(
                        f"checksum mismatch for {dest.name} downloaded from {url}: expected {algo} {want}, "
                        f"got {got[algo]}. The file was discarded; the source may be corrupt or changed."
                    )
            os.replace(tmp, dest)
            return dest
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise OSError(f"could not download {dest.name}; tried:\n  " + "\n  ".join(failures))
