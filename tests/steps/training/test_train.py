"""Tests for the training loop, optimizer and schedule (steps/training/train.py)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from model.gpt import GPTModel
from steps.tasks.language_modeling import lm_loss, mean_loss
from steps.training.checkpoints import CheckpointSettings
from steps.training.train import (
    NonFiniteLossError,
    TrainResult,
    TrainSettings,
    cycle,
    lr_factor,
    make_optimizer,
    train,
)
from tests.params import gpt_config, shipped_params

CPU = torch.device("cpu")
CFG = gpt_config(vocab_size=64, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


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
    cfg = shipped_params({"pretrain": {"lr": 0.01, "min_lr_ratio": 0.2, "warmup_steps": 3, "weight_decay": 0.05,
                                       "decay": "all", "betas": [0.8, 0.99], "grad_clip": 0.5,
                                       "eval_interval": 7}}).pretrain
    s = TrainSettings.from_config(cfg, max_steps=42)
    assert s == TrainSettings(max_steps=42, lr=0.01, min_lr_ratio=0.2, warmup_steps=3, weight_decay=0.05,
                              decay="all", betas=(0.8, 0.99), grad_clip=0.5, eval_interval=7)


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


def test_make_optimizer_decay_all_and_betas_as_the_book() -> None:
    model = GPTModel(CFG)
    opt = make_optimizer(model, TrainSettings(max_steps=1, lr=3e-4, weight_decay=0.1, decay="all",
                                              betas=(0.9, 0.999)), CPU)
    (group,) = opt.param_groups  # every parameter decayed, as AdamW(model.parameters(), weight_decay=0.1)
    assert group["weight_decay"] == 0.1 and group["betas"] == (0.9, 0.999)
    assert len(group["params"]) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown decay 'some': use matrices or all"):
        make_optimizer(model, TrainSettings(max_steps=1, lr=3e-4, decay="some"), CPU)


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
    cfg = gpt_config(vocab_size=32, context_length=8, emb_dim=16, n_heads=2, n_layers=1, drop_rate=0.0)
    model = GPTModel(cfg)
    batch = (torch.randint(0, 32, (2, 8)), torch.randint(0, 32, (2, 8)))
    result = train(model, itertools.repeat(batch), lm_loss, TrainSettings(max_steps=3, lr=1e-3, eval_interval=10),
                   torch.device("cpu"))
    assert result.tokens == 3 * 16
    assert result.tokens_per_s == pytest.approx(result.tokens / result.seconds)
    assert result.peak_memory_mb > 10  # a Python process with torch loaded holds far more than 10 MiB


# --- gradient accumulation, fp16 scaler, recomputation, compile, MFU ---------------------------


def windows(n: int, size: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seq = torch.randint(0, 64, (n * size, 17), generator=torch.Generator().manual_seed(seed))
    return [(seq[i : i + size, :-1], seq[i : i + size, 1:]) for i in range(0, n * size, size)]


def test_accumulating_k_micro_batches_equals_one_batch_of_k_times_the_size() -> None:
    k, b, steps = 4, 2, 3
    micro = windows(k * steps, b)
    # Step s of the big-batch run reads the k micro-batches step s of the accumulating run reads.
    big = [tuple(torch.cat(parts) for parts in zip(*micro[i : i + k])) for i in range(0, k * steps, k)]
    settings = TrainSettings(max_steps=steps, lr=1e-2, warmup_steps=1, grad_clip=1.0)
    original_step = torch.optim.AdamW.step

    def run(batches, accum: int) -> tuple[GPTModel, TrainResult, list[list[torch.Tensor]]]:
        # Adam's update barely depends on the gradient's scale, so the gradients it is handed are
        # compared too: a missing 1/k would pass a weights-only check.
        grads: list[list[torch.Tensor]] = []

        def spy(self, *args, **kwargs):
            grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])
            return original_step(self, *args, **kwargs)

        torch.manual_seed(0)
        model = GPTModel(CFG)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.optim.AdamW, "step", spy)
            result = train(model, iter(batches), lm_loss, replace(settings, accum_steps=accum), CPU)
        return model, result, grads

    one, one_result, one_grads = run(big, 1)
    acc, acc_result, acc_grads = run(micro, k)
    assert len(acc_grads) == len(one_grads) == steps  # a step is one optimizer update either way
    for a, c in zip(one_grads[0], acc_grads[0]):  # from the same weights; later ones start apart by round-off
        torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-7)
    for (name, a), c in zip(one.state_dict().items(), acc.state_dict().values()):
        # Adam divides by sqrt(v): where a gradient is near zero, round-off moves that element's
        # update by a fraction of the step (lr 1e-2): up to 2.4e-4 measured on an AVX-512 Xeon,
        # whose kernels sum in another order than the AVX2 machine's (1e-4). A wrong accumulation
        # moves most elements by whole steps; the gradients above are the tight check.
        torch.testing.assert_close(c, a, rtol=1e-3, atol=1e-3, msg=name)
    assert acc_result.tokens == one_result.tokens == steps * k * b * 16
    assert acc_result.history[-1]["train_loss"] == pytest.approx(one_result.history[-1]["train_loss"], rel=1e-5)


def test_accumulating_stream_restarts_at_the_micro_batch_of_the_step() -> None:
    asked: list[int] = []

    def stream(start: int):
        asked.append(start)
        return itertools.cycle(windows(1, 2))

    torch.manual_seed(0)
    train(GPTModel(CFG), stream, lm_loss, TrainSettings(max_steps=2, lr=1e-3, accum_steps=3), CPU)
    assert asked == [0]  # a fresh run; a resume after s steps asks for s * 3 (see test_checkpoints)


def test_accum_steps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="accum_steps"):
        TrainSettings(max_steps=1, lr=1e-3, accum_steps=0)


def test_fp16_uses_a_gradient_scaler_whose_state_is_saved() -> None:
    torch.manual_seed(0)
    model = GPTModel(CFG)
    result = train(model, cycle([fixed_batch()]), lm_loss, TrainSettings(max_steps=3, lr=1e-3), CPU,
                   amp_dtype=torch.float16)
    assert result.scaler is not None and result.scaler.is_enabled()
    state = result.training_state()
    assert state["scaler"]["scale"] > 1.0  # fp16 losses are scaled up so small gradients survive
    assert math.isfinite(result.history[-1]["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    bf16 = train(GPTModel(CFG), cycle([fixed_batch()]), lm_loss, TrainSettings(max_steps=1, lr=1e-3), CPU,
                 amp_dtype=torch.bfloat16)
    assert "scaler" not in bf16.training_state()  # bf16 has fp32's range: no scaler


def test_activation_checkpointing_setting_trains_the_same_weights() -> None:
    def run(recompute: bool) -> GPTModel:
        torch.manual_seed(0)
        model = GPTModel(CFG)
        settings = TrainSettings(max_steps=3, lr=1e-2, activation_checkpointing=recompute)
        train(model, cycle([fixed_batch()]), lm_loss, settings, CPU)
        assert model.activation_checkpointing is recompute
        return model

    plain, recomputed = run(False), run(True)
    for (name, a), b in zip(plain.state_dict().items(), recomputed.state_dict().values()):
        torch.testing.assert_close(b, a, msg=name)


def test_activation_checkpointing_switches_on_in_a_llama_too() -> None:
    from model.llama import LlamaModel
    from tests.model.test_llama import llama_config

    model = LlamaModel(llama_config())
    batch = (torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    train(model, cycle([batch]), lm_loss, TrainSettings(max_steps=1, lr=1e-3, activation_checkpointing=True), CPU)
    assert model.activation_checkpointing


def test_activation_checkpointing_needs_a_gpt() -> None:
    settings = TrainSettings(max_steps=1, lr=1e-3, activation_checkpointing=True)
    with pytest.raises(ValueError, match="needs a GPT-2 or Llama model"):
        train(nn.Linear(2, 1), cycle([(torch.zeros(1),)]), lambda m, b: (m.weight.sum(), 1), settings, CPU)


def test_mfu_is_logged_with_a_peak_and_omitted_without() -> None:
    torch.manual_seed(0)
    settings = TrainSettings(max_steps=2, lr=1e-3, log_interval=1, flops_per_token=1e6, peak_flops=1e12)
    result = train(GPTModel(CFG), cycle([fixed_batch()]), lm_loss, settings, CPU)
    for row in result.history:
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * 1e6 / 1e12)
    plain = train(GPTModel(CFG), cycle([fixed_batch()]), lm_loss, replace(settings, peak_flops=None), CPU)
    assert all("mfu" not in row for row in plain.history)


def test_compile_where_unsupported_is_a_clear_error(monkeypatch) -> None:
    import steps.training.train as train_module

    monkeypatch.setattr(train_module, "compile_unsupported", lambda device: "no C++ compiler (test)")
    with pytest.raises(RuntimeError, match="compile: true cannot be used here: no C\\+\\+ compiler"):
        train(GPTModel(CFG), cycle([fixed_batch()]), lm_loss, TrainSettings(max_steps=1, lr=1e-3, compile=True), CPU)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_names(tmp_path) -> None:
    from safetensors.torch import load_file

    from model.checkpoint import WEIGHTS
    from steps.training.checkpoints import CheckpointSettings

    def run(compile_: bool, folder) -> GPTModel:
        torch.manual_seed(0)
        model = GPTModel(CFG)
        train(model, lambda start: cycle([fixed_batch()]), lm_loss,
              TrainSettings(max_steps=2, lr=1e-2, compile=compile_), CPU,
              checkpoints=CheckpointSettings(folder, interval=2))
        return model

    eager, compiled = run(False, tmp_path / "eager"), run(True, tmp_path / "compiled")
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    saved = load_file(str(tmp_path / "compiled" / "step-000002" / WEIGHTS))
    assert saved.keys() == set(eager.state_dict()) and not any("_orig_mod" in k for k in saved)


# --- non-finite losses stop the run -----------------------------------------------------------


def nan_from(bad_step: int):
    """lm_loss, except that micro-batch `bad_step` (1-based) and every later one return NaN, as a
    diverged model does."""
    calls = itertools.count(1)

    def loss_fn(m: nn.Module, batch):
        loss, n = lm_loss(m, batch)
        return (loss * float("nan") if next(calls) >= bad_step else loss), n

    return loss_fn


def test_a_nan_loss_stops_training_naming_the_step_and_the_learning_rate() -> None:
    # Issue 19: training went on to the end with `loss=nan` and the stage exited 0.
    torch.manual_seed(0)
    rows: list[dict[str, float]] = []
    settings = TrainSettings(max_steps=20, lr=3e-3, log_interval=5, eval_interval=10)
    with pytest.raises(NonFiniteLossError) as err:
        train(GPTModel(CFG), cycle([fixed_batch()]), nan_from(7), settings, CPU, desc="instruct",
              on_metrics=lambda metrics, step: rows.append(metrics))
    message = str(err.value)
    assert message.startswith("instruct: the training loss became nan at step 7; training stopped and nothing was saved")
    assert "(1) a learning rate too high for this model (lr 0.003: lower lr or raise warmup_steps" in message
    assert "every target ignore_index" in message
    assert "fp16" not in message  # not using fp16: not a cause
    assert all(math.isfinite(v) for row in rows for v in row.values())  # nothing non-finite was reported


def test_a_nan_loss_at_the_first_step_blames_the_data_not_the_learning_rate() -> None:
    with pytest.raises(NonFiniteLossError) as err:
        train(GPTModel(CFG), cycle([fixed_batch()]), nan_from(1), TrainSettings(max_steps=4, lr=1e-3, log_interval=2),
              CPU, amp_dtype=torch.float16)
    message = str(err.value)
    assert "the training loss became nan at step 1;" in message
    assert message.index("fp16 overflow (set the stage's precision to bf16 or fp32)") < message.index("ignore_index")
    assert "learning rate" not in message  # no update has happened yet


def test_a_non_finite_validation_metric_stops_training() -> None:
    # e.g. the mean loss of a validation set with nothing to score
    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"val_loss": float("nan")}

    with pytest.raises(NonFiniteLossError, match=r"^train: validation metric val_loss is nan at step 0; training stopped"):
        train(GPTModel(CFG), cycle([fixed_batch()]), lm_loss, TrainSettings(max_steps=2, lr=1e-3), CPU, evaluate=evaluate)


def test_no_checkpoint_holds_weights_a_nan_loss_spoiled(tmp_path) -> None:
    checkpoints = CheckpointSettings(tmp_path / "ckpt", interval=2, keep=5, fingerprint="nan")
    settings = TrainSettings(max_steps=10, lr=1e-3, log_interval=10, eval_interval=10)
    with pytest.raises(NonFiniteLossError, match="the training loss became nan at step 3;"):
        train(GPTModel(CFG), lambda n: itertools.islice(cycle([fixed_batch()]), n, None), nan_from(3), settings, CPU,
              checkpoints=checkpoints)
    saved = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert saved == ["step-000002"]  # the step-4 checkpoint, after the NaN, was never written


def test_a_loss_functions_own_metrics_are_reported_as_their_window_mean() -> None:
    """A loss function may return named per-step metrics beside the loss (DPO's reward margin): each
    logged row holds their mean over the micro-batches since the previous row, as train_<name>."""
    torch.manual_seed(0)
    counter = itertools.count(1)

    def loss_with_metrics(model: nn.Module, batch) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        loss, tokens = lm_loss(model, batch)
        return loss, tokens, {"calls": torch.tensor(float(next(counter)))}

    settings = TrainSettings(max_steps=4, lr=1e-3, eval_interval=4, log_interval=2)
    seen: list[dict[str, float]] = []
    result = train(GPTModel(CFG), itertools.repeat(fixed_batch()), loss_with_metrics, settings, CPU,
                   on_metrics=lambda row, step: seen.append(row))
    assert [row["train_calls"] for row in result.history] == [1.5, 3.5]  # steps 1-2, then 3-4
    assert seen[-1]["train_calls"] == 3.5
