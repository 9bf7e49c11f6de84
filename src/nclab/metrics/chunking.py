"""Chunk sizes for the streaming passes, chosen from the cache and the data.

Each chunk is converted to float64 once and then read by a few operations (index_add in
pass 1; the one-hot subtraction ``r −= onehot @ μ``, the row norms and the one GEMM in
pass 2), so it should stay in the per-core cache while that happens. The per-row
bookkeeping on b×C arrays (~60 small torch calls) runs once per *group* of
``GROUP_CHUNKS`` chunks instead, so small chunks cost little overhead. ``auto_chunk_rows``
takes the float64 working set of a chunk (``rows · d · 8`` bytes, about two such arrays
live at once) to the size of the per-core L2 cache times ``CACHE_FACTOR``, rounded down to
a power of two and clamped to ``[MIN_ROWS, MAX_ROWS]`` (the floor keeps per-call overhead
bounded for very wide features).
Measured (1 thread, 1.25 MiB L2 per core, n = 200k, d = 512, C = 10, full suite, best of 9
interleaved on a shared 2-core machine): chunk:group rows 128:8192 0.667 s, 128:16384 0.531 s,
256:8192 0.542 s, 256:16384 0.516 s (the auto choice), 512:16384 0.550 s. Before the
one-hot subtraction (a gathered b×d copy of the means per chunk) 64 rows took 2.33 s,
128–256 rows 1.87 s and 4096–8192 rows 20–40 % more than 256 on a more loaded machine.
The b×C bookkeeping costs per element as much as per call (row reductions over C ≈ 10 are
slow in torch), so groups beyond 16k rows gain little and only grow the b×C tables.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

MIN_ROWS = 256
MAX_ROWS = 8192
CACHE_FACTOR = 2.0  # two float64 chunk-sized arrays live at once; 128–256 rows tie at d = 512
DEFAULT_L2 = 1 << 20
GROUP_CHUNKS = 64
MAX_GROUP_ROWS = 16384


def _parse_size(text: str) -> int | None:
    text = text.strip().upper()
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if text.endswith(suffix):
            text, mult = text[:-1], m
            break
    try:
        return int(float(text) * mult)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1)
def l2_cache_bytes() -> int:
    """Per-core L2 cache size from sysfs (Linux); ``DEFAULT_L2`` (1 MiB) when unknown.
    ``NCLAB_L2_BYTES`` overrides it (for tests and odd machines)."""
    env = os.environ.get("NCLAB_L2_BYTES")
    if env:
        v = _parse_size(env)
        if v and v > 0:
            return v
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for idx in sorted(base.glob("index*")):
            if (idx / "level").read_text().strip() == "2" and (idx / "type").read_text().strip() in ("Unified", "Data"):
                size = _parse_size((idx / "size").read_text())
                if size:
                    return size
    except OSError:
        pass
    return DEFAULT_L2


def group_rows(chunk_rows: int) -> int:
    """Rows per *group*: the per-row bookkeeping on b×C arrays (argmin, softmax, bincount, …)
    runs once per group, the b×d work once per chunk inside it; ``GROUP_CHUNKS`` chunks per
    group, at most ``MAX_GROUP_ROWS`` rows (b×C tables of ~1 MiB each, b×32 GEMM output 4 MiB)."""
    return max(chunk_rows, min(MAX_GROUP_ROWS, GROUP_CHUNKS * chunk_rows))


def auto_chunk_rows(dim: int, *, cache_bytes: int | None = None) -> int:
    """Rows per chunk for features of dimension ``dim`` (see the module docstring)."""
    cache = l2_cache_bytes() if cache_bytes is None else cache_bytes
    rows = int(cache * CACHE_FACTOR) // max(1, 2 * 8 * dim)
    rows = max(MIN_ROWS, min(MAX_ROWS, rows))
    return 1 << (rows.bit_length() - 1)
