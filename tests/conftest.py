import os

import numpy as np
import pytest
import torch

# One torch thread per test process: make test runs two processes on 2 cores (-n 2), and no
# result may depend on the thread count (a run's own `threads` option sets it for that run).
torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def has_cuda() -> bool:
    return torch.cuda.is_available()


def _run_as_nobody(fn) -> int:
    """Run ``fn`` in a forked child that cannot write what root owns (setuid nobody when root);
    its return value is the child's exit code, which this returns."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            code = fn()
        except BaseException:  # noqa: BLE001  (the parent sees the exit code)
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.fixture
def as_nobody():
    """``as_nobody(fn) -> exit code``: ``fn`` run as a user without write access to root's files."""
    return _run_as_nobody
