"""Llama weights in Hugging Face's format (`LlamaForCausalLM`) <-> our LlamaModel.

Our LlamaModel keeps Hugging Face's layout (RoPE on the two halves of each head, Linear weights
as (out, in)), so the mapping is a renaming, one tensor to one tensor: nothing is split, fused,
transposed or permuted, and ours -> Hugging Face -> ours gives back the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from model.config import GPTConfig
from model.hf_gpt2 import (
    HF_CONFIG,
    HFFormatError,
    is_tied,
    read_hf_config,
    read_hf_weights,
    require_lm_head,
    weights_file,
    write_hf_folder,
)
from model.llama import LlamaModel

# Our per-block name -> Hugging Face's (under `model.layers.{i}.`).
_BLOCK_PARTS: list[tuple[str, str]] = [
    ("norm1.weight", "input_layernorm.weight"),
    ("att.W_query.weight", "self_attn.q_proj.weight"),
    ("att.W_key.weight", "self_attn.k_proj.weight"),
    ("att.W_value.weight", "self_attn.v_proj.weight"),
    ("att.out_proj.weight", "self_attn.o_proj.weight"),
    ("norm2.weight", "post_attention_layernorm.weight"),
    ("ff.gate_proj.weight", "mlp.gate_proj.weight"),
    ("ff.up_proj.weight", "mlp.up_proj.weight"),
    ("ff.down_proj.weight", "mlp.down_proj.weight"),
]


def hf_names(cfg: GPTConfig) -> dict[str, str]:
    """Our state-dict name -> Hugging Face's, for every tensor but the head."""
    names = {"tok_emb.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight"}
    for i in range(cfg.n_layers):
        for ours, theirs in _BLOCK_PARTS:
            names[f"trf_blocks.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    return names


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


def rope_theta_from_hf(hf: Mapping[str, Any], source: str) -> float:
    """The RoPE base of a config.json, refusing any RoPE scaling (Llama 3.1+'s `llama3`, linear,
    dynamic, YaRN): our model implements plain RoPE only, and silently dropping the scaling would
    change every score. transformers 5 writes `rope_parameters`, older files `rope_theta` and
    `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if kind != "default":
        raise HFFormatError(f"{source}: RoPE scaling {kind!r} is not implemented (plain RoPE only): Llama 3.1/3.2's "
                            "long-context checkpoints cannot be loaded exactly")
    theta = params.get("rope_theta", hf.get("rope_theta", 10_000.0))
    return float(theta)


def llama_config_from_hf(hf: Mapping[str, Any], drop_rate: float = 0.0, source: str = HF_CONFIG) -> GPTConfig:
    """Our config for a Hugging Face Llama `config.json`; refuses variants our model cannot express."""
    if hf.get("model_type") != "llama":
        raise HFFormatError(f"{source}: model_type is {hf.get('model_type')!r}, not 'llama'")
    needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "max_position_embeddings")
    missing = [k for k in needed if k not in hf]
    if missing:
        raise HFFormatError(f"{source}: missing {missing}: is this a Llama config.json?")
    emb, heads = hf["hidden_size"], hf["num_attention_heads"]
    checks = {
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "attention_bias": (hf.get("attention_bias", False), False),
        "mlp_bias": (hf.get("mlp_bias", False), False),
        "head_dim": (hf.get("head_dim") or emb // heads, emb // heads),
    }
    bad = [f"{k} = {got!r} (supported: {want!r})" for k, (got, want) in checks.items() if got != want]
    if bad:
        raise HFFormatError(f"{source}: a Llama variant our LlamaModel does not implement: " + "; ".join(bad))
    return GPTConfig(vocab_size=hf["vocab_size"], context_length=hf["max_position_embeddings"], emb_dim=emb,
                     n_heads=heads, n_layers=hf["num_hidden_layers"], drop_rate=drop_rate, qkv_bias=None,
                     tie_embeddings=bool(hf.get("tie_word_embeddings", False)), vocab_multiple=1, arch="llama",
                     rope_theta=rope_theta_from_hf(hf, source), ffn_hidden=hf["intermediate_size"],
                     n_kv_heads=hf.get("num_key_value_heads") or heads, norm_eps=float(hf.get("rms_norm_eps", 1e-6)))


def hf_config_from_llama(cfg: GPTConfig) -> dict[str, Any]:
    """A `config.json` that `transformers.LlamaConfig` reads as our architecture. The RoPE base is
    written both ways (`rope_parameters` for transformers 5, `rope_theta` for older versions)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.emb_dim,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.emb_dim // cfg.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": cfg.drop_rate,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": cfg.vocab_size - 1,
        "eos_token_id": cfg.vocab_size - 1,
    }


