"""Tests for the training loop, optimizer and schedule (steps/train.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from model.config import GPTConfig
from model.gpt import GPTModel
from steps.language_modeling import lm_loss, mean_loss
from steps.train import TrainResult, TrainSettings, cycle, lr_factor, make_optimizer, train

CPU = torch.device("cpu")
CFG = GPTConfig(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    seq = torch.randint(0, 64, (1, 17), generator=torch.Generator().manual_seed(0)).repeat(4, 1)
    return seq[:, :-1], seq[:, 1:]


# --- schedule -----------------------------------------------------------------------------


def test_lr_factor_warmup_is_linear_and_reaches_one() -> None:
    s = TrainSettings(max_steps=100, lr=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    assert [lr_factor(i, s) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lr_factor(4, s) == pytest.approx(1.0)  # cosine starts at its top


def test_lr_factor_cosine_decay_to_min() -> None:
    s = TrainSettings(max_steps=20, lr=1e-3, warmup_steps=4, min_lr_ratio=0.1)
    assert lr_factor(12, s) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway
    assert lr_factor(8, s) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(20, s) == pytest.approx(0.1)
    assert lr_factor(500, s) == pytest.approx(0.1)  # stays at the floor after max_steps
    after_warmup = [lr_factor(i, s) for i in range(4, 21)]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:]))  # strictly decreasing


def test_lr_factor_without_warmup() -> None:
    s = TrainSettings(max_steps=10, lr=1e-3, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(0, s) == pytest.approx(1.0)
    assert lr_factor(5, s) == pytest.approx(0.5)
    assert lr_factor(10, s) == pytest.approx(0.0)


def test_lr_factor_warmup_as_long_as_training() -> None:
    s = TrainSettings(max_steps=5, lr=1e-3, warmup_steps=5, min_lr_ratio=0.2)
    assert [lr_factor(i, s) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert lr_factor(5, s) == pytest.approx(1.0)  # no division by zero


def test_settings_from_config() -> None:
    from steps.config import OptimConfig

    cfg = OptimConfig(lr=0.01, min_lr_ratio=0.2, warmup_steps=3, weight_decay=0.05, grad_clip=0.5, eval_interval=7)
    s = TrainSettings.from_config(cfg, max_steps=42)
    assert s == TrainSettings(max_steps=42, lr=0.01, min_lr_ratio=0.2, warmup_steps=3, weight_decay=0.05,
                              grad_clip=0.5, eval_interval=7)


# --- optimizer ------------------------------------------------------------------------------


def test_make_optimizer_decays_matrices_only() -> None:
    torch.manual_seed(0)
    model = GPTModel(CFG)
    s = TrainSettings(max_steps=1, lr=3e-4, weight_decay=0.05)
    opt = make_optimizer(model, s, CPU)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model.tok_emb.weight) in decay_ids
    assert id(model.out_head.weight) in decay_ids
    assert id(model.final_norm.weight) not in decay_ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["betas"] == (0.9, 0.95)


def test_weight_decay_applies_to_matrices_only_in_a_step() -> None:
    layer = nn.Linear(3, 2)
    nn.init.ones_(layer.weight)
    nn.init.ones_(layer.bias)
    s = TrainSettings(max_steps=1, lr=0.1, weight_decay=0.5)
    opt = make_optimizer(layer, s, CPU)
    (layer.weight.sum() * 0 + layer.bias.sum() * 0).backward()  # zero gradients: only decay acts
    opt.step()
    assert torch.allclose(layer.weight, torch.full((2, 3), 1 - 0.1 * 0.5))
    assert torch.equal(layer.bias, torch.ones(2))


def test_make_optimizer_skips_frozen_and_rejects_all_frozen() -> None:
    model = GPTModel(CFG)
    model.tok_emb.requires_grad_(False)
    opt = make_optimizer(model, TrainSettings(max_steps=1, lr=1e-3), CPU)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.tok_emb.weight) not in ids
    assert len(ids) == len(list(model.parameters())) - 1
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        make_optimizer(model, TrainSettings(max_steps=1, lr=1e-3), CPU)


# --- the loop -------------------------------------------------------------------------------


def test_cycle_repeats_batches() -> None:
    assert list(itertools.islice(cycle([1, 2, 3]), 7)) == [1, 2, 3, 1, 2, 3, 1]


@pytest.fixture(scope="module")
def trained() -> dict:
    torch.manual_seed(0)
    model = GPTModel(CFG)
    model.pos_emb.requires_grad_(False)  # a frozen part that must not move
    frozen_before = model.pos_emb.weight.detach().clone()
    batch = fixed_batch()
    calls: list[tuple[dict, int]] = []
    eval_states: list[tuple[bool, bool]] = []

    def evaluate(m: nn.Module) -> dict[str, float]:
        eval_states.append((m.training, torch.is_grad_enabled()))
        return {"val_loss": mean_loss(m, [batch], CPU)}

    settings = TrainSettings(max_steps=25, lr=1e-2, warmup_steps=3, eval_interval=10, log_interval=5,
                             min_lr_ratio=0.1)
    result = train(model, cycle([batch]), lm_loss, settings, CPU, evaluate=evaluate,
                   on_metrics=lambda metrics, step: calls.append((dict(metrics), step)))
    return dict(model=model, result=result, calls=calls, eval_states=eval_states, settings=settings,
                frozen_before=frozen_before)


def test_train_lowers_loss(trained: dict) -> None:
    history = trained["result"].history
    first, last = history[0]["val_loss"], history[-1]["val_loss"]
    assert abs(first - math.log(64)) < 0.2
    assert last < 0.25 * first
    assert history[-1]["train_loss"] < history[1]["train_loss"]


def test_train_evaluates_at_start_interval_and_end(trained: dict) -> None:
    calls = trained["calls"]
    assert [step for _, step in calls] == [0, 5, 10, 15, 20, 25]
    eval_steps = [step for metrics, step in calls if "val_loss" in metrics]
    assert eval_steps == [0, 10, 20, 25]
    assert calls[0][0].keys() == {"val_loss"}
    # evaluate ran in eval mode without autograd, and the model went back to training after it.
    assert trained["eval_states"] == [(False, False)] * 4


def test_train_history_rows(trained: dict) -> None:
    result: TrainResult = trained["result"]
    s: TrainSettings = trained["settings"]
    assert [row["step"] for row in result.history] == [0, 5, 10, 15, 20, 25]
    for row in result.history[1:]:
        assert {"step", "train_loss", "lr", "tokens_per_s"} <= row.keys()
        assert row["tokens_per_s"] > 0
        assert row["train_loss"] > 0
        assert row["lr"] == pytest.approx(s.lr * lr_factor(row["step"], s))
    assert result.history[-1]["lr"] == pytest.approx(s.lr * s.min_lr_ratio)
    assert result.history == [{"step": step, **metrics} for metrics, step in trained["calls"]]


def test_train_counts_and_state(trained: dict) -> None:
    result: TrainResult = trained["result"]
    assert result.steps == 25
    assert result.tokens == 25 * 4 * 16
    assert result.seconds > 0
    state = result.training_state()
    assert state["step"] == 25 and state["tokens"] == 25 * 4 * 16
    assert state["scheduler"]["last_epoch"] == 25
    assert state["optimizer"]["state"]  # Adam moments exist
    assert {"optimizer", "scheduler", "step"} <= state.keys()


def test_train_leaves_frozen_parameters_and_eval_mode(trained: dict) -> None:
    model: GPTModel = trained["model"]
    assert torch.equal(model.pos_emb.weight, trained["frozen_before"])
    assert not model.training


def test_training_state_requires_an_optimizer() -> None:
    with pytest.raises(AssertionError):
        TrainResult().training_state()


def test_train_without_evaluate_or_callback() -> None:
    torch.manual_seed(0)
    model = GPTModel(CFG)
    result = train(model, cycle([fixed_batch()]), lm_loss, TrainSettings(max_steps=3, lr=1e-3, log_interval=2),
                   CPU)
    assert [row["step"] for row in result.history] == [2, 3]
    assert all("val_loss" not in row for row in result.history)


def test_train_is_deterministic() -> None:
    def run() -> list[float]:
        torch.manual_seed(1)
        model = GPTModel(CFG)
        res = train(model, cycle([fixed_batch()]), lm_loss, TrainSettings(max_steps=4, lr=1e-2, log_interval=1),
                    CPU)
        return [row["train_loss"] for row in res.history]

    assert run() == run()


def test_grad_clip_bounds_the_update() -> None:
    # Adam's update hardly depends on the gradient's scale, so check the norm the optimizer sees.
    torch.manual_seed(0)
    model = GPTModel(CFG)
    seen: list[float] = []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
        return original_step(self, *args, **kwargs)

    def big_loss(m: nn.Module, batch):
        loss, n = lm_loss(m, batch)
        return loss * 1000.0, n

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy)
        train(model, cycle([fixed_batch()]), big_loss, TrainSettings(max_steps=2, lr=1e-3, grad_clip=0.5), CPU)
    assert len(seen) == 2
    assert all(norm <= 0.5 + 1e-4 for norm in seen)


def test_bf16_autocast_runs_on_cpu() -> None:
    torch.manual_seed(0)
    model = GPTModel(CFG)
    dtypes: list[torch.dtype] = []

    def loss_fn(m: nn.Module, batch):
        logits = m(batch[0])
        dtypes.append(logits.dtype)
        return lm_loss(m, batch)

    result = train(model, cycle([fixed_batch()]), loss_fn, TrainSettings(max_steps=2, lr=1e-3), CPU,
                   amp_dtype=torch.bfloat16)
    assert dtypes[0] == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert math.isfinite(result.history[-1]["train_loss"])


def test_gradients_do_not_accumulate_across_steps() -> None:
    layer = nn.Linear(2, 1)
    grads: list[torch.Tensor] = []
    original_step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        grads.append(layer.weight.grad.detach().clone())
        return original_step(self, *args, **kwargs)

    def loss_fn(m: nn.Module, batch):
        return m.weight.sum() * 3.0, 1  # the same gradient (3, 3) at every step

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", spy)
        train(layer, cycle([(torch.zeros(1),)]), loss_fn, TrainSettings(max_steps=3, lr=1e-3, grad_clip=0.0), CPU)
    assert [g.tolist() for g in grads] == [[[3.0, 3.0]]] * 3


def test_result_reports_cost_figures() -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=32, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
    model = GPTModel(cfg)
    batch = (torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8)))
    result = train(model, itertools.repeat(batch), lm_loss, TrainSettings(max_steps=3, lr=1e-3, eval_interval=10),
                   torch.device("cpu"))
    assert result.tokens == 3 * 16
    assert result.tokens_per_s == pytest.approx(result.tokens / result.seconds)
    assert result.peak_memory_mb > 10  # a Python process with torch loaded holds far more than 10 MiB
