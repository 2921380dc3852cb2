"""Task heads as explicit module surgery, and the choice of which parameters train."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from model.gpt import GPTModel

Trainable = Literal["head", "last_block", "all", "lora"]


def attach_classifier_head(model: GPTModel, num_classes: int) -> GPTModel:
    """Replace the vocabulary head by a fresh `num_classes`-way linear head (the book's ch. 6)."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    model.out_head = nn.Linear(model.cfg.emb_dim, num_classes)
    nn.init.normal_(model.out_head.weight, mean=0.0, std=0.02)
    nn.init.zeros_(model.out_head.bias)
    return model


def set_trainable(model: GPTModel, trainable: Trainable) -> None:
    """Freeze everything, then unfreeze the part that `trainable` names.

    `lora` unfreezes only the head here: peft adds (and unfreezes) the adapters afterwards.
    """
    model.requires_grad_(False)
    model.out_head.requires_grad_(True)
    if trainable == "last_block":
        # The book's default: the last block plus the final norm that reads from it.
        model.trf_blocks[-1].requires_grad_(True)
        model.final_norm.requires_grad_(True)
    elif trainable == "all":
        model.requires_grad_(True)
    elif trainable not in ("head", "lora"):
        raise ValueError(f"unknown trainable mode {trainable!r}; use head, last_block, all or lora")


def last_real_token(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Pick each sequence's logits at its last non-padding position.

    With right padding and causal attention that position has read the whole message and
    none of the padding, so the prediction does not depend on how much padding there is.
    """
    # logits: (B, T, K), lengths: (B,) -> (B, K)
    idx = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, logits.size(-1))
    return logits.gather(1, idx).squeeze(1)
