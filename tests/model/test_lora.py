"""Tests for the LoRA glue (model/lora.py) on the project's GPT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel

from model.gpt import GPTModel, count_parameters
from model.heads import attach_classifier_head, last_real_token, set_trainable
from model.lora import apply_lora, merge_lora
from tests.params import gpt_config

CFG = gpt_config(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)
RANK = 4
TARGETS = ("W_query", "W_value", "out_proj")


def classifier(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    model = attach_classifier_head(GPTModel(CFG), 2)
    set_trainable(model, "lora")
    return model.eval()


def ids() -> torch.Tensor:
    return torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(1))


def train_steps(model: torch.nn.Module, steps: int = 5) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = ids()
    labels = torch.tensor([0, 1, 1, 0])
    lengths = torch.full((4,), 10)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(last_real_token(model(x), lengths), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def test_untrained_adapter_leaves_outputs_unchanged() -> None:
    model = classifier()
    x = ids()
    with torch.no_grad():
        before = model(x)
    wrapped = apply_lora(model, RANK, 8, TARGETS, modules_to_save=["out_head"])
    assert isinstance(wrapped, PeftModel)
    with torch.no_grad():
        after = wrapped(x)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-7)
    # The adapters exist where they were asked for, and B starts at zero.
    names = [n for n, _ in wrapped.named_parameters() if "lora_B" in n]
    assert len(names) == CFG.n_layers * len(TARGETS)
    assert all(torch.count_nonzero(p) == 0 for n, p in wrapped.named_parameters() if "lora_B" in n)


def test_training_changes_only_adapters_and_saved_modules() -> None:
    wrapped = apply_lora(classifier(), RANK, 8, TARGETS, modules_to_save=["out_head"])
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    train_steps(wrapped)
    changed = {n for n, p in wrapped.named_parameters() if not torch.equal(p, before[n])}
    adapters = {n for n in before if "lora_A" in n or "lora_B" in n}
    saved_head = {n for n in before if "out_head.modules_to_save" in n}
    assert adapters and saved_head
    assert changed == adapters | saved_head
    base = set(before) - adapters - saved_head
    assert any("original_module" in n for n in base)  # the pretrained head copy stays frozen
    for n in base:
        assert torch.equal(dict(wrapped.named_parameters())[n], before[n]), n


def test_without_modules_to_save_only_adapters_train() -> None:
    wrapped = apply_lora(classifier(), RANK, 8, ["W_query"])
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_merge_matches_adapted_model() -> None:
    base = classifier()
    x = ids()
    with torch.no_grad():
        original = base(x).clone()
    wrapped = apply_lora(base, RANK, 16, TARGETS, modules_to_save=["out_head"])
    train_steps(wrapped)
    with torch.no_grad():
        adapted = wrapped(x)
    merged = merge_lora(wrapped)
    assert type(merged) is GPTModel
    assert not any("lora" in n or "modules_to_save" in n for n, _ in merged.named_parameters())
    assert sorted(merged.state_dict()) == sorted(classifier().state_dict())
    with torch.no_grad():
        out = merged(x)
    torch.testing.assert_close(out, adapted, rtol=0, atol=1e-5)
    assert (out - original).abs().max() > 1e-3  # the merged model carries the training


def test_merge_lora_passes_plain_models_through() -> None:
    model = classifier()
    assert merge_lora(model) is model


@pytest.mark.parametrize("with_head", [False, True])
def test_trainable_parameter_count(with_head: bool) -> None:
    model = classifier()
    total_before = count_parameters(model)
    wrapped = apply_lora(model, RANK, 8, TARGETS, modules_to_save=["out_head"] if with_head else [])
    c = CFG.emb_dim
    # Every target is a (C -> C) Linear: A is (r, C), B is (C, r).
    expected = CFG.n_layers * len(TARGETS) * RANK * (c + c)
    if with_head:
        expected += c * 2 + 2  # the classifier head, trained in full
    assert count_parameters(wrapped, trainable_only=True) == expected
    lora_only = CFG.n_layers * len(TARGETS) * RANK * 2 * c
    head_copy = (c * 2 + 2) if with_head else 0
    assert count_parameters(wrapped) == total_before + lora_only + head_copy


def test_count_for_feedforward_targets() -> None:
    # ff.layers.0 is C -> 4C and ff.layers.2 is 4C -> C: r * (in + out) each.
    wrapped = apply_lora(classifier(), 2, 4, ["layers.0", "layers.2"])
    c = CFG.emb_dim
    assert count_parameters(wrapped, trainable_only=True) == CFG.n_layers * 2 * 2 * (c + 4 * c)
