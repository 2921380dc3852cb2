"""Save and load a model folder: `model.safetensors` + `config.json` (+ `training_state.safetensors`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.atomic import atomic_path, write_json
from model.config import GPTConfig
from model.gpt import CausalLM, GPTModel
from model.heads import attach_classifier_head
from model.llama import LlamaModel

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAINING_STATE = "training_state.safetensors"
_STRUCTURE = "training_state"  # the metadata key holding the JSON


def save_model(folder: str | Path, model: CausalLM, head: dict[str, Any] | None = None) -> None:
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


def new_model(cfg: GPTConfig) -> CausalLM:
    """A freshly initialised network of the config's family (`arch`): the one place that picks
    the class, so every stage, head and export works with either."""
    if cfg.arch == "llama":
        return LlamaModel(cfg)
    return GPTModel(cfg)


def build_model(cfg: GPTConfig, head: dict[str, Any]) -> CausalLM:
    """The empty network a checkpoint with this config and head fits into."""
    model = new_model(cfg)
    if head.get("kind") == "classifier":
        attach_classifier_head(model, len(head["labels"]))
    elif head.get("kind") != "lm":
        raise ValueError(f"unknown head kind {head.get('kind')!r} (expected 'lm' or 'classifier')")
    return model


def load_model(folder: str | Path, map_location: str = "cpu") -> tuple[CausalLM, dict[str, Any]]:
    """Rebuild the model a folder holds; returns it (in eval mode) with its head description."""
    cfg, head = read_config(folder)
    model = build_model(cfg, head)
    fill_weights(model, load_file(str(Path(folder) / WEIGHTS), device=map_location))
    model.eval()
    return model, head


def save_training_state(folder: str | Path, state: dict[str, Any]) -> None:
    """Optimizer, schedule and step, kept beside the weights so training can resume.

    One safetensors file: the tensors (optimizer moments, RNG states) under their path in `state`
    (`optimizer/state/0/exp_avg`), everything else as JSON in the header's metadata. The bytes are
    a function of `state` alone (no file names, ids or dates), so a rerun that trains the same
    weights writes the same file, and loading runs no code.
    """
    tensors: dict[str, torch.Tensor] = {}
    structure = json.dumps(_encode(state, "", tensors), sort_keys=True, allow_nan=False, separators=(",", ":"))
    with atomic_path(Path(folder) / TRAINING_STATE) as tmp:
        # One metadata key: safetensors writes several in a random order.
        save_file(tensors, str(tmp), metadata={_STRUCTURE: structure})


def load_training_state(folder: str | Path) -> dict[str, Any]:
    """The state `save_training_state` wrote, tensors on the CPU."""
    path = Path(folder) / TRAINING_STATE
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    if _STRUCTURE not in metadata:
        raise ValueError(f"{path}: no {_STRUCTURE!r} metadata: not a training state written by gptpipe")
    try:
        return _decode(json.loads(metadata[_STRUCTURE]), tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid training state ({err!r})") from err


def read_training_step(folder: str | Path) -> int:
    """The step a model folder's training state was saved at, read from its header alone (the
    optimizer's tensors, the bulk of the file, are not loaded)."""
    path = Path(folder) / TRAINING_STATE
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
    try:
        return int(json.loads(metadata[_STRUCTURE])["step"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: no training step recorded ({err!r}): not a training state written by gptpipe") from err


# The JSON of a training state is plain JSON, except for objects with one of these keys:
# {"$tensor": name}, {"$tuple": [...]}, {"$int_keys": [[key, value], ...]} (an optimizer's state is
# keyed by parameter number) and {"$float": "inf" | "-inf" | "nan"} (JSON has no such numbers).
_TAGS = ("$tensor", "$tuple", "$int_keys", "$float")


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"$tensor": path}
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
        return {"$tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            if any(k in _TAGS for k in value):
                raise TypeError(f"training state {path or '/'}: the keys {_TAGS} are reserved")
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in value.items()}
        if all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            return {"$int_keys": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
        raise TypeError(f"training state {path or '/'}: dict keys must be all strings or all integers")
    raise TypeError(f"training state {path or '/'}: cannot store a {type(value).__name__} "
                    "(tensors, numbers, strings, None, lists, tuples and dicts only)")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        return tensors[value["$tensor"]]
    if "$tuple" in value:
        return tuple(_decode(v, tensors) for v in value["$tuple"])
    if "$int_keys" in value:
        return {int(k): _decode(v, tensors) for k, v in value["$int_keys"]}
    if "$float" in value:
        return float(value["$float"])
    return {k: _decode(v, tensors) for k, v in value.items()}
