"""Our LlamaModel against transformers' LlamaForCausalLM: same logits, weights both ways, folders."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from model.checkpoint import save_model
from model.config import GPTConfig
from model.generate import generate
from model.hf_gpt2 import HFFormatError, export_model_folder
from model.hf_llama import (
    export_hf,
    hf_config_from_llama,
    llama_config_from_hf,
    load_llama,
    load_llama_files,
)
from model.llama import LlamaModel
from tests.model.test_llama import llama_config as tiny_llama

transformers = pytest.importorskip("transformers")

V = 101


def llama_config(**changes) -> GPTConfig:
    """tests/model/test_llama.py's tiny llama, a little wider (6 query heads, 2 key/value heads) and with
    Llama 3's rope_theta."""
    return tiny_llama(**{"vocab_size": V, "context_length": 32, "emb_dim": 48, "n_heads": 6, "ffn_hidden": 80,
                         "rope_theta": 500_000.0, **changes})


def hf_model(cfg: GPTConfig, seed: int) -> torch.nn.Module:
    """A LlamaForCausalLM of our config's shape, with random weights (norm scales too)."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config_from_llama(cfg))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.uniform_(0.5, 1.5)  # the default ones would hide a norm mapped to the wrong place
    return model


CASES = {
    "gqa": {},
    "multi-query": {"n_kv_heads": 1},
    "multi-head": {"n_kv_heads": 6},
    "tied": {"tie_embeddings": True},
    "tied-gqa-llama2-eps": {"tie_embeddings": True, "n_kv_heads": 3, "norm_eps": 1e-6, "rope_theta": 10_000.0},
}


@pytest.mark.parametrize("case", list(CASES))
def test_our_logits_equal_transformers_for_the_same_weights(case: str, tmp_path) -> None:
    cfg = llama_config(**CASES[case])
    theirs = hf_model(cfg, seed=0)
    theirs.save_pretrained(tmp_path)  # config.json + model.safetensors, as on the hub
    ours = load_llama(tmp_path)
    assert ours.cfg == cfg and (ours.out_head.weight is ours.tok_emb.weight) == cfg.tie_embeddings
    x = torch.randint(0, V, (2, 17))
    with torch.no_grad():
        expected = theirs(x).logits
    torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_export_loads_in_transformers_and_comes_back_bit_identical(case: str, tmp_path) -> None:
    cfg = llama_config(**CASES[case], vocab_multiple=8)  # padded rows are dropped on export
    torch.manual_seed(1)
    ours = LlamaModel(cfg).eval()
    export_hf(ours, tmp_path)
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    x = torch.randint(0, V, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), rtol=1e-4, atol=1e-4)
    back = load_llama_files(tmp_path / "config.json", tmp_path / "model.safetensors", vocab_multiple=8)
    mine, again = ours.state_dict(), back.state_dict()
    assert mine.keys() == again.keys()
    for name in mine:
        # The padding rows are not exported: the real rows must be the same bits.
        assert torch.equal(mine[name][:V] if name in ("tok_emb.weight", "out_head.weight") else mine[name],
                           again[name][:V] if name in ("tok_emb.weight", "out_head.weight") else again[name]), name


def test_transformers_generation_matches_our_cached_generation(tmp_path) -> None:
    cfg = llama_config()
    theirs = hf_model(cfg, seed=2)
    theirs.save_pretrained(tmp_path)
    ours = load_llama(tmp_path)
    prompt = torch.randint(0, V, (1, 6))
    with torch.no_grad():
        expected = theirs.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 10, cfg.context_length), expected)


def test_export_model_folder_writes_llama_format_for_a_llama_model(tmp_path) -> None:
    model = LlamaModel(llama_config(tie_embeddings=True))
    save_model(tmp_path / "ours", model)
    export_model_folder(tmp_path / "ours", tmp_path / "hf")
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert written["model_type"] == "llama" and written["architectures"] == ["LlamaForCausalLM"]
    assert written["num_key_value_heads"] == 2 and written["tie_word_embeddings"] is True


@pytest.mark.parametrize(("change", "named"), [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 32.0}}, "RoPE scaling 'llama3' is not implemented"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "RoPE scaling 'yarn'"),
    ({"attention_bias": True}, "attention_bias = True"),
    ({"hidden_act": "gelu"}, "hidden_act = 'gelu'"),
    ({"model_type": "mistral"}, "not 'llama'"),
])
def test_a_llama_variant_we_do_not_implement_is_refused_by_name(change: dict, named: str) -> None:
    hf = {**hf_config_from_llama(llama_config()), **change}
    hf.pop("rope_parameters") if "rope_scaling" in change else None
    with pytest.raises(HFFormatError, match=named):
        llama_config_from_hf(hf, source="x/config.json")


def test_meta_style_config_reads_rope_theta_at_the_top_level() -> None:
    hf = hf_config_from_llama(llama_config())
    del hf["rope_parameters"]
    assert llama_config_from_hf(hf).rope_theta == 500_000.0


def test_pretrain_init_from_accepts_a_llama_folder_and_checks_its_architecture(tmp_path) -> None:
    from steps.training.pretrained import initial_model
    from tests.params import shipped_params

    cfg = llama_config(tie_embeddings=True)
    theirs = hf_model(cfg, seed=3)
    theirs.save_pretrained(tmp_path)
    pretrain = shipped_params({"tokenize": {"kind": "gpt2"}, "pretrain": {"init_from": str(tmp_path)}}).pretrain
    model, provenance = initial_model(pretrain, replace(cfg, drop_rate=0.1, vocab_multiple=8))
    assert isinstance(model, LlamaModel) and provenance is not None and provenance["source"] == "folder"
    assert model.cfg.drop_rate == 0.1 and model.tok_emb.weight.size(0) == 104
    x = torch.randint(0, V, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), theirs(x).logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="n_kv_heads=2 but params.yaml's model has n_kv_heads=3"):
        initial_model(pretrain, replace(cfg, n_kv_heads=3))
