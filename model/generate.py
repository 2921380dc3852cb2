"""Autoregressive sampling: greedy, temperature and top-k, stopping at end-of-text."""

from __future__ import annotations

import torch
from torch import nn


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
) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to `idx` (B, T); temperature 0 means greedy.

    Generation for a batch stops early once every row has produced `eos_id`; rows that finished
    earlier are padded with `eos_id`.
    """
    was_training = model.training
    model.eval()
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context_length:])[:, -1, :]  # (B, V): only the last position
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
