"""LoRA adapters through peft: wrap the GPT, count what trains, merge back for export."""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    target_modules: Sequence[str],
    dropout: float = 0.0,
    modules_to_save: Sequence[str] = (),
) -> PeftModel:
    """Freeze `model` and add rank-`rank` adapters to the named Linear layers.

    `modules_to_save` lists modules trained in full next to the adapters (a new task head).
    peft initialises B to zero, so the wrapped model starts out computing exactly what `model` did.
    """
    check_targets(model, target_modules)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=list(modules_to_save) or None,
        bias="none",
    )
    return get_peft_model(model, config)


def linear_names(model: nn.Module) -> list[str]:
    """The last part of the name of every Linear layer of `model`, once each, in model order:
    what `target_modules` may name (GPT: W_query, W_key, W_value, out_proj, ...; Llama adds
    gate_proj, up_proj, down_proj)."""
    names = [name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return list(dict.fromkeys(names))


def check_targets(model: nn.Module, target_modules: Sequence[str]) -> None:
    """Every target must name a Linear layer of `model`: a name the other architecture uses (or a
    typo) would otherwise get no adapter, or peft's error without the names there are."""
    known = linear_names(model)
    missing = [t for t in target_modules if t.rsplit(".", 1)[-1] not in known]
    if missing:
        arch = getattr(getattr(model, "cfg", None), "arch", type(model).__name__)
        raise ValueError(f"lora.target_modules {missing} name no Linear layer of this {arch} model; its Linear "
                         f"layers are {known}: set target_modules in params.yaml to some of them")


def save_adapter(model: PeftModel, folder: str) -> None:
    """The adapter alone, in peft's format (`adapter_config.json` + `adapter_model.safetensors`).

    peft keeps `target_modules` as a set and writes it in the set's iteration order, which changes
    from process to process with Python's string hashing: as a sorted list (which peft reads back
    as the same set) the same adapter writes the same bytes every run.
    """
    for config in model.peft_config.values():
        if isinstance(config.target_modules, set):
            config.target_modules = sorted(config.target_modules)
    model.save_pretrained(folder)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights and return the plain model."""
    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
