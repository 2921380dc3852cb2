"""Tests for next-token batches, the LM loss and the baselines (steps/tasks/language_modeling.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.gpt import GPTModel
from steps.tasks.language_modeling import (
    epoch_batches,
    epoch_windows,
    fixed_windows,
    lm_loss,
    mean_loss,
    perplexity,
    random_windows,
    unigram_cross_entropy,
)
from tests.params import gpt_config

CPU = torch.device("cpu")


def tokens(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.uint16)


def test_random_windows_targets_are_inputs_shifted() -> None:
    data = tokens(200)
    x, y = next(random_windows(data, batch_size=5, context=8, seed=0))
    assert x.shape == y.shape == (5, 8)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(y, x + 1)  # on arange data, consecutive tokens
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(5, 7, dtype=torch.int64))


def test_random_windows_rows_split_the_batch_across_ranks() -> None:
    data = np.arange(500, dtype=np.uint16)
    whole = list(itertools.islice(random_windows(data, 6, 8, seed=2, start=4), 3))
    shards = [list(itertools.islice(random_windows(data, 6, 8, seed=2, start=4, rows=slice(r * 2, r * 2 + 2)), 3))
              for r in range(3)]
    for i, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([shard[i][0] for shard in shards]), x)  # the ranks' rows, in rank order
        assert torch.equal(torch.cat([shard[i][1] for shard in shards]), y)
        assert shards[0][i][0].shape == (2, 8)


def test_random_windows_deterministic_for_a_seed() -> None:
    data = np.random.default_rng(0).integers(0, 50, size=500).astype(np.uint16)
    a = list(itertools.islice(random_windows(data, 4, 16, seed=3), 3))
    b = list(itertools.islice(random_windows(data, 4, 16, seed=3), 3))
    c = list(itertools.islice(random_windows(data, 4, 16, seed=4), 3))
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    # Successive batches differ.
    assert not torch.equal(a[0][0], a[1][0])


def test_random_windows_restart_at_any_step() -> None:
    # The data position of a checkpoint is its step: the stream from `start` must be the tail of
    # the stream from 0, batch for batch.
    data = np.random.default_rng(0).integers(0, 50, size=500).astype(np.uint16)
    whole = list(itertools.islice(random_windows(data, 4, 16, seed=3), 8))
    tail = list(itertools.islice(random_windows(data, 4, 16, seed=3, start=5), 3))
    for (xa, ya), (xb, yb) in zip(whole[5:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_random_windows_stay_inside_the_data() -> None:
    data = tokens(20)
    for x, y in itertools.islice(random_windows(data, 8, 6, seed=1), 50):
        assert int(x.min()) >= 0
        assert int(y.max()) <= 19
        assert x.shape == (8, 6)


def test_random_windows_reach_the_last_token() -> None:
    data = tokens(10)  # context 4 -> valid windows start at 0..5 (tokens s..s+4)
    starts = set()
    for x, _ in itertools.islice(random_windows(data, 16, 4, seed=0), 50):
        starts.update(x[:, 0].tolist())
    assert starts == {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize("n", [0, 5, 8])
def test_random_windows_too_short_raises(n: int) -> None:
    with pytest.raises(ValueError, match=rf"only {n} training tokens for a context of 8.*context_length"):
        next(random_windows(tokens(n), 2, 8, seed=0))


def test_epoch_windows_visit_every_window_once_per_epoch_in_a_new_order() -> None:
    data = tokens(8 * 10 + 5)  # 10 whole windows of 8 (+1 target token), a tail too short for an 11th
    assert epoch_batches(data, 3, 8) == 3  # the last partial batch (one window) is dropped
    batches = list(itertools.islice(epoch_windows(data, 3, 8, seed=1), 9))
    for x, y in batches:
        assert x.shape == y.shape == (3, 8) and torch.equal(y, x + 1)
        assert set((x[:, 0] % 8).tolist()) == {0}  # windows start every 8 tokens (stride = length)
    epochs = [torch.cat([x[:, 0] for x, _ in batches[e * 3:(e + 1) * 3]]).tolist() for e in range(3)]
    for starts in epochs:
        assert len(set(starts)) == 9 and set(starts) <= set(range(0, 80, 8))  # 9 distinct of the 10 windows
    assert epochs[0] != epochs[1] != epochs[2]  # reshuffled every epoch


def test_epoch_windows_restart_at_any_step_and_split_rows_across_ranks() -> None:
    data = np.random.default_rng(0).integers(0, 50, size=400).astype(np.uint16)
    whole = list(itertools.islice(epoch_windows(data, 4, 16, seed=3), 14))  # 6 batches per epoch: crosses two epochs
    tail = list(itertools.islice(epoch_windows(data, 4, 16, seed=3, start=5), 9))
    for (xa, ya), (xb, yb) in zip(whole[5:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    shards = [list(itertools.islice(epoch_windows(data, 4, 16, seed=3, rows=slice(r * 2, r * 2 + 2)), 14))
              for r in range(2)]
    for i, (x, _) in enumerate(whole):
        assert torch.equal(torch.cat([shard[i][0] for shard in shards]), x)


def test_epoch_windows_too_short_for_one_batch_raises() -> None:
    with pytest.raises(ValueError, match="only 20 training tokens: 2 window.*fewer than one batch of 3.*seq_len"):
        next(epoch_windows(tokens(20), 3, 8, seed=0))


def test_fixed_windows_layout() -> None:
    data = tokens(101)
    batches = fixed_windows(data, batch_size=3, context=10, max_batches=2)
    assert len(batches) == 2
    starts = [int(s) for x, _ in batches for s in x[:, 0]]
    assert starts == [0, 18, 36, 54, 72, 90]  # evenly spaced, the last one ends on the last token
    last_x, last_y = batches[-1]
    assert int(last_y[-1, -1]) == 100
    for x, y in batches:
        assert torch.equal(y, x + 1)


def test_fixed_windows_same_every_call() -> None:
    data = np.random.default_rng(1).integers(0, 64, size=300).astype(np.uint16)
    a = fixed_windows(data, 4, 16, max_batches=3)
    b = fixed_windows(data, 4, 16, max_batches=3)
    assert len(a) == len(b) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("n, batch, context, max_batches", [
    (11, 2, 10, 5), (12, 2, 10, 5), (57, 3, 7, 10), (100, 4, 9, 1), (1000, 5, 16, 4), (33, 1, 8, 100),
])
def test_fixed_windows_never_read_past_the_end(n: int, batch: int, context: int, max_batches: int) -> None:
    batches = fixed_windows(tokens(n), batch, context, max_batches)
    assert len(batches) <= max_batches
    starts = []
    for x, y in batches:
        assert x.shape[1] == context and y.shape[1] == context
        assert 1 <= x.shape[0] <= batch
        assert int(y.max()) <= n - 1
        starts += x[:, 0].tolist()
    assert len(starts) == min((n - 1) // context, batch * max_batches)
    assert all(b - a >= context for a, b in zip(starts, starts[1:]))  # non-overlapping


@pytest.mark.parametrize("n", [0, 1])
def test_fixed_windows_too_short_raises(n: int) -> None:
    with pytest.raises(ValueError, match=rf"validation split has {n} tokens"):
        fixed_windows(tokens(n), 2, 10, max_batches=3)


@pytest.mark.parametrize("n", [2, 5, 10])
def test_a_split_shorter_than_the_context_is_one_shorter_window(n: int) -> None:
    """The book's the-verdict.txt keeps ~500 validation tokens for a 1,024-token model."""
    (x, y), = fixed_windows(tokens(n), 2, 10, max_batches=3)
    assert x.shape == y.shape == (1, n - 1)
    assert x[0].tolist() == list(range(n - 1)) and y[0].tolist() == list(range(1, n))


