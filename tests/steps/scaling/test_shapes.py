"""The shape rule and the two ways of counting parameters."""

import dataclasses

import pytest

from model.gpt import GPTModel, count_parameters
from steps.scaling.shapes import count_params, nearest_preset, nearest_shape, shape
from tests.params import gpt_config


@pytest.mark.parametrize("tied", [False, True])
def test_counts_match_a_built_model(tied):
    cfg = dataclasses.replace(gpt_config(vocab_size=300, context_length=32, emb_dim=64, n_heads=4, n_layers=2),
                              tie_embeddings=tied)
    model = GPTModel(cfg)
    assert count_params(cfg, "total") == count_parameters(model)
    embeddings = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    head = 0 if tied else model.out_head.weight.numel()
    assert count_params(cfg, "non-embedding") == count_parameters(model) - embeddings - head


def test_gpt2_small_is_on_the_rule():
    base = gpt_config(vocab_size=50257, context_length=1024, emb_dim=64, n_heads=1, n_layers=1)
    cfg = shape(12, base)
    assert (cfg.n_layers, cfg.emb_dim, cfg.n_heads) == (12, 768, 12)
    assert cfg.context_length == 1024 and cfg.vocab_size == 50257  # the rest kept from base


def test_nearest_shape_finds_the_exact_count_and_the_nearest_in_ratio():
    base = gpt_config(vocab_size=2048, context_length=128, emb_dim=64, n_heads=1, n_layers=1)
    six = count_params(shape(6, base), "total")
    assert nearest_shape(six, "total", base).n_layers == 6
    seven = count_params(shape(7, base), "total")
    between = (six * seven) ** 0.5  # the geometric midpoint, nudged to each side
    assert nearest_shape(between * 0.99, "total", base).n_layers == 6
    assert nearest_shape(between * 1.01, "total", base).n_layers == 7


def test_nearest_preset_counts_gpt2_at_its_own_vocabulary():
    name, count = nearest_preset(124e6, "total", vocab_size=2048)
    assert name == "gpt2-small" and count == 163_037_184  # untied head, as the book builds it
