"""Autoregressive sampling: greedy, temperature, top-k and top-p (nucleus), stopping at end-of-text."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from model.gpt import GPTModel, KVCache


@torch.inference_mode()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to `idx` (B, T); temperature 0 means greedy.

    The tokens are those `iter_tokens` yields (see there for sampling, end-of-text and the cache),
    appended as columns: (B, T + steps).
    """
    steps = iter_tokens(model, idx, max_new_tokens, context_length, temperature=temperature, top_k=top_k,
                        top_p=top_p, eos_id=eos_id, generator=generator, use_cache=use_cache)
    new = [next_id.unsqueeze(1) for next_id in steps]  # each (B, 1)
    return torch.cat([idx, *new], dim=1)


def iter_tokens(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row of `idx` (B, T), one (B,) tensor per step, as it is made:
    what a caller streams to a terminal or a client. Temperature 0 means greedy.

    Sampling divides the logits by `temperature`, keeps the `top_k` most likely tokens, then the
    fewest of those whose probabilities add up to `top_p` (None or 1.0: all), and draws from what
    is left, renormalised.

    Generation for a batch stops early once every row has produced `eos_id`; rows that finished
    earlier yield `eos_id` from then on. With `use_cache` (for a GPTModel), the prompt is read once
    (prefill) and then one token per step; the tokens are the same as without it. The model is in
    eval mode while the iterator runs and gets its training flag back when it ends or is closed.
    """
    check_sampling(top_p)  # here, not at the first step: a bad value fails where it is passed
    return _token_steps(model, idx, max_new_tokens, context_length, temperature, top_k, top_p, eos_id,
                        generator, use_cache)


def _token_steps(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | None,
    generator: torch.Generator | None,
    use_cache: bool,
) -> Iterator[torch.Tensor]:
    """The sampling loop behind iter_tokens."""
    was_training = model.training
    model.eval()
    cache = KVCache.for_model(model) if use_cache and isinstance(model, GPTModel) else None
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    try:
        for _ in range(max_new_tokens):
            # inference_mode per step, not around the generator: a decorator on a generator
            # function would only cover its creation, not the steps a caller pulls.
            with torch.inference_mode():
                logits = _next_logits(model, idx, context_length, cache)  # (B, V)
                next_id = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
                if eos_id is not None:
                    next_id = next_id.masked_fill(finished, eos_id)
                    finished |= next_id == eos_id
                idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
            yield next_id
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)


def check_sampling(top_p: float | None) -> None:
    """Refuse a top_p outside (0, 1] before any work is done."""
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token id per row of (B, V) `logits`, (B,): argmax at temperature 0, else a draw from
    the tempered, top-k then top-p filtered distribution."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) logits with all but the k largest of each row set to -inf."""
    kth = torch.topk(logits, min(k, logits.size(-1))).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(B, V) logits keeping, per row, the smallest set of most likely tokens whose probabilities
    add up to at least `p` (always at least the most likely one); the rest set to -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked before it already reach p; the first never is.
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def _next_logits(model: nn.Module, idx: torch.Tensor, context_length: int, cache: KVCache | None) -> torch.Tensor:
    """Logits for the token after `idx`, reading at most the last `context_length` tokens."""
    if cache is None:
        return model(idx[:, -context_length:])[:, -1, :]
    if cache.length == 0 or cache.length >= context_length:
        # Prefill, or the window is full and slides: positions shift, so the cache is rebuilt from
        # the last context_length tokens (exactly what the uncached path reads).
        cache.reset()
        return model(idx[:, -context_length:], kv_cache=cache)[:, -1, :]
    return model(idx[:, -1:], kv_cache=cache)[:, -1, :]  # only the newest token
