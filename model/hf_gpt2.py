"""OpenAI GPT-2 weights in Hugging Face's format <-> our GPTModel: import, export, name mapping.

Hugging Face's GPT-2 keeps the query/key/value projections as one fused `Conv1D` (`c_attn`),
and every `Conv1D` stores its weight as (in, out), the transpose of an `nn.Linear`'s (out, in).
Importing splits `c_attn` into our `W_query` / `W_key` / `W_value` and transposes; exporting does
the reverse, so `transformers.GPT2LMHeadModel.from_pretrained(folder)` loads what we write.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.atomic import atomic_path, write_json
from model.checkpoint import load_model
from model.config import GPTConfig
from model.gpt import GPTModel

HF_CONFIG = "config.json"
HF_SAFETENSORS = "model.safetensors"
HF_PICKLE = "pytorch_model.bin"

# Our per-block Linear/LayerNorm name -> Hugging Face's, for the parts that map one to one, with
# the (in, out) widths in units of emb_dim. Linear entries are Conv1D on their side, stored (in,
# out): the weight is transposed on the way through. LayerNorms have out = None.
_BLOCK_PARTS: list[tuple[str, str, int, int | None]] = [
    ("norm1", "ln_1", 1, None),
    ("att.out_proj", "attn.c_proj", 1, 1),
    ("norm2", "ln_2", 1, None),
    ("ff.layers.0", "mlp.c_fc", 1, 4),
    ("ff.layers.2", "mlp.c_proj", 4, 1),
]
_QKV = ("att.W_query", "att.W_key", "att.W_value")
# HF configs that compute something our GPTModel does not: refused rather than loaded wrongly.
_SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")


class HFFormatError(ValueError):
    """A Hugging Face GPT-2 folder or state dict this module cannot map onto our model."""


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


def gpt_config_from_hf(hf: Mapping[str, Any], drop_rate: float = 0.0, source: str = HF_CONFIG) -> GPTConfig:
    """Our config for a Hugging Face GPT-2 `config.json`; refuses variants our model cannot express."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise HFFormatError(f"{source}: model_type is {hf.get('model_type')!r}, not 'gpt2'")
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer") if k not in hf]
    if missing:
        raise HFFormatError(f"{source}: missing {missing}: is this a GPT-2 config.json?")
    emb = hf["n_embd"]
    unsupported = {
        "activation_function": (hf.get("activation_function", "gelu_new"), "one of " + ", ".join(_SUPPORTED_ACTIVATIONS)),
        "n_inner": (hf.get("n_inner"), f"null or {4 * emb}"),
        "layer_norm_epsilon": (hf.get("layer_norm_epsilon", 1e-5), "1e-05"),
        "scale_attn_weights": (hf.get("scale_attn_weights", True), "true"),
        "scale_attn_by_inverse_layer_idx": (hf.get("scale_attn_by_inverse_layer_idx", False), "false"),
        "add_cross_attention": (hf.get("add_cross_attention", False), "false"),
    }
    ok = {
        "activation_function": unsupported["activation_function"][0] in _SUPPORTED_ACTIVATIONS,
        "n_inner": unsupported["n_inner"][0] in (None, 4 * emb),
        "layer_norm_epsilon": abs(float(unsupported["layer_norm_epsilon"][0]) - 1e-5) < 1e-12,
        "scale_attn_weights": unsupported["scale_attn_weights"][0] is True,
        "scale_attn_by_inverse_layer_idx": unsupported["scale_attn_by_inverse_layer_idx"][0] is False,
        "add_cross_attention": unsupported["add_cross_attention"][0] is False,
    }
    bad = [f"{k} = {unsupported[k][0]!r} (supported: {unsupported[k][1]})" for k, good in ok.items() if not good]
    if bad:
        raise HFFormatError(f"{source}: a GPT-2 variant our GPTModel does not implement: " + "; ".join(bad))
    return GPTConfig(vocab_size=hf["vocab_size"], context_length=hf["n_positions"], emb_dim=emb,
                     n_heads=hf["n_head"], n_layers=hf["n_layer"], drop_rate=drop_rate, qkv_bias=True,
                     # The checkpoint as stored: its own vocabulary rows, the head a copy of wte
                     # (steps/training/pretrained.py ties or pads it where params.yaml asks).
                     tie_embeddings=False, vocab_multiple=1)


def hf_config_from_gpt(cfg: GPTConfig, tied: bool) -> dict[str, Any]:
    """A `config.json` that `transformers.GPT2Config` reads as our architecture."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_head": cfg.n_heads,
        "n_layer": cfg.n_layers,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.drop_rate,
        "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": tied,
        "bos_token_id": cfg.vocab_size - 1,
        "eos_token_id": cfg.vocab_size - 1,
    }


# ---------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------


def _strip_prefix(hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's own upload was saved from GPT2Model (`h.0...`), save_pretrained of a
    GPT2LMHeadModel writes `transformer.h.0...`: both are accepted."""
    return {k.removeprefix("transformer."): v for k, v in hf_state.items()}


