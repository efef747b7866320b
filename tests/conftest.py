import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: the cores are shared out between the N workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # and the processes a test starts (scripts, notebook kernels)


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 24, 24, dtype=torch.float64)
