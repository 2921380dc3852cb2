"""The `book` profile's chapter-5 run, shortened to what CI affords: GPT_CONFIG_124M trained from
scratch on the-verdict.txt with the profile's settings must land within a stated band of the
losses the book prints at the same step (the full 90-step run: `python bench/book_ch05.py`).

The book's listing (chapter 5, "Ep 2 (Step 000010): Train loss 6.661, Val loss 7.048") counts
steps from 0 after the first update, so its step 10 follows 11 updates. Its train loss is measured
like its val loss: in eval mode on the first 5 training batches, as done here.
Everything but Prefect and MLflow is the stage's own code: the profile applied to params.yaml, the
tokenize stage's split and encoder, the pretrain stage's initial model, settings, step count and
batch stream, and the one training loop.
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.pretrain import pretrain_steps, training_settings
from pipelines.stage import StageContext
from steps.config import load_params
from steps.profiles import apply_profile
from steps.tasks.language_modeling import (
    epoch_windows,
    fixed_windows,
    lm_loss,
    mean_loss,
)
from steps.tokenization.corpus import split_corpus
from steps.tokenization.gpt2_bpe import gpt2_encoding
from steps.tokenization.tokenizer import TiktokenEncoder, encode_to_file, read_tokens
from steps.training.hardware import autocast_dtype
from steps.training.pretrained import initial_model
from steps.training.train import train

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
BOOK_STEP_10 = {"train_loss": 6.661, "val_loss": 7.048}
"""The book's printed losses after 11 updates (its "Step 000010")."""
BAND = 0.5
"""Allowed distance in nats from the book's figures, either way: our stage with the book's settings
measured 6.99 / 7.29 after 10 updates here (docs/training.md), and the book's two printings of this
run end 0.37 apart in train loss, so runs on other hardware and seeds differ by a few tenths."""


@pytest.fixture(scope="module")
def book_tokens(tmp_path_factory) -> tuple[np.ndarray, np.ndarray]:
    if not (SHARED / "book" / "the-verdict.txt").is_file() or not (SHARED / "gpt2" / "vocab.bpe").is_file():
        pytest.skip(f"{SHARED} is absent (the book's data lives beside the checkout)")
    folder = tmp_path_factory.mktemp("tokens")
    params = book_params(folder)
    train_part, val_part = split_corpus(SHARED / "book" / "the-verdict.txt", params.tokenize.val_fraction)
    encoder = TiktokenEncoder(gpt2_encoding(SHARED / "gpt2" / "encoder.json", SHARED / "gpt2" / "vocab.bpe"))
    parts = []
    for name, part in (("train", train_part), ("val", val_part)):
        encode_to_file(encoder, part.pieces(), folder / f"{name}.bin")
        parts.append(read_tokens(folder / f"{name}.bin", encoder.vocab_size))
    return parts[0], parts[1]


def book_params(folder: Path):
    params_path = folder / "params.yaml"
    if not params_path.exists():
        shutil.copy(ROOT / "params.yaml", params_path)
        apply_profile("book", params_path, ROOT / "profiles")
    return load_params(params_path)


@pytest.fixture
def all_cores():
    """124M parameters are worth every core (the suite runs tiny models on one thread)."""
    threads = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(cores or 1)
    yield
    torch.set_num_threads(threads)


def test_the_book_profile_trains_as_the_book_prints(book_tokens, tmp_path, all_cores) -> None:
    train_tokens, val_tokens = book_tokens
    params = book_params(tmp_path)
    cfg = params.pretrain
    assert (cfg.epochs, cfg.init, cfg.decay, cfg.betas) == (10, "pytorch", "all", [0.9, 0.999])
    seq_len = params.pretrain_seq_len
    assert pretrain_steps(cfg, train_tokens, seq_len) == 90  # the book's 10 epochs of 9 batches

    torch.manual_seed(params.seed)
    model_cfg = params.model.gpt_config(50257)
    model, _ = initial_model(cfg, model_cfg)
    ctx = StageContext("pretrain", params, run=None)  # type: ignore[arg-type]  # no tracking here
    device = torch.device("cpu")
    settings = training_settings(ctx, model_cfg, device, max_steps=11)
    batches = functools.partial(epoch_windows, train_tokens, cfg.batch_size, seq_len, params.seed)
    val = fixed_windows(val_tokens, cfg.batch_size, seq_len, cfg.eval_batches)
    train(model, batches, lm_loss, settings, device, autocast_dtype(device, cfg.precision), desc="book ch5")

    first_five = list(itertools.islice(epoch_windows(train_tokens, cfg.batch_size, seq_len, 0), 5))
    model.eval()
    got = {"train_loss": mean_loss(model, first_five, device), "val_loss": mean_loss(model, val, device)}
    for name, book in BOOK_STEP_10.items():
        assert abs(got[name] - book) <= BAND, f"{name} {got[name]:.3f} is not within {BAND} of the book's {book}"
