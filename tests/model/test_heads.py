"""Tests for task heads and the choice of trainable parameters (model/heads.py)."""

from __future__ import annotations

import pytest
import torch

from model.gpt import GPTModel
from model.heads import attach_classifier_head, last_real_token, pool, set_trainable
from tests.params import gpt_config

CFG = gpt_config(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=3, drop_rate=0.0)


@pytest.fixture
def model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(CFG).eval()


def trainable_names(model: GPTModel) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def all_names(model: GPTModel, prefix: str) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(prefix)}


def test_attach_classifier_head_changes_output_dim(model: GPTModel) -> None:
    body_before = model.trf_blocks[0].att.W_query.weight.clone()
    out = attach_classifier_head(model, 2)
    assert out is model
    assert model.out_head.in_features == 32 and model.out_head.out_features == 2
    assert model.out_head.bias is not None and torch.count_nonzero(model.out_head.bias) == 0
    assert abs(model.out_head.weight.std().item() - 0.02) < 0.01
    ids = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(1))
    assert model(ids).shape == (3, 7, 2)
    assert torch.equal(model.trf_blocks[0].att.W_query.weight, body_before)  # body untouched
    attach_classifier_head(model, 5)
    assert model(ids).shape == (3, 7, 5)


@pytest.mark.parametrize("n", [1, 0, -3])
def test_attach_classifier_head_rejects_fewer_than_two_classes(model: GPTModel, n: int) -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        attach_classifier_head(model, n)
    assert model.out_head.out_features == 64  # unchanged


def test_set_trainable_head(model: GPTModel) -> None:
    attach_classifier_head(model, 2)
    set_trainable(model, "head")
    assert trainable_names(model) == {"out_head.weight", "out_head.bias"}


def test_set_trainable_lora_unfreezes_only_head(model: GPTModel) -> None:
    set_trainable(model, "lora")
    assert trainable_names(model) == {"out_head.weight"}


def test_set_trainable_last_block(model: GPTModel) -> None:
    attach_classifier_head(model, 2)
    set_trainable(model, "last_block")
    expected = all_names(model, "trf_blocks.2.") | all_names(model, "final_norm.") | {"out_head.weight", "out_head.bias"}
    assert len(all_names(model, "trf_blocks.2.")) == 13  # q, k, v, out_proj (w, b), ff 2 x (w, b), 2 norms x (w, b)
    assert trainable_names(model) == expected
    assert not any(n.startswith(("trf_blocks.0.", "trf_blocks.1.", "tok_emb", "pos_emb")) for n in trainable_names(model))


def test_set_trainable_all_and_refreezing(model: GPTModel) -> None:
    set_trainable(model, "all")
    assert trainable_names(model) == {n for n, _ in model.named_parameters()}
    # Switching back to a narrower mode freezes again (everything is frozen first).
    set_trainable(model, "head")
    assert trainable_names(model) == {"out_head.weight"}


def test_set_trainable_unknown_mode(model: GPTModel) -> None:
    with pytest.raises(ValueError, match="unknown trainable mode 'everything'"):
        set_trainable(model, "everything")  # type: ignore[arg-type]


def test_last_real_token_picks_lengths_minus_one() -> None:
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    picked = last_real_token(logits, torch.tensor([2, 4]))
    assert picked.shape == (2, 3)
    assert torch.equal(picked[0], logits[0, 1])
    assert torch.equal(picked[1], logits[1, 3])
    # A zero length is clamped to position 0 instead of wrapping around to the end.
    assert torch.equal(last_real_token(logits, torch.tensor([0, 1]))[0], logits[0, 0])


def test_classifier_output_is_pad_invariant(model: GPTModel) -> None:
    attach_classifier_head(model, 2)
    gen = torch.Generator().manual_seed(3)
    a = torch.randint(0, 64, (5,), generator=gen)
    b = torch.randint(0, 64, (9,), generator=gen)
    pad = 63
    batch = torch.full((2, 12), pad)
    batch[0, :5], batch[1, :9] = a, b
    lengths = torch.tensor([5, 9])
    with torch.no_grad():
        padded = last_real_token(model(batch), lengths)
        alone_a = model(a.unsqueeze(0))[0, -1]
        alone_b = model(b.unsqueeze(0))[0, -1]
        # Reading the last padded position instead would give something else.
        wrong = model(batch)[0, -1]
    torch.testing.assert_close(padded[0], alone_a, rtol=0, atol=1e-5)
    torch.testing.assert_close(padded[1], alone_b, rtol=0, atol=1e-5)
    assert (wrong - alone_a).abs().max() > 1e-4


# --- options added for the finetuning comparisons -------------------------------------------


def test_last_two_blocks_trains_the_two_last_blocks_norm_and_head() -> None:
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=50, context_length=8, emb_dim=16, n_heads=2, n_layers=3, drop_rate=0.0)
    model = attach_classifier_head(GPTModel(cfg), 2)
    set_trainable(model, "last_two_blocks")
    trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("trf_blocks") else "")
                 for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"trf_blocks.1", "trf_blocks.2", "final_norm", "out_head"}


def test_pooling_modes_on_hand_made_scores() -> None:
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # (B=2, T=4, K=3)
    lengths = torch.tensor([2, 4])
    assert torch.equal(pool(logits, lengths, "last"), logits[:, -1])
    assert torch.equal(pool(logits, lengths, "last_non_pad"), torch.stack([logits[0, 1], logits[1, 3]]))
    expected_mean = torch.stack([logits[0, :2].mean(0), logits[1].mean(0)])
    torch.testing.assert_close(pool(logits, lengths, "mean"), expected_mean)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(logits, lengths, "first")  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", ["last_non_pad", "mean"])
def test_padding_does_not_change_non_pad_poolings(pooling) -> None:
    torch.manual_seed(0)
    cfg = gpt_config(vocab_size=50, context_length=12, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0)
    model = attach_classifier_head(GPTModel(cfg), 2).eval()
    ids = torch.randint(0, 50, (1, 5))
    padded = torch.cat([ids, torch.full((1, 4), 7)], dim=1)
    alone = pool(model(ids), torch.tensor([5]), pooling)
    with_pad = pool(model(padded), torch.tensor([5]), pooling)
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=1e-5)
