"""`gptpipe scaling plan`'s numbers: budgets, shapes and the steps that spend them."""

import json

import pytest

from model.presets import GPT2_VOCAB
from steps.scaling.plan import PlanError, format_plan, gpu_budget, make_plan, plan_for, plan_json
from steps.training.throughput import flops_per_token
from tests.params import shipped_params


def test_max_steps_spend_the_budget_at_the_projects_flops_per_token():
    params = shipped_params({"pretrain": {"batch_size": 8}})
    plan = plan_for(1e17, params)
    assert plan.tokens_per_step == 8 * params.pretrain_seq_len
    for row in plan.rows:
        spent = row.max_steps * plan.tokens_per_step * flops_per_token(row.config, plan.seq_len)
        assert spent == pytest.approx(1e17, rel=0.01)
        assert row.config.context_length == params.model.context_length  # kept from params.yaml
        assert row.config.vocab_size == params.tokenize.vocab_size


def test_gradient_accumulation_counts_in_tokens_per_step():
    params = shipped_params({"pretrain": {"batch_size": 4, "global_batch_tokens": 4 * 128 * 8}})
    assert plan_for(1e17, params).tokens_per_step == 4096


def test_the_gpt2_tokenizer_plans_with_gpt2s_vocabulary():
    params = shipped_params({"tokenize": {"kind": "gpt2", "vocab_size": 50257}})
    assert all(row.config.vocab_size == GPT2_VOCAB for row in plan_for(1e18, params).rows)


def test_gpu_hours_are_peak_times_mfu():
    assert gpu_budget(2.0, "H100", 0.5) == pytest.approx(2 * 3600 * 989e12 * 0.5)
    assert gpu_budget(1.0, "h100-pcie", 1.0) == pytest.approx(3600 * 756e12)


@pytest.mark.parametrize("call, message", [
    (lambda: gpu_budget(1.0, "tpu-v5", 0.4), "unknown GPU 'tpu-v5': known are h100pcie"),
    (lambda: gpu_budget(1.0, "h100", 1.5), "--mfu is a fraction"),
    (lambda: gpu_budget(0.0, "h100", 0.4), "--gpu-hours must be positive"),
    (lambda: plan_for(-1.0, shipped_params()), "positive number of FLOPs"),
])
def test_bad_budgets_say_what_to_give(call, message):
    with pytest.raises(PlanError, match=message):
        call()


def test_the_table_warns_when_a_law_is_stretched_beyond_its_fit():
    text = format_plan(plan_for(1e14, shipped_params()))
    assert "Chinchilla refit 2024: N_opt is" in text and "below the smallest model it was fitted on" in text
    big = format_plan(plan_for(1e21, shipped_params()))
    assert "Chinchilla refit 2024: N_opt is" not in big  # ~1.6 B parameters: inside 70 M..16 B
    assert "params.yaml's own pretraining: 4 x 128" in big


def test_json_holds_every_law_and_the_current_run():
    params = shipped_params()
    data = json.loads(json.dumps(plan_json(plan_for(1e18, params))))
    assert [law["law"] for law in data["laws"]] == ["Kaplan 2020", "Chinchilla 2022 (approach 3)",
                                                    "Chinchilla refit 2024"]
    assert data["current_run"]["max_steps"] == params.pretrain.max_steps
    assert all(law["shape"]["emb_dim"] == 64 * law["shape"]["n_layers"] for law in data["laws"])


def test_make_plan_rejects_nan():
    params = shipped_params()
    with pytest.raises(PlanError):
        make_plan(float("nan"), params.model.gpt_config(300), 128, 1024)
