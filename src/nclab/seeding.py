"""Named random streams derived from one run seed.

Every random draw in nclab takes an explicit generator. A run seed is split into
independent streams by name (``"noise"``, ``"init"``, ``"batches"``, ...), so that
changing how one part draws never shifts the numbers another part sees. Library
code never touches global RNG state.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed from ``(seed, stream)``; stable across Python versions and platforms."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an integer; got {type(seed).__name__}")
    digest = hashlib.sha256(f"{int(seed)}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def numpy_generator(seed: int, stream: str) -> np.random.Generator:
    """A ``numpy.random.Generator`` (PCG64) for the named stream of ``seed``."""
    return np.random.default_rng(derive_seed(seed, stream))


def torch_generator(seed: int, stream: str, *, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded for the named stream of ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, stream))
    return g
