"""Shared test fixtures."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny test models gain nothing from intra-op threads, and on a busy 2-core machine the
    hand-off between threads costs milliseconds per matmul (the slow end-to-end test runs its
    stages in subprocesses, which keep torch's default)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
