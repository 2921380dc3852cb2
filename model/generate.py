"""Autoregressive sampling: greedy, temperature, top-k and top-p (nucleus), stopping at end-of-text."""

from __future__ import annotations

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

    Sampling divides the logits by `temperature`, keeps the `top_k` most likely tokens, then the
    fewest of those whose probabilities add up to `top_p` (None or 1.0: all), and draws from what
    is left, renormalised.

    Generation for a batch stops early once every row has produced `eos_id`; rows that finished
    earlier are padded with `eos_id`. With `use_cache` (for a GPTModel), the prompt is read once
    (prefill) and then one token per step; the tokens are the same as without it.
    """
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    was_training = model.training
    model.eval()
    cache = KVCache.for_model(model) if use_cache and isinstance(model, GPTModel) else None
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = _next_logits(model, idx, context_length, cache)  # (B, V)
        if temperature > 0.0:
            logits = logits / temperature
            if top_k is not None and top_k > 0:
                logits = top_k_filter(logits, top_k)
            if top_p is not None and top_p < 1.0:
                logits = top_p_filter(logits, top_p)
            next_id = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1, generator=generator)  # (B, 1)
        else:
            next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        if eos_id is not None:
            next_id = next_id.masked_fill(finished.unsqueeze(1), eos_id)
            finished |= next_id.squeeze(1) == eos_id
        idx = torch.cat([idx, next_id], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return idx


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
