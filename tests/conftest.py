import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/toy_models.py, tests/reference.py


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(2, 3, 24, 24, dtype=torch.float64)
