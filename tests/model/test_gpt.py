"""Tests for the GPT network (model/gpt.py) and its validated config (model/config.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.config import GPTConfig
from model.gpt import GPTModel, count_parameters
from tests.params import gpt_config


def tiny_cfg(**overrides) -> GPTConfig:
    return gpt_config(**{**dict(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0),
                         **overrides})


@pytest.fixture
def model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(tiny_cfg()).eval()


def test_output_shape(model: GPTModel) -> None:
    idx = torch.randint(0, 64, (3, 10), generator=torch.Generator().manual_seed(1))
    out = model(idx)
    assert out.shape == (3, 10, 64)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_full_context_is_accepted_and_longer_raises(model: GPTModel) -> None:
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 64)
    with pytest.raises(ValueError, match="context_length=16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_causal_mask(model: GPTModel) -> None:
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 64, (2, 12), generator=gen)
    t = 5
    changed = idx.clone()
    changed[:, t + 1] = (idx[:, t + 1] + 7) % 64
    with torch.no_grad():
        a, b = model(idx), model(changed)
    # Positions <= t cannot see position t+1.
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    # Position t+1 (and later ones) read the changed token.
    assert (a[:, t + 1] - b[:, t + 1]).abs().max() > 1e-4
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-4


def test_prefix_gives_same_logits(model: GPTModel) -> None:
    idx = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(idx)
        prefix = model(idx[:, :7])
    torch.testing.assert_close(full[:, :7], prefix, rtol=0, atol=1e-5)


def test_initial_loss_close_to_log_vocab() -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(vocab_size=100, context_length=32)
    model = GPTModel(cfg).eval()
    idx = torch.randint(0, 100, (8, 32), generator=torch.Generator().manual_seed(4))
    targets = torch.randint(0, 100, (8, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        loss = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten()).item()
    assert abs(loss - math.log(100)) < 0.1


def test_gpt2_init_statistics() -> None:
    torch.manual_seed(0)
    model = GPTModel(tiny_cfg(qkv_bias=True))
    w = model.trf_blocks[0].ff.layers[0].weight
    assert abs(w.std().item() - 0.02) < 0.003
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.003
    assert torch.count_nonzero(model.trf_blocks[0].att.W_query.bias) == 0
    assert torch.count_nonzero(model.trf_blocks[0].ff.layers[0].bias) == 0
    assert model.out_head.bias is None
    # LayerNorms keep their identity init.
    assert torch.equal(model.final_norm.weight, torch.ones(32))


def test_qkv_bias_flag() -> None:
    assert GPTModel(tiny_cfg()).trf_blocks[0].att.W_key.bias is None
    assert GPTModel(tiny_cfg(qkv_bias=True)).trf_blocks[0].att.W_key.bias is not None


def test_dropout_only_in_training_mode() -> None:
    torch.manual_seed(0)
    model = GPTModel(tiny_cfg(drop_rate=0.5))
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(6))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(idx), model(idx))
        model.train()
        assert not torch.allclose(model(idx), model(idx))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(emb_dim=30, n_heads=4), "divisible by n_heads"),
        (dict(vocab_size=0), "vocab_size must be positive"),
        (dict(context_length=-1), "context_length must be positive"),
        (dict(emb_dim=0), "emb_dim must be positive"),
        (dict(n_heads=0), "n_heads must be positive"),
        (dict(n_layers=0), "n_layers must be positive"),
        (dict(drop_rate=1.0), "drop_rate"),
        (dict(drop_rate=-0.1), "drop_rate"),
    ],
)
def test_config_validation(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_cfg(**overrides)


def test_config_round_trip_and_unknown_field() -> None:
    cfg = tiny_cfg(qkv_bias=True)
    data = cfg.to_dict()
    assert data["qkv_bias"] is True and data["emb_dim"] == 32
    assert GPTConfig.from_dict(data) == cfg
    with pytest.raises(ValueError, match="unknown GPTConfig field.*'n_embd'"):
        GPTConfig.from_dict({**data, "n_embd": 32})
    with pytest.raises(TypeError):
        GPTConfig.from_dict({k: v for k, v in data.items() if k != "n_layers"})


def test_config_is_frozen() -> None:
    cfg = tiny_cfg()
    with pytest.raises(AttributeError):
        cfg.emb_dim = 64  # type: ignore[misc]


def test_count_parameters() -> None:
    cfg = tiny_cfg()
    model = GPTModel(cfg)
    V, T, C, L = cfg.vocab_size, cfg.context_length, cfg.emb_dim, cfg.n_layers
    per_block = (
        3 * C * C  # W_query, W_key, W_value (no bias)
        + C * C + C  # out_proj
        + C * 4 * C + 4 * C  # ff expand
        + 4 * C * C + C  # ff project
        + 2 * 2 * C  # two LayerNorms
    )
    expected = V * C + T * C + L * per_block + 2 * C + C * V
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=True) == expected

    model.tok_emb.requires_grad_(False)
    model.out_head.requires_grad_(False)
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=True) == expected - 2 * V * C


# --- tied embeddings, vocab padding, activation checkpointing ---------------------------------


def test_tied_embeddings_share_one_matrix_counted_once() -> None:
    tied = GPTModel(tiny_cfg(tie_embeddings=True))
    untied = GPTModel(tiny_cfg())
    assert tied.out_head.weight is tied.tok_emb.weight
    assert count_parameters(untied) - count_parameters(tied) == 64 * 32
    idx = torch.randint(0, 64, (2, 8))
    F.cross_entropy(tied(idx).flatten(0, 1), idx.flatten()).backward()
    # Both uses feed the one gradient: the head's contribution reaches rows no input token used.
    unused = sorted(set(range(64)) - set(idx.flatten().tolist()))[0]
    assert tied.tok_emb.weight.grad[unused].abs().sum() > 0


def test_vocab_padding_rounds_rows_up_and_returns_real_vocab_scores() -> None:
    cfg = tiny_cfg(vocab_size=50, vocab_multiple=64)
    assert cfg.padded_vocab_size == 64
    assert tiny_cfg(vocab_size=128, vocab_multiple=64).padded_vocab_size == 128
    assert tiny_cfg(vocab_size=50257, vocab_multiple=64).padded_vocab_size == 50304
    model = GPTModel(cfg)
    assert model.tok_emb.weight.shape == (64, 32) and model.out_head.weight.shape == (64, 32)
    idx = torch.randint(0, 50, (2, 8))
    logits = model(idx)
    assert logits.shape == (2, 8, 50)  # padded ids can never be sampled nor take probability mass
    F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    assert model.out_head.weight.grad[50:].abs().sum() == 0  # padding rows do not touch the loss
    assert model.out_head.weight.grad[:50].abs().sum() > 0


def test_padding_changes_nothing_but_the_shapes() -> None:
    torch.manual_seed(0)
    plain = GPTModel(tiny_cfg(vocab_size=50)).eval()
    padded = GPTModel(tiny_cfg(vocab_size=50, vocab_multiple=64)).eval()
    state = plain.state_dict()
    for name in ("tok_emb.weight", "out_head.weight"):
        state[name] = torch.cat([state[name], torch.randn(14, 32)])  # any padding values at all
    padded.load_state_dict(state)
    idx = torch.randint(0, 50, (2, 8))
    torch.testing.assert_close(padded(idx), plain(idx))


def test_vocab_multiple_must_be_positive() -> None:
    with pytest.raises(ValueError, match="vocab_multiple"):
        tiny_cfg(vocab_multiple=0)


def test_an_architecture_field_has_no_default() -> None:
    # params.yaml's model section gives each one (steps/config.py validates it into these fields).
    with pytest.raises(TypeError, match="drop_rate"):
        GPTConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2)  # type: ignore[call-arg]


def test_config_json_without_new_fields_still_loads() -> None:
    old = dict(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.1, qkv_bias=False)
    cfg = GPTConfig.from_dict(old)
    assert cfg.tie_embeddings is False and cfg.vocab_multiple == 1 and cfg.padded_vocab_size == 64


@pytest.mark.parametrize("drop_rate", [0.0, 0.2])
def test_activation_checkpointing_gives_the_same_gradients(drop_rate: float) -> None:
    torch.manual_seed(0)
    model = GPTModel(tiny_cfg(drop_rate=drop_rate)).train()
    idx = torch.randint(0, 64, (2, 12))

    def grads(recompute: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        model.activation_checkpointing = recompute
        torch.manual_seed(1)  # the same dropout masks in both runs
        F.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, recomputed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], msg=name)
