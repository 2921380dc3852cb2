"""Task heads as explicit module surgery, and the choice of which parameters train."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from model.gpt import CausalLM

Trainable = Literal["head", "last_block", "last_two_blocks", "all", "lora"]
Pooling = Literal["last", "last_non_pad", "mean"]


def attach_classifier_head(model: CausalLM, num_classes: int) -> CausalLM:
    """Replace the vocabulary head by a fresh `num_classes`-way linear head (the book's ch. 6)."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    model.out_head = nn.Linear(model.cfg.emb_dim, num_classes)
    nn.init.normal_(model.out_head.weight, mean=0.0, std=0.02)
    nn.init.zeros_(model.out_head.bias)
    return model


def set_trainable(model: CausalLM, trainable: Trainable) -> None:
    """Freeze everything, then unfreeze the part that `trainable` names.

    `lora` unfreezes only the head here: peft adds (and unfreezes) the adapters afterwards.
    """
    model.requires_grad_(False)
    model.out_head.requires_grad_(True)
    if trainable in ("last_block", "last_two_blocks"):
        # The book's default: the last block plus the final norm that reads from it.
        for block in model.trf_blocks[-(2 if trainable == "last_two_blocks" else 1):]:
            block.requires_grad_(True)
        model.final_norm.requires_grad_(True)
    elif trainable == "all":
        model.requires_grad_(True)
    elif trainable not in ("head", "lora"):
        raise ValueError(
            f"unknown trainable mode {trainable!r}; use head, last_block, last_two_blocks, all or lora"
        )


def last_real_token(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Pick each sequence's logits at its last non-padding position.

    With right padding and causal attention that position has read the whole message and
    none of the padding, so the prediction does not depend on how much padding there is.
    """
    # logits: (B, T, K), lengths: (B,) -> (B, K)
    idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, logits.size(-1))
    return logits.gather(1, idx).squeeze(1)


def pool(logits: torch.Tensor, lengths: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """One (B, K) score per sequence from per-position scores (B, T, K) of right-padded input.

    `last`: the final position, padding included (the book: it pads every message with
    end-of-text tokens and reads the last one); `last_non_pad`: the last real token, so padding
    never matters; `mean`: the average over real tokens (a linear head makes this the head of
    the mean hidden state).
    """
    if pooling == "last":
        return logits[:, -1, :]
    if pooling == "last_non_pad":
        return last_real_token(logits, lengths)
    if pooling == "mean":
        positions = torch.arange(logits.size(1), device=logits.device)
        real = (positions.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
        return (logits * real).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(logits.dtype)
    raise ValueError(f"unknown pooling {pooling!r}; use last, last_non_pad or mean")
