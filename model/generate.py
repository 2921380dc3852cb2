"""Autoregressive sampling: greedy, temperature and top-k, stopping at end-of-text."""

from __future__ import annotations

import torch
from torch import nn

from model.gpt import GPTModel, KVCache


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to `idx` (B, T); temperature 0 means greedy.

    Generation for a batch stops early once every row has produced `eos_id`; rows that finished
    earlier are padded with `eos_id`. With `use_cache` (for a GPTModel), the prompt is read once
    (prefill) and then one token per step; the tokens are the same as without it.
    """
    was_training = model.training
    model.eval()
    cache = KVCache(model.cfg.n_layers) if use_cache and isinstance(model, GPTModel) else None
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = _next_logits(model, idx, context_length, cache)  # (B, V)
        if top_k is not None and top_k > 0:
            top = torch.topk(logits, min(top_k, logits.size(-1))).values
            logits = logits.masked_fill(logits < top[:, -1:], float("-inf"))
        if temperature > 0.0:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
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