# ---------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------


def from_hf_state_dict(hf_state: Mapping[str, torch.Tensor], cfg: GPTConfig,
                       source: str = "state dict") -> dict[str, torch.Tensor]:
    """Our LlamaModel's state dict from a Hugging Face LlamaForCausalLM one (fresh float32 copies).

    The head gets `lm_head.weight` when there is one, else the token embedding (a tied save
    leaves `lm_head.weight` out)."""
    # The checkpoint's own shapes (its vocabulary unpadded), on the meta device: no memory, even for 3B.
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in LlamaModel(replace(cfg, tie_embeddings=False, vocab_multiple=1)).state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in {**hf_names(cfg), "out_head.weight": "lm_head.weight"}.items():
        if theirs not in hf_state:
            if ours == "out_head.weight":
                continue  # tied: filled from the embedding below
            raise HFFormatError(f"{source}: no {theirs!r} (a Llama with {cfg.n_layers} layers has it)")
        t = hf_state[theirs]
        if tuple(t.shape) != shapes[ours]:
            raise HFFormatError(f"{source}: {theirs!r} has shape {tuple(t.shape)}, expected {shapes[ours]}")
        out[ours] = t.detach().to(torch.float32).clone()
    if "out_head.weight" not in out:
        out["out_head.weight"] = out["tok_emb.weight"].clone()
    return out


def to_hf_state_dict(state: Mapping[str, torch.Tensor], cfg: GPTConfig) -> dict[str, torch.Tensor]:
    """The Hugging Face LlamaForCausalLM state dict of our LlamaModel's. Rows past `cfg.vocab_size`
    (a vocabulary padded for speed) are dropped; a tied model leaves `lm_head.weight` out, as
    save_pretrained does."""
    v = cfg.vocab_size
    out = {theirs: state[ours] for ours, theirs in hf_names(cfg).items()}
    out["model.embed_tokens.weight"] = out["model.embed_tokens.weight"][:v]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["out_head.weight"][:v]
    return {k: t.detach().to("cpu").contiguous() for k, t in out.items()}


def load_hf_state_dict(model: LlamaModel, hf_state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Fill `model` from a HF Llama state dict; every one of our tensors must be covered. A
    vocabulary padded past the checkpoint's keeps its extra rows (never produced tokens)."""
    state = from_hf_state_dict(hf_state, model.cfg, source)
    own = model.state_dict()
    for key in ("tok_emb.weight", "out_head.weight"):
        rows = own[key].size(0)
        if rows > state[key].size(0):
            padded = own[key].clone()
            padded[: state[key].size(0)] = state[key]
            state[key] = padded
    if model.cfg.tie_embeddings:
        state["out_head.weight"] = state["tok_emb.weight"]  # one matrix under both names
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise HFFormatError(f"{source}: does not fit the model ({err})") from err


# ---------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------


def load_llama_files(config_path: str | Path, weights_path: str | Path, drop_rate: float = 0.0,
                     tie_embeddings: bool | None = None, vocab_multiple: int = 1) -> LlamaModel:
    """Our LlamaModel (eval mode) holding the weights of a HF Llama config + weights file pair.
    `tie_embeddings` None keeps the checkpoint's choice."""
    cfg = llama_config_from_hf(read_hf_config(config_path), drop_rate, source=str(config_path))
    tied = cfg.tie_embeddings if tie_embeddings is None else tie_embeddings
    model = LlamaModel(replace(cfg, tie_embeddings=tied, vocab_multiple=vocab_multiple))
    load_hf_state_dict(model, read_hf_weights(weights_path), source=str(weights_path))
    return model.eval()


def load_llama(folder: str | Path, drop_rate: float = 0.0) -> LlamaModel:
    """Our LlamaModel from a Hugging Face Llama folder (`save_pretrained`'s, one safetensors file)."""
    return load_llama_files(Path(folder) / HF_CONFIG, weights_file(folder), drop_rate)


def export_hf(model: LlamaModel, folder: str | Path) -> Path:
    """Write `model.safetensors` + `config.json` that `LlamaForCausalLM.from_pretrained(folder)` loads."""
    require_lm_head(model, "Llama")
    cfg = replace(model.cfg, tie_embeddings=is_tied(model))
    return write_hf_folder(folder, to_hf_state_dict(model.state_dict(), cfg), hf_config_from_llama(cfg))
