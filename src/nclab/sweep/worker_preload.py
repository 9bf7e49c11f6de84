"""Imported once by the forkserver of a :class:`~nclab.sweep.executors.LocalExecutor` pool.

Every worker is then forked from that warm process instead of importing torch and nclab
itself (about 4 s of CPU each on a small machine), so a pool of N workers pays the import
once, and a pool rebuilt after a crashed worker or a second pool in the same driver pays it
not at all. The server is single-threaded and does no work, so forking it is safe.
"""

import os

# the server computes nothing: its OpenMP/BLAS pools stay at one thread; each worker sets its
# own count (``_worker_init``) and each run its config's ``threads``
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401  torch.optim imports it on an optimizer's first use (about 2 s)

import threadpoolctl  # noqa: E402,F401

import nclab.data  # noqa: E402,F401
import nclab.sweep.trainer  # noqa: E402,F401  the built-in run and stack functions
import nclab.train  # noqa: E402,F401
import nclab.train.stacked  # noqa: E402,F401
