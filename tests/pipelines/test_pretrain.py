"""Tests for the pretrain stage's checkpoint wiring (pipelines/pretrain.py): which run a checkpoint belongs to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.pretrain import checkpoint_settings, gpt_config
from pipelines.stage import StageContext
from steps import layout
from steps.config import parse_params


@pytest.fixture
def tokens_here(tmp_path: Path, monkeypatch) -> Path:
    """Token files at the layout's (relative) paths, in a scratch working directory."""
    monkeypatch.chdir(tmp_path)
    layout.TOKENS.mkdir(parents=True)
    np.arange(100, dtype=np.uint16).tofile(layout.TRAIN_BIN)
    np.arange(20, dtype=np.uint16).tofile(layout.VAL_BIN)
    return tmp_path


def settings(pretrain: dict | None = None, seed: int = 123):
    params = parse_params({"seed": seed, "pretrain": pretrain or {}})
    ctx = StageContext("pretrain", params, run=None)  # type: ignore[arg-type]  # no MLflow run needed
    return checkpoint_settings(ctx, gpt_config(ctx, vocab_size=512))


def test_checkpoints_follow_the_params(tokens_here: Path) -> None:
    s = settings({"checkpoint_interval": 25, "keep_checkpoints": 3, "resume": False})
    assert (s.folder, s.interval, s.keep, s.resume) == (layout.PRETRAIN_CHECKPOINTS, 25, 3, False)
    assert settings({"checkpoint_interval": 0}) is None


def test_fingerprint_names_the_run_not_the_checkpoint_knobs(tokens_here: Path) -> None:
    base = settings().fingerprint
    assert settings({"checkpoint_interval": 7, "keep_checkpoints": 5}).fingerprint == base
    assert settings({"lr": 1.0e-4}).fingerprint != base
    assert settings(seed=1).fingerprint != base
    np.arange(101, dtype=np.uint16).tofile(layout.TRAIN_BIN)  # other training data
    assert settings().fingerprint != base
