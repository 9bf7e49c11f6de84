import os

import numpy as np
import pytest
import torch

# Tests are CPU-bound on 2 cores; more threads only add contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def has_cuda() -> bool:
    return torch.cuda.is_available()
