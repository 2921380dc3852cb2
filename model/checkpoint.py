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


def save_weights(path: str | Path, module: torch.nn.Module) -> None:
    """Any module's state dict as one safetensors file (written atomically)."""
    save_state_dict(path, module.state_dict())


def save_state_dict(path: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """A state dict (e.g. one gathered from several processes) as one safetensors file."""
    state = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})


def load_weights(path: str | Path, module: torch.nn.Module) -> None:
    """Fill `module` from a safetensors file `save_weights` wrote; every key must match."""
    module.load_state_dict(load_file(str(path), device="cpu"), strict=True)


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
    state = load_file(str(Path(folder) / WEIGHTS), device=map_location)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, head


def save_training_state(folder: str | Path, state: dict[str, Any]) -> None:
    """Optimizer, schedule and step, kept beside the weights so training can resume."""
    with atomic_path(Path(folder) / TRAINING_STATE) as tmp:
        torch.save(state, tmp)


def load_training_state(folder: str | Path) -> dict[str, Any]:
    # weights_only=True: a checkpoint from elsewhere cannot run code when it is loaded.
    return torch.load(Path(folder) / TRAINING_STATE, map_location="cpu", weights_only=True)
