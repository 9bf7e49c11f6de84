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