def test_unigram_cross_entropy_hand_example() -> None:
    train = np.array([0, 0, 1], dtype=np.uint16)
    val = np.array([0, 2], dtype=np.uint16)
    # Add-one counts: [3, 2, 1] / 6.
    expected = -(math.log(3 / 6) + math.log(1 / 6)) / 2
    assert unigram_cross_entropy(train, val, vocab_size=3) == pytest.approx(expected)


def test_unigram_cross_entropy_uniform_is_log_v() -> None:
    train = np.tile(np.arange(50, dtype=np.uint16), 7)
    val = np.array([0, 13, 49, 49, 2], dtype=np.uint16)
    assert unigram_cross_entropy(train, val, vocab_size=50) == pytest.approx(math.log(50))
    # Unseen ids above the training range still count in the vocabulary.
    assert unigram_cross_entropy(np.array([], dtype=np.uint16), val, vocab_size=64) == pytest.approx(math.log(64))


def test_perplexity() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(10)) == pytest.approx(10.0)
    assert perplexity(1e6) == pytest.approx(math.exp(50.0))
    assert math.isfinite(perplexity(float("inf")))


def test_lm_loss_and_token_weighted_mean_loss() -> None:
    torch.manual_seed(0)
    model = GPTModel(gpt_config(vocab_size=32, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0))
    model.eval()
    gen = torch.Generator().manual_seed(1)
    b1 = (torch.randint(0, 32, (3, 8), generator=gen), torch.randint(0, 32, (3, 8), generator=gen))
    b2 = (torch.randint(0, 32, (1, 8), generator=gen), torch.randint(0, 32, (1, 8), generator=gen))
    loss, n = lm_loss(model, b1)
    assert n == 24 and loss.dim() == 0
    with torch.no_grad():
        all_logits = torch.cat([model(b1[0]), model(b2[0])]).flatten(0, 1)
        all_targets = torch.cat([b1[1], b2[1]]).flatten()
        expected = F.cross_entropy(all_logits, all_targets).item()
        unweighted = (lm_loss(model, b1)[0].item() + lm_loss(model, b2)[0].item()) / 2
    assert mean_loss(model, [b1, b2], CPU) == pytest.approx(expected, rel=1e-5)
    assert abs(unweighted - expected) > 1e-6  # the weighting matters for this example
