"""Thread discipline: a run's torch thread count is part of its configuration.

Floating-point reductions split across a different number of threads add in a different
order, so the same run gives different numbers under different thread counts (and two
threads on a busy 2-core machine can be many times slower than one). Every run therefore
sets its intra-op thread count explicitly (``threads``, default 1) for its duration and
records it, with the torch and BLAS builds, in ``env.json``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["thread_scope", "thread_record"]


@contextlib.contextmanager
def thread_scope(threads: int) -> Iterator[None]:
    """Run the body with ``threads`` torch intra-op threads and BLAS threads (threadpoolctl);
    the previous counts are restored."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    before = torch.get_num_threads()
    try:
        # numpy/scipy's BLAS too (the metrics' SVDs): its pool size changes summation order as well
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(limits=int(threads), user_api="blas")
    except Exception:  # noqa: BLE001 - threadpoolctl missing or no BLAS found: torch's setting still holds
        limits = None
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        if limits is not None:
            limits.restore_original_limits()
        torch.set_num_threads(before)


def thread_record() -> dict[str, Any]:
    """Threads in force and the builds that use them (for ``env.json``)."""
    rec: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
                           "torch_version": torch.__version__}
    try:
        info = torch.__config__.parallel_info().splitlines()
        rec["torch_parallel"] = [ln.strip() for ln in info if ln.strip() and ("backend" in ln or "OpenMP" in ln or "MKL" in ln)][:6]
    except Exception:  # noqa: BLE001 - informational only
        pass
    try:
        from threadpoolctl import threadpool_info

        rec["blas"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer")}
                       for d in threadpool_info()]
    except Exception:  # noqa: BLE001 - informational only
        pass
    return rec
