"""Next-token prediction on token memmaps: batches, the loss, validation loss, a unigram baseline."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from steps.training.train import Batch


def random_windows(
    tokens: np.ndarray, batch_size: int, context: int, seed: int, start: int = 0, *, rows: slice = slice(None)
) -> Iterator[Batch]:
    """Endless batches of random (input, target) windows, from batch number `start` on; the target
    is the input shifted by one.

    Batch i draws its window starts from a generator seeded with (seed, i), so the stream is a pure
    function of the step: a run resumed after s steps reads, from `start=s`, exactly the batches an
    uninterrupted run reads. Starts stay uniform and independent across batches.

    `rows` keeps only those rows of each batch of `batch_size` (a distributed rank's shard,
    `Distributed.shard`): every rank draws the same starts, then reads only its own windows, so
    the ranks' rows together are the single-process batch.
    """
    if len(tokens) < context + 1:
        raise ValueError(
            f"only {len(tokens)} training tokens for a context of {context}: "
            "use a larger corpus or a smaller model.context_length"
        )
    for index in itertools.count(start):
        rng = np.random.default_rng([seed, index])
        # A window reads context + 1 tokens, so the last valid start is len - context - 1.
        starts = rng.integers(0, len(tokens) - context, size=batch_size)
        yield _windows(tokens, starts[rows], context)


def epoch_batches(tokens: np.ndarray, batch_size: int, context: int) -> int:
    """Batches per epoch of `epoch_windows`: the split's whole windows, the last partial batch dropped."""
    windows = (len(tokens) - 1) // context
    if windows < batch_size:
        raise ValueError(f"only {len(tokens)} training tokens: {windows} window(s) of {context} tokens, fewer than "
                         f"one batch of {batch_size}; use a larger corpus, a smaller seq_len or batch_size")
    return windows // batch_size


def epoch_windows(
    tokens: np.ndarray, batch_size: int, context: int, seed: int, start: int = 0, *, rows: slice = slice(None)
) -> Iterator[Batch]:
    """Endless epochs over the split cut into fixed windows (the book's chapter-5 data loader).

    Windows start every `context` tokens (stride = length: each token is read once per epoch);
    each epoch visits them in a new order and drops the last partial batch, as a shuffling
    DataLoader with drop_last does. Epoch e's order comes from a generator seeded with (seed, e),
    so batch n is a pure function of n and a resumed run from `start` reads what an uninterrupted
    run reads. `rows`: a distributed rank's share of each batch, as in `random_windows`.
    """
    per_epoch = epoch_batches(tokens, batch_size, context)
    n_windows = (len(tokens) - 1) // context
    epoch_of_order, order = -1, np.empty(0, dtype=np.int64)
    for index in itertools.count(start):
        epoch, position = divmod(index, per_epoch)
        if epoch != epoch_of_order:  # one shuffle per epoch, not per batch
            epoch_of_order, order = epoch, np.random.default_rng([seed, epoch]).permutation(n_windows)
        starts = order[position * batch_size:(position + 1) * batch_size] * context
        yield _windows(tokens, starts[rows], context)


def fixed_windows(tokens: np.ndarray, batch_size: int, context: int, max_batches: int) -> list[Batch]:
    """Evenly spaced, non-overlapping windows: the same validation set at every evaluation.

    A split shorter than one context (the book's the-verdict.txt keeps ~500 validation tokens)
    is read as one shorter window rather than refused.
    """
    if 2 <= len(tokens) <= context:
        context = len(tokens) - 1
    n_windows = min((len(tokens) - 1) // context, batch_size * max_batches)
    if n_windows < 1:
        raise ValueError(f"validation split has {len(tokens)} tokens, fewer than one context of {context}")
    stride = (len(tokens) - 1 - context) // max(1, n_windows - 1) if n_windows > 1 else 0
    starts = np.arange(n_windows) * stride
    return [_windows(tokens, starts[i : i + batch_size], context) for i in range(0, n_windows, batch_size)]


def _windows(tokens: np.ndarray, starts: np.ndarray, context: int) -> Batch:
    block = np.stack([tokens[s : s + context + 1].astype(np.int64) for s in starts])  # (B, T+1)
    block_t = torch.from_numpy(block)
    return block_t[:, :-1], block_t[:, 1:]  # (B, T) inputs, (B, T) targets


def lm_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    inputs, targets = batch
    logits = model(inputs)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    return loss, targets.numel()


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[Batch], device: torch.device) -> float:
    """Token-weighted mean cross-entropy over fixed batches."""
    total = 0.0
    count = 0
    for inputs, targets in batches:
        loss, n = lm_loss(model, (inputs.to(device), targets.to(device)))
        total += loss.item() * n
        count += n
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))  # capped: a diverged run would overflow


def unigram_cross_entropy(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Loss of the best model that ignores context: token frequencies of the training split.

    Add-one smoothing keeps unseen tokens finite. A language model that has learned anything
    about context must beat this number.
    """
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[np.asarray(val, dtype=np.int64)].mean())
