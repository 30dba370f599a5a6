"""Shared test set-up: the official-format fixture writers in tests/data are importable, and
torch's thread count is restored after every test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "data"))
sys.path.insert(0, str(Path(__file__).parent / "results"))
sys.path.insert(0, str(Path(__file__).parent / "learners"))


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A run with ``engine.num_threads`` sets torch's thread count for the whole process; give
    the next test the count it would have had alone (training results depend on it through the
    order of floating-point reductions)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
