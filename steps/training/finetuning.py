"""Shared pieces of the finetuning stages: turning adapters on, checking splits, saving the result."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sized
from pathlib import Path
from typing import Any

from torch import nn

from model.checkpoint import save_model
from model.gpt import CausalLM
from steps import layout
from steps.config import LoraConfig


def with_lora(model: CausalLM, cfg: LoraConfig, modules_to_save: list[str]) -> nn.Module:
    from model.lora import apply_lora  # peft (and transformers) only for a LoRA finetune

    return apply_lora(model, cfg.rank, cfg.alpha, cfg.target_modules, cfg.dropout, modules_to_save)


class TooFewExamples(ValueError):
    """A split a finetuning stage reads is empty; the message says which and what to change."""


def require_examples(splits: Mapping[str, Sized], where: str, fix: str) -> None:
    """Every split holds at least one record; else an error naming the empty split, every split's
    size and `fix` (an empty split would end in a division by zero, or a flattering 0.0)."""
    empty = [name for name, records in splits.items() if len(records) == 0]
    if empty:
        sizes = ", ".join(f"{name} {len(records)}" for name, records in splits.items())
        total = sum(len(records) for records in splits.values())
        raise TooFewExamples(f"{where}: the {empty[0]} split is empty ({total} records split as {sizes}); finetuning "
                         f"needs at least one record in every split: {fix}")


def save_finetuned(
    folder: Path, model: nn.Module, head: dict[str, Any], tokenizer: Path, adapter: bool
) -> CausalLM:
    """Save the adapter on its own (when there is one), then the merged full model + tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu")
    from model.lora import merge_lora, save_adapter

    if adapter:
        save_adapter(model, str(folder / layout.ADAPTER))  # peft's own format

    merged = merge_lora(model)
    assert isinstance(merged, CausalLM)
    save_model(folder, merged, head)
    shutil.copy(tokenizer, folder / layout.MODEL_TOKENIZER)
    return merged
