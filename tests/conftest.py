import pytest
import torch


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 24, 24, dtype=torch.float64)