def from_hf_state_dict(hf_state: Mapping[str, torch.Tensor], cfg: GPTConfig,
                       source: str = "state dict") -> dict[str, torch.Tensor]:
    """Our GPTModel's state dict from a Hugging Face GPT-2 one (every tensor a fresh copy).

    The output head gets `lm_head.weight` when there is one, else a copy of the token embedding
    (GPT-2 ties the two, and a tied save leaves `lm_head.weight` out).
    """
    hf = _strip_prefix(hf_state)
    c = cfg.emb_dim

    def take(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in hf:
            raise HFFormatError(f"{source}: no {key!r} (a GPT-2 with {cfg.n_layers} layers has it)")
        t = hf[key]
        if tuple(t.shape) != shape:
            raise HFFormatError(f"{source}: {key!r} has shape {tuple(t.shape)}, expected {shape} for {cfg}")
        return t.detach().to(torch.float32).clone()

    out: dict[str, torch.Tensor] = {
        "tok_emb.weight": take("wte.weight", (cfg.vocab_size, c)),
        "pos_emb.weight": take("wpe.weight", (cfg.context_length, c)),
        "final_norm.weight": take("ln_f.weight", (c,)),
        "final_norm.bias": take("ln_f.bias", (c,)),
    }
    head = hf.get("lm_head.weight")
    out["out_head.weight"] = out["tok_emb.weight"].clone() if head is None else take("lm_head.weight", (cfg.vocab_size, c))
    for i in range(cfg.n_layers):
        ours, theirs = f"trf_blocks.{i}.", f"h.{i}."
        w_qkv = take(theirs + "attn.c_attn.weight", (c, 3 * c))  # (C_in, 3C_out): Conv1D layout
        b_qkv = take(theirs + "attn.c_attn.bias", (3 * c,))
        for name, w, b in zip(_QKV, w_qkv.split(c, dim=1), b_qkv.split(c), strict=True):
            out[ours + name + ".weight"] = w.t().contiguous()  # (C_out, C_in): Linear layout
            out[ours + name + ".bias"] = b.clone()
        for our_name, hf_name, n_in, n_out in _BLOCK_PARTS:
            if n_out is None:  # LayerNorm: same layout on both sides
                out[ours + our_name + ".weight"] = take(theirs + hf_name + ".weight", (n_in * c,))
                out[ours + our_name + ".bias"] = take(theirs + hf_name + ".bias", (n_in * c,))
                continue
            w = take(theirs + hf_name + ".weight", (n_in * c, n_out * c))  # (C_in, C_out): Conv1D
            out[ours + our_name + ".weight"] = w.t().contiguous()  # (C_out, C_in): Linear
            out[ours + our_name + ".bias"] = take(theirs + hf_name + ".bias", (n_out * c,))
    return out


def to_hf_state_dict(state: Mapping[str, torch.Tensor], cfg: GPTConfig, tied: bool) -> dict[str, torch.Tensor]:
    """The Hugging Face GPT2LMHeadModel state dict (`transformer.` names) of our GPTModel's.

    Rows past `cfg.vocab_size` (a vocabulary padded for speed) are dropped. With `tied`,
    `lm_head.weight` is left out, as save_pretrained does for a tied model.
    """
    v = cfg.vocab_size
    out: dict[str, torch.Tensor] = {
        "transformer.wte.weight": state["tok_emb.weight"][:v],
        "transformer.wpe.weight": state["pos_emb.weight"],
        "transformer.ln_f.weight": state["final_norm.weight"],
        "transformer.ln_f.bias": state["final_norm.bias"],
    }
    if not tied:
        out["lm_head.weight"] = state["out_head.weight"][:v]
    for i in range(cfg.n_layers):
        ours, theirs = f"trf_blocks.{i}.", f"transformer.h.{i}."
        # Three (C_out, C_in) Linear weights -> one (C_in, 3C_out) Conv1D weight.
        out[theirs + "attn.c_attn.weight"] = torch.cat([state[ours + n + ".weight"].t() for n in _QKV], dim=1)
        out[theirs + "attn.c_attn.bias"] = torch.cat([_qkv_bias(state, ours + n, cfg) for n in _QKV])
        for our_name, hf_name, _, n_out in _BLOCK_PARTS:
            w = state[ours + our_name + ".weight"]
            out[theirs + hf_name + ".weight"] = w if n_out is None else w.t()
            out[theirs + hf_name + ".bias"] = state[ours + our_name + ".bias"]
    return {k: t.detach().to("cpu").contiguous() for k, t in out.items()}


def _qkv_bias(state: Mapping[str, torch.Tensor], name: str, cfg: GPTConfig) -> torch.Tensor:
    # GPT-2 always has q/k/v biases: a model trained without them exports zeros, which is the same function.
    bias = state.get(name + ".bias")
    return bias if bias is not None else torch.zeros(cfg.emb_dim, dtype=state[name + ".weight"].dtype)


def is_tied(model: GPTModel) -> bool:
    """Whether the output head shares the token embedding's matrix (as GPT-2's does)."""
    return model.out_head.weight is model.tok_emb.weight


# ---------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------


def read_hf_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a Hugging Face model folder holds config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise HFFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise HFFormatError(f"{path}: expected a JSON object")
    return data


def read_hf_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A `model.safetensors` or a `pytorch_model.bin` (loaded with weights_only=True, so a
    file from elsewhere cannot run code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise HFFormatError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


def weights_file(folder: str | Path) -> Path:
    """The folder's weights: model.safetensors when present, else pytorch_model.bin."""
    folder = Path(folder)
    for name in (HF_SAFETENSORS, HF_PICKLE):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: neither {HF_SAFETENSORS} nor {HF_PICKLE} found (sharded checkpoints "
                            "are not supported: GPT-2's weights fit one file)")


def load_gpt2_files(config_path: str | Path, weights_path: str | Path, drop_rate: float = 0.0,
                    tie_embeddings: bool = False, vocab_multiple: int = 1) -> GPTModel:
    """Our GPTModel (eval mode) holding the weights of a HF GPT-2 config + weights file pair.

    `tie_embeddings` and `vocab_multiple` are our layout choices, not the checkpoint's: GPT-2's
    (tied) matrix fills both the embedding and the head either way, and padded rows stay as
    initialised."""
    cfg = gpt_config_from_hf(read_hf_config(config_path), drop_rate, source=str(config_path))
    cfg = replace(cfg, tie_embeddings=tie_embeddings, vocab_multiple=vocab_multiple)
    model = GPTModel(cfg)
    load_hf_state_dict(model, read_hf_weights(weights_path), source=str(weights_path))
    return model.eval()


def load_gpt2(folder: str | Path, drop_rate: float = 0.0) -> GPTModel:
    """Our GPTModel from a Hugging Face GPT-2 folder (`save_pretrained`'s, or a hub snapshot)."""
    return load_gpt2_files(Path(folder) / HF_CONFIG, weights_file(folder), drop_rate)


def load_hf_state_dict(model: GPTModel, hf_state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Fill `model` from a HF GPT-2 state dict; every one of our tensors must be covered."""
    if not model.cfg.qkv_bias:
        raise HFFormatError(f"{source}: GPT-2 weights have q/k/v biases: build the model with qkv_bias=True")
    state = from_hf_state_dict(hf_state, model.cfg, source)
    own = model.state_dict()
    for key in ("tok_emb.weight", "out_head.weight"):
        # A vocabulary padded past GPT-2's 50,257 keeps its extra rows (never produced tokens).
        rows = own[key].size(0)
        if key in state and rows > state[key].size(0):
            padded = own[key].clone()
            padded[: state[key].size(0)] = state[key]
            state[key] = padded
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise HFFormatError(f"{source}: does not fit the model ({err})") from err


def export_hf(model: GPTModel, folder: str | Path) -> Path:
    """Write `model.safetensors` + `config.json` that `GPT2LMHeadModel.from_pretrained(folder)` loads."""
    require_lm_head(model, "GPT-2")
    tied = is_tied(model)
    return write_hf_folder(folder, to_hf_state_dict(model.state_dict(), model.cfg, tied),
                           hf_config_from_gpt(model.cfg, tied))


def require_lm_head(model: torch.nn.Module, family: str) -> None:
    """Only a language model (an out_head over the vocabulary) has a Hugging Face causal-LM form."""
    head = model.out_head
    if not isinstance(head, torch.nn.Linear) or head.out_features < model.cfg.vocab_size:
        raise ValueError(f"only a language model (out_head over the vocabulary) can be exported to {family}'s "
                         "format; this one has a task head")


def write_hf_folder(folder: str | Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """`model.safetensors` (written atomically) and `config.json` in `folder`, as `save_pretrained` lays them out."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / HF_SAFETENSORS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_json(folder / HF_CONFIG, config)
    return folder


def export_model_folder(src: str | Path, dest: str | Path) -> Path:
    """A gptpipe model folder (e.g. models/pretrain) as a Hugging Face GPT-2 folder, or a Llama
    one for a model of arch llama; its `tokenizer.json` (a `tokenizers` file) is copied along
    when there is one."""
    model, head = load_model(src)
    if head.get("kind") != "lm":
        raise ValueError(f"{src}: holds a {head.get('kind')} model; only a language model (e.g. models/pretrain "
                         "or models/instruct) can be exported to Hugging Face's format")
    if model.cfg.arch == "llama":
        # Imported here: hf_llama builds on this module's folder helpers (a cycle at import time).
        from model import hf_llama

        hf_llama.export_hf(model, dest)  # type: ignore[arg-type]
    else:
        export_hf(model, dest)  # type: ignore[arg-type]
    tokenizer = Path(src) / "tokenizer.json"
    if tokenizer.is_file():
        shutil.copy(tokenizer, Path(dest) / tokenizer.name)
    return Path(dest)
