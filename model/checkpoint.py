"""Save and load a model folder: `model.safetensors` + `config.json` (+ `training_state.pt`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.atomic import atomic_path, write_json
from model.config import GPTConfig
from model.gpt import GPTModel
from model.heads import attach_classifier_head

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_STATE = "training_state.pt"


def save_model(folder: str | Path, model: GPTModel, head: dict[str, Any] | None = None) -> None:
    """Write weights and the config needed to rebuild the model; `head` describes a task head.

    `head` is `{"kind": "lm"}` (the default) or `{"kind": "classifier", "labels": [...]}`.
    """
    folder = Path(folder)
    head = head or {"kind": "lm"}
    save_weights(folder / WEIGHTS, model)
    write_json(folder / CONFIG, {"gpt": model.cfg.to_dict(), "head": head})


def tied_aliases(module: torch.nn.Module) -> dict[str, str]:
    """Second names of shared parameters -> their first name (tied embeddings:
    `out_head.weight` -> `tok_emb.weight`)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in first:
            aliases[name] = first[id(param)]
        else:
            first[id(param)] = name
    return aliases


def save_weights(path: str | Path, module: torch.nn.Module) -> None:
    """Any module's state dict as one safetensors file (written atomically)."""
    save_state_dict(path, module.state_dict())


def save_state_dict(path: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """A state dict (e.g. one gathered from several processes) as one safetensors file.

    A tied matrix is stored once, under its first name: safetensors refuses tensors that share
    memory, and one copy is all that loading needs (see `fill_weights`).
    """
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, tensor in state_dict.items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen and tensor.numel():
            continue  # the second name of a tied matrix
        seen.add(key)
        state[name] = tensor.detach().contiguous().cpu()
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})


def with_tied_aliases(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` plus the tied names `save_state_dict` left out, pointing at their first name."""
    state = dict(state)
    for alias, name in tied_aliases(module).items():
        if alias not in state and name in state:
            state[alias] = state[name]
    return state


def fill_weights(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a state dict `save_weights` wrote: tied names it left out point at their first name;
    every other key must match exactly."""
    module.load_state_dict(with_tied_aliases(module, state), strict=True)


def read_config(folder: str | Path) -> tuple[GPTConfig, dict[str, Any]]:
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {folder} a model folder written by gptpipe?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return GPTConfig.from_dict(data["gpt"]), data.get("head", {"kind": "lm"})
    except (KeyError, TypeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: invalid model config ({err})") from err


def build_model(cfg: GPTConfig, head: dict[str, Any]) -> GPTModel:
    """The empty network a checkpoint with this config and head fits into."""
    model = GPTModel(cfg)
    if head.get("kind") == "classifier":
        attach_classifier_head(model, len(head["labels"]))
    elif head.get("kind") != "lm":
        raise ValueError(f"unknown head kind {head.get('kind')!r} (expected 'lm' or 'classifier')")
    return model


def load_model(folder: str | Path, map_location: str = "cpu") -> tuple[GPTModel, dict[str, Any]]:
    """Rebuild the model a folder holds; returns it (in eval mode) with its head description."""
    cfg, head = read_config(folder)
    model = build_model(cfg, head)
    fill_weights(model, load_file(str(Path(folder) / WEIGHTS), device=map_location))
    model.eval()
    return model, head


def save_training_state(folder: str | Path, state: dict[str, Any]) -> None:
    """Optimizer, schedule and step, kept beside the weights so training can resume."""
    with atomic_path(Path(folder) / TRAINING_STATE) as tmp:
        torch.save(state, tmp)


def load_training_state(folder: str | Path) -> dict[str, Any]:
    # weights_only=True: a checkpoint from elsewhere cannot run code when it is loaded.
    return torch.load(Path(folder) / TRAINING_STATE, map_location="cpu", weights_only=True)
