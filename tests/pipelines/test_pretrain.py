"""Tests for the pretrain stage's checkpoint wiring (pipelines/pretrain.py): which run a checkpoint belongs to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.pretrain import checkpoint_settings
from pipelines.stage import StageContext
from steps import layout
from tests.params import shipped_params


@pytest.fixture
def tokens_here(tmp_path: Path, monkeypatch) -> Path:
    """Token files at the layout's (relative) paths, in a scratch working directory."""
    monkeypatch.chdir(tmp_path)
    layout.TOKENS.mkdir(parents=True)
    np.arange(100, dtype=np.uint16).tofile(layout.TRAIN_BIN)
    np.arange(20, dtype=np.uint16).tofile(layout.VAL_BIN)
    return tmp_path


def settings(pretrain: dict | None = None, seed: int = 123):
    params = shipped_params({"seed": seed, "pretrain": pretrain or {}})
    ctx = StageContext("pretrain", params, run=None)  # type: ignore[arg-type]  # no MLflow run needed
    return checkpoint_settings(ctx, ctx.params.model.gpt_config(vocab_size=512))


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


def test_fingerprint_ignores_peak_flops_but_not_the_batch(tokens_here: Path) -> None:
    base = settings().fingerprint
    assert settings({"peak_flops": 1.0e14}).fingerprint == base  # a reporting figure only
    assert settings({"global_batch_tokens": 4096}).fingerprint != base  # other updates


def test_training_settings_from_the_params() -> None:
    import torch

    from pipelines.pretrain import training_settings
    from steps.training.throughput import flops_per_token

    params = shipped_params({"model": {"context_length": 64, "tie_embeddings": True, "vocab_multiple": 64},
                             "finetune_instruct": {"allowed_max_length": 64},
                             "finetune_preference": {"allowed_max_length": 64},
                           "pretrain": {"batch_size": 4, "seq_len": 32, "global_batch_tokens": 512,
                                        "compile": True, "activation_checkpointing": True}})
    ctx = StageContext("pretrain", params, run=None)  # type: ignore[arg-type]
    model_cfg = ctx.params.model.gpt_config(vocab_size=500)
    assert (model_cfg.tie_embeddings, model_cfg.padded_vocab_size) == (True, 512)
    s = training_settings(ctx, model_cfg, torch.device("cpu"))
    assert s.accum_steps == 4  # 512 tokens per step / (4 x 32) per micro-batch
    assert s.compile and s.activation_checkpointing
    assert s.flops_per_token == flops_per_token(model_cfg, 32)
    assert s.peak_flops is None  # no MFU on a CPU unless peak_flops is given
    given = shipped_params({"pretrain": {"peak_flops": 2.0e12}})
    ctx = StageContext("pretrain", given, run=None)  # type: ignore[arg-type]
    assert training_settings(ctx, ctx.params.model.gpt_config(500), torch.device("cpu")).peak_flops == 2.0e12


def test_pretrain_steps_count_epochs_of_whole_batches() -> None:
    from pipelines.pretrain import pretrain_steps

    train_tokens = np.zeros(18 * 256 + 40, dtype=np.uint16)  # 18 whole 256-token windows, like the-verdict's split
    by_steps = shipped_params({"pretrain": {"max_steps": 7}}).pretrain
    assert pretrain_steps(by_steps, train_tokens, 256) == 7
    book = shipped_params({"pretrain": {"max_steps": None, "epochs": 10, "batch_size": 2}}).pretrain
    assert pretrain_steps(book, train_tokens, 256) == 90  # the book's 10 epochs of 9 batches of 2
    accumulated = shipped_params({"pretrain": {"max_steps": None, "epochs": 2, "batch_size": 4,
                                               "global_batch_tokens": 2 * 4 * 256}}).pretrain
    assert pretrain_steps(accumulated, train_tokens, 256) == 4  # 4 batches of 4 per epoch, 2 per step
    too_big = shipped_params({"pretrain": {"max_steps": None, "epochs": 1, "batch_size": 2,
                                           "global_batch_tokens": 20 * 2 * 256}}).pretrain
    with pytest.raises(ValueError, match="fewer than the 20 of one optimizer step"):
        pretrain_steps(too_big, train_tokens, 256)
