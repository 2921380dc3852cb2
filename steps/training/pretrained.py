"""GPT-2 (or Llama) weights for `pretrain.init_from`: a local Hugging Face folder or a hub download
through the download cache, checked against params.yaml's architecture before training starts
from them."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from model.checkpoint import new_model
from model.config import GPTConfig
from model.gpt import CausalLM, reset_to_pytorch_defaults
from model.hf_gpt2 import (
    HF_CONFIG,
    HF_SAFETENSORS,
    load_gpt2_files,
    read_hf_config,
    weights_file,
)
from model.hf_llama import load_llama_files
from model.presets import PRESETS
from steps import layout
from steps.config import PretrainConfig
from steps.data.fetch import FetchError, cached_fetch, default_cache_dir
from steps.hashing import sha256_file

log = logging.getLogger("gptpipe.pretrained")
INIT_PROVENANCE = layout.INIT_PROVENANCE
"""Written into the model folder: where `init_from`'s weights came from, and their sha256."""

# owner/name or a bare name (OpenAI's: gpt2, gpt2-medium, ...), as the hub spells repositories.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class WeightFiles:
    """A GPT-2 `config.json` and weights file, with where they came from (for the run's records)."""

    config: Path
    weights: Path
    provenance: dict[str, Any]


def hub_file_url(template: str, repo: str, revision: str, file: str) -> str:
    """`init_url` with its placeholders filled: the address of one file of a hub repository."""
    try:
        return template.format(repo=repo, revision=revision, file=file)
    except (KeyError, IndexError, ValueError) as err:
        raise FetchError(f"pretrain.init_url {template!r}: only {{repo}}, {{revision}} and {{file}} can be "
                         f"filled in ({err!r})") from None


def locate_weights(cfg: PretrainConfig, cache_dir: Path) -> WeightFiles:
    """The files `cfg.init_from` names: an existing folder as it is, else a hub name, downloaded once.

    Only `model.safetensors` is downloaded (a pickle from the network is never read); a local
    folder may hold `pytorch_model.bin` instead, which is loaded with weights_only=True.
    """
    assert cfg.init_from is not None
    folder = Path(cfg.init_from).expanduser()
    if folder.is_dir():
        return _local(folder, cfg.init_sha256)
    if not _HUB_NAME.fullmatch(cfg.init_from):
        raise FetchError(f"pretrain.init_from {cfg.init_from!r} is neither an existing folder nor a hub name "
                         "(like gpt2 or owner/name): check the path")
    return _download(cfg.init_from, cfg, cache_dir)


def _local(folder: Path, pinned: str | None) -> WeightFiles:
    weights = weights_file(folder)
    config = folder / HF_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: a Hugging Face model folder holds config.json next to "
                                f"{weights.name}")
    got = _check_pin(weights, pinned, str(weights))
    # The folder as params.yaml names it, not resolved: init_from.json is a DVC output, and the same
    # params and weights in another checkout (or another run) must write the same bytes.
    return WeightFiles(config, weights, {"source": "folder", "folder": str(folder),
                                         "weights": weights.name, "sha256": got, "pinned": pinned is not None})


def _download(repo: str, cfg: PretrainConfig, cache_dir: Path) -> WeightFiles:
    urls = {name: hub_file_url(cfg.init_url, repo, cfg.init_revision, name) for name in (HF_CONFIG, HF_SAFETENSORS)}
    config = cached_fetch(urls[HF_CONFIG], cache_dir, timeout_s=cfg.init_timeout_s)
    weights = cached_fetch(urls[HF_SAFETENSORS], cache_dir, sha256=cfg.init_sha256, timeout_s=cfg.init_timeout_s)
    got = _check_pin(weights, cfg.init_sha256, urls[HF_SAFETENSORS])
    return WeightFiles(config, weights, {"source": "hub", "repo": repo, "revision": cfg.init_revision,
                                         "url": urls[HF_SAFETENSORS], "sha256": got,
                                         "pinned": cfg.init_sha256 is not None})


def _check_pin(weights: Path, pinned: str | None, where: str) -> str:
    got = sha256_file(weights)
    if pinned is None:
        log.warning("%s is not pinned: its sha256 is %s (recorded in models/pretrain/init_from.json; set "
                    "pretrain.init_sha256 to it to refuse any other file)", where, got)
    elif got != pinned.lower():
        raise FetchError(f"{where}: sha256 mismatch: pretrain.init_sha256 is {pinned.lower()}, the file has {got}")
    return got


def check_architecture(loaded: GPTConfig, wanted: GPTConfig, source: str) -> None:
    """The checkpoint's architecture must be the one params.yaml describes (dropout aside)."""
    differ = [f.name for f in fields(GPTConfig) if f.name != "drop_rate" and getattr(loaded, f.name) != getattr(wanted, f.name)]
    if not differ:
        return
    theirs = ", ".join(f"{n}={getattr(loaded, n)}" for n in differ)
    ours = ", ".join(f"{n}={getattr(wanted, n)}" for n in differ)
    preset = preset_of(loaded)
    hint = (f"set model.preset to {preset} (and the other model fields to null)" if preset
            else "set the model fields to the checkpoint's values")
    where = "the tokenizer's" if differ == ["vocab_size"] else "params.yaml's model"
    raise ValueError(f"pretrain.init_from {source}: the checkpoint has {theirs} but {where} has {ours}; {hint}"
                     + ("; GPT-2 weights need tokenize.kind gpt2" if "vocab_size" in differ else ""))


def preset_of(cfg: GPTConfig) -> str | None:
    """The name of the preset whose architecture and vocabulary `cfg` has, if any."""
    for name, preset in PRESETS.items():
        arch = preset.architecture()
        if preset.vocab_size == cfg.vocab_size and all(getattr(cfg, k) == v for k, v in arch.items()):
            return name
    return None


def pretrained_model(cfg: PretrainConfig, wanted: GPTConfig, files: WeightFiles) -> CausalLM:
    """Our model holding the weights of `files`, whose architecture must be `wanted`'s: a GPT-2
    or, when its config.json says model_type llama, a Llama (LlamaForCausalLM's format)."""
    if read_hf_config(files.config).get("model_type") == "llama":
        model: CausalLM = load_llama_files(files.config, files.weights, drop_rate=wanted.drop_rate,
                                           tie_embeddings=wanted.tie_embeddings, vocab_multiple=wanted.vocab_multiple)
    else:
        model = load_gpt2_files(files.config, files.weights, drop_rate=wanted.drop_rate,
                                tie_embeddings=wanted.tie_embeddings, vocab_multiple=wanted.vocab_multiple)
    check_architecture(model.cfg, wanted, repr(cfg.init_from))
    return model


def initial_model(cfg: PretrainConfig, wanted: GPTConfig,
                  locate: Callable[[PretrainConfig], WeightFiles] | None = None) -> tuple[CausalLM, dict[str, Any] | None]:
    """Random weights, or `init_from`'s with their provenance when it is set. `locate` finds the
    weight files (default: `locate_weights` with the download cache); the pretrain flow passes
    a version that retries network errors."""
    if cfg.init_from is None:
        model = new_model(wanted)  # the class of params.yaml's model.arch
        if cfg.init == "pytorch":
            reset_to_pytorch_defaults(model)
        return model, None
    files = locate(cfg) if locate is not None else locate_weights(cfg, default_cache_dir())
    log.info("starting from %s (%s)", cfg.init_from, files.weights)
    return pretrained_model(cfg, wanted, files), files.provenance
