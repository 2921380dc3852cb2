"""Tests for the named architectures (model/presets.py): each builds, with the documented size."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.checkpoint import new_model
from model.gpt import count_parameters
from model.presets import GPT2_VOCAB, LLAMA3_VOCAB, PRESETS, parameter_count

# (untied, tied) parameter counts. gpt2-small tied is Hugging Face's 124,439,808; the book's
# 163,009,536 is GPT_CONFIG_124M untied *without* q/k/v biases (the preset has them: +27,648).
EXPECTED = {
    "tiny": (None, None),  # depends on the tokenizer's vocabulary: checked by building it below
    "gpt2-small": (163_037_184, 124_439_808),
    "gpt2-medium": (406_286_336, 354_823_168),
    "gpt2-large": (838_359_040, 774_030_080),
    "gpt2-xl": (1_638_022_400, 1_557_611_200),
    "tiny-llama": (None, None),
    # Meta's model cards: 1.24 B and 3.21 B (tied embeddings, Llama 3's 128,256-token vocabulary);
    # Hugging Face's num_parameters() of Llama-3.2-1B / -3B gives these exact figures.
    "llama-3.2-1b": (1_498_482_688, 1_235_814_400),
    "llama-3.2-3b": (3_606_752_256, 3_212_749_824),
}
GPT2_PRESETS = [n for n in PRESETS if n.startswith("gpt2")]
LLAMA_PRESETS = ["llama-3.2-1b", "llama-3.2-3b"]


def _vocab(name: str) -> int:
    return {"tiny": 300, "tiny-llama": 300}.get(name, LLAMA3_VOCAB if name in LLAMA_PRESETS else GPT2_VOCAB)


def test_every_preset_has_an_expected_size() -> None:
    assert set(EXPECTED) == set(PRESETS)


@pytest.mark.parametrize("name", GPT2_PRESETS)
def test_gpt2_presets_have_the_published_sizes(name: str) -> None:
    cfg = PRESETS[name].gpt_config()
    assert cfg.vocab_size == GPT2_VOCAB and cfg.context_length == 1024 and cfg.qkv_bias
    untied, tied = EXPECTED[name]
    assert parameter_count(cfg) == untied
    assert parameter_count(cfg, tied=True) == tied


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_builds_and_the_analytic_count_matches_the_built_model(name: str) -> None:
    cfg = PRESETS[name].gpt_config(vocab_size=_vocab(name))
    # On the meta device: shapes without memory, so gpt2-xl costs nothing.
    with torch.device("meta"):
        model = new_model(cfg)
    assert count_parameters(model) == parameter_count(cfg)
    assert count_parameters(model) - model.out_head.weight.numel() == parameter_count(cfg, tied=True)


@pytest.mark.parametrize("name", LLAMA_PRESETS)
def test_llama_presets_have_the_published_sizes(name: str) -> None:
    cfg = PRESETS[name].gpt_config(vocab_size=LLAMA3_VOCAB)
    assert (cfg.arch, cfg.n_kv_heads, cfg.ffn_hidden, cfg.rope_theta) == ("llama", 8, 8192, 500_000.0)
    untied, tied = EXPECTED[name]
    assert parameter_count(cfg) == untied
    assert parameter_count(cfg, tied=True) == tied
    assert round(tied / 1e9, 2) == {"llama-3.2-1b": 1.24, "llama-3.2-3b": 3.21}[name]


def test_the_book_count_without_qkv_bias() -> None:
    cfg = PRESETS["gpt2-small"].gpt_config()
    assert parameter_count(replace(cfg, qkv_bias=False)) == 163_009_536  # the book, chapter 4


def test_tiny_builds_for_real_and_runs() -> None:
    model = new_model(PRESETS["tiny"].gpt_config(vocab_size=50))
    out = model(torch.zeros(2, 64, dtype=torch.long))
    assert out.shape == (2, 64, 50)


def test_counts_agree_with_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=1024, n_head=16, n_layer=24)  # gpt2-medium
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(cfg)
    assert hf.num_parameters() == EXPECTED["gpt2-medium"][1]


def test_wrong_vocabulary_is_explained() -> None:
    with pytest.raises(ValueError, match="50,257 tokens, got 2,048"):
        PRESETS["gpt2-small"].gpt_config(vocab_size=2048)
    with pytest.raises(ValueError, match="pass the tokenizer's vocab_size"):
        PRESETS["tiny"].gpt_config()
