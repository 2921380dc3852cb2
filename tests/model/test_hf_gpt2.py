"""Tests for GPT-2 weights in Hugging Face's format (model/hf_gpt2.py): our logits equal
transformers' GPT2LMHeadModel's, export loads back into transformers, and round trips are exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.gpt import GPTModel
from model.hf_gpt2 import (
    HFFormatError,
    export_hf,
    from_hf_state_dict,
    gpt_config_from_hf,
    load_gpt2,
    load_hf_state_dict,
    to_hf_state_dict,
)
from tests.params import gpt_config

transformers = pytest.importorskip("transformers")

TINY_HF = dict(vocab_size=101, n_positions=32, n_embd=48, n_layer=2, n_head=4)


def tiny_hf_model(tie: bool = True, seed: int = 0):
    """A randomly initialised GPT2LMHeadModel, with non-zero biases and LayerNorm affines so that a
    mapping which dropped or swapped one of them would show in the logits."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**TINY_HF, tie_word_embeddings=tie, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
        if not tie:
            model.lm_head.weight.normal_(0.0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf-gpt2")
    tiny_hf_model().save_pretrained(folder)
    return folder


def tokens(n: int = 3, t: int = 20) -> torch.Tensor:
    return torch.randint(0, TINY_HF["vocab_size"], (n, t), generator=torch.Generator().manual_seed(5))


def hf_logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


def our_logits(model: GPTModel, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(idx)


def test_our_logits_equal_transformers_logits_for_a_saved_tied_model(hf_folder: Path) -> None:
    reference = transformers.GPT2LMHeadModel.from_pretrained(hf_folder).eval()
    ours = load_gpt2(hf_folder)
    assert ours.cfg == gpt_config(vocab_size=101, context_length=32, emb_dim=48, n_heads=4, n_layers=2,
                                 drop_rate=0.0, qkv_bias=True)
    torch.testing.assert_close(our_logits(ours, tokens()), hf_logits(reference, tokens()), atol=1e-5, rtol=1e-5)
    # The head got the token embedding (GPT-2 ties them; the saved file has no lm_head.weight).
    assert torch.equal(ours.out_head.weight, ours.tok_emb.weight)


def test_untied_head_and_pickled_state_dict_are_read_too(tmp_path: Path) -> None:
    reference = tiny_hf_model(tie=False, seed=1)
    # The legacy layout older transformers versions (and many hub repos) have: a pickled state dict.
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    ours = load_gpt2(tmp_path)
    torch.testing.assert_close(our_logits(ours, tokens()), hf_logits(reference, tokens()), atol=1e-5, rtol=1e-5)
    assert not torch.equal(ours.out_head.weight, ours.tok_emb.weight)


def test_openai_key_names_without_the_transformer_prefix_and_mask_buffers_are_accepted() -> None:
    # OpenAI's upload was saved from GPT2Model: `h.0.attn.c_attn.weight`, plus `h.0.attn.bias`
    # causal-mask buffers that are no weights.
    reference = tiny_hf_model(seed=2)
    state = {k.removeprefix("transformer."): v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    for i in range(TINY_HF["n_layer"]):
        state[f"h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32).tril()
    cfg = gpt_config_from_hf(reference.config.to_dict())
    ours = GPTModel(cfg)
    load_hf_state_dict(ours, state)
    torch.testing.assert_close(our_logits(ours, tokens()), hf_logits(reference, tokens()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path: Path, tie: bool) -> None:
    torch.manual_seed(3)
    ours = GPTModel(gpt_config(vocab_size=101, context_length=32, emb_dim=48, n_heads=4, n_layers=2,
                              drop_rate=0.0, qkv_bias=True))
    if tie:
        ours.out_head.weight = ours.tok_emb.weight  # share one matrix, as GPT-2 does
    export_hf(ours, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tie_word_embeddings"] is tie and config["n_embd"] == 48
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(hf_logits(reference, tokens()), our_logits(ours, tokens()), atol=1e-5, rtol=1e-5)


def test_export_without_qkv_bias_writes_zero_biases(tmp_path: Path) -> None:
    torch.manual_seed(4)
    ours = GPTModel(gpt_config(vocab_size=101, context_length=32, emb_dim=48, n_heads=4, n_layers=2, drop_rate=0.0))
    export_hf(ours, tmp_path)
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert not reference.transformer.h[0].attn.c_attn.bias.any()
    torch.testing.assert_close(hf_logits(reference, tokens()), our_logits(ours, tokens()), atol=1e-5, rtol=1e-5)


def test_round_trip_ours_to_hf_to_ours_is_bit_identical(tmp_path: Path) -> None:
    torch.manual_seed(5)
    ours = GPTModel(gpt_config(vocab_size=101, context_length=32, emb_dim=48, n_heads=4, n_layers=3,
                              drop_rate=0.1, qkv_bias=True))
    state = ours.state_dict()
    back = from_hf_state_dict(to_hf_state_dict(state, ours.cfg, tied=False), ours.cfg)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)

    export_hf(ours, tmp_path)
    reloaded = load_gpt2(tmp_path, drop_rate=0.1)
    assert reloaded.cfg == ours.cfg
    assert all(torch.equal(reloaded.state_dict()[k], v) for k, v in state.items())


def test_round_trip_hf_to_ours_to_hf_is_bit_identical() -> None:
    reference = tiny_hf_model(tie=False, seed=6)
    hf_state = reference.state_dict()
    cfg = gpt_config_from_hf(reference.config.to_dict())
    again = to_hf_state_dict(from_hf_state_dict(hf_state, cfg), cfg, tied=False)
    assert again.keys() <= hf_state.keys()
    assert all(torch.equal(again[k], hf_state[k]) for k in again)


def test_a_padded_vocabulary_keeps_its_extra_rows_and_exports_the_real_ones(tmp_path: Path) -> None:
    reference = tiny_hf_model(seed=7)
    cfg = gpt_config_from_hf(reference.config.to_dict())
    padded = GPTModel(cfg)
    with torch.no_grad():  # stand-in for a vocabulary padded to a multiple of 64 (128 rows here)
        padded.tok_emb.weight = torch.nn.Parameter(torch.zeros(128, cfg.emb_dim))
        padded.out_head.weight = torch.nn.Parameter(torch.zeros(128, cfg.emb_dim))
    load_hf_state_dict(padded, reference.state_dict())
    assert torch.equal(padded.tok_emb.weight[:101], reference.transformer.wte.weight)
    assert not padded.tok_emb.weight[101:].any()
    hf = to_hf_state_dict(padded.state_dict(), cfg, tied=False)
    assert hf["transformer.wte.weight"].shape == (101, cfg.emb_dim)


def test_unsupported_variants_and_broken_files_are_refused_with_the_reason(tmp_path: Path) -> None:
    base = tiny_hf_model().config.to_dict()
    with pytest.raises(HFFormatError, match="activation_function = 'relu'"):
        gpt_config_from_hf({**base, "activation_function": "relu"}, source="x/config.json")
    with pytest.raises(HFFormatError, match="model_type is 'llama'"):
        gpt_config_from_hf({**base, "model_type": "llama"})
    with pytest.raises(HFFormatError, match="missing \\['n_embd'\\]"):
        gpt_config_from_hf({k: v for k, v in base.items() if k != "n_embd"})

    cfg = gpt_config_from_hf(base)
    state = tiny_hf_model().state_dict()
    with pytest.raises(HFFormatError, match="no 'h.1.attn.c_attn.weight'"):
        from_hf_state_dict({k: v for k, v in state.items() if "h.1.attn.c_attn.weight" not in k}, cfg)
    with pytest.raises(HFFormatError, match="'wpe.weight' has shape"):
        from_hf_state_dict({**state, "transformer.wpe.weight": torch.zeros(16, 48)}, cfg)
    with pytest.raises(HFFormatError, match="qkv_bias=True"):
        load_hf_state_dict(GPTModel(gpt_config(vocab_size=101, context_length=32, emb_dim=48, n_heads=4, n_layers=2)), state)
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        tmp_path.joinpath("config.json").write_text(json.dumps(base))
        load_gpt2(tmp_path)


def test_a_classifier_cannot_be_exported(tmp_path: Path) -> None:
    from model.heads import attach_classifier_head

    model = GPTModel(gpt_config(vocab_size=101, context_length=32, emb_dim=48, n_heads=4, n_layers=2))
    attach_classifier_head(model, 2)
    with pytest.raises(ValueError, match="task head"):
        export_hf(model, tmp_path)


def test_a_model_folder_exports_with_its_tokenizer(tmp_path: Path) -> None:
    from model.checkpoint import save_model
    from model.hf_gpt2 import export_model_folder

    torch.manual_seed(8)
    ours = GPTModel(gpt_config(vocab_size=101, context_length=32, emb_dim=48, n_heads=4, n_layers=2, drop_rate=0.0))
    save_model(tmp_path / "pretrain", ours)
    (tmp_path / "pretrain" / "tokenizer.json").write_text("{}")
    export_model_folder(tmp_path / "pretrain", tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.json").read_text() == "{}"
    reference = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(hf_logits(reference, tokens()), our_logits(ours, tokens()), atol=1e-5, rtol=1e-5)

    from model.heads import attach_classifier_head

    attach_classifier_head(ours, 2)
    save_model(tmp_path / "classifier", ours, head={"kind": "classifier", "labels": ["a", "b"]})
    with pytest.raises(ValueError, match="holds a classifier model"):
        export_model_folder(tmp_path / "classifier", tmp_path / "hf2")
