"""Shared test fixtures: the repository root and the read-only ../shared data, when present."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def shared_book() -> Path:
    folder = SHARED / "data" / "book"
    if not folder.is_dir():
        pytest.skip("../shared/data/book is not present beside the checkout")
    return folder
