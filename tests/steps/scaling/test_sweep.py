"""The sweep's points: the size rule, the steps that spend each budget, what a rerun shares."""

import math

import pytest

from steps.scaling.shapes import count_params, shape
from steps.scaling.sweep import SweepSettings, plan_points, sweep_key
from steps.training.throughput import flops_per_token
from tests.params import gpt_config, shipped_params

BASE = gpt_config(vocab_size=512, context_length=64, emb_dim=64, n_heads=1, n_layers=1)


def test_each_budget_gets_sizes_around_twenty_tokens_per_parameter():
    points, skipped = plan_points(SweepSettings(budgets=(1e14,), sizes=3, min_steps=1), BASE, 64, 1024)
    assert skipped == []
    depths = [p.n_layers for p in points]
    assert len(depths) == 3 and depths == list(range(depths[0], depths[0] + 3))
    middle = points[1]
    # The middle point is the shape nearest (in ratio) 20 tokens per parameter at this budget: N = sqrt(C / 120).
    others = [shape(d, BASE) for d in (middle.n_layers - 1, middle.n_layers + 1)]
    target = (1e14 / 120) ** 0.5
    assert all(abs(math.log(count_params(c, "total") / target)) >= abs(math.log(middle.params / target))
               for c in others)


def test_steps_spend_the_budget_and_points_carry_both_parameter_counts():
    points, _ = plan_points(SweepSettings(budgets=(1e12, 1e13), sizes=2, min_steps=1), BASE, 64, 512)
    for p in points:
        per_token = flops_per_token(shape(p.n_layers, BASE), 64)
        assert p.max_steps == round(p.flops / (per_token * 512))
        assert p.flops_spent == pytest.approx(p.flops, rel=0.05)
        assert p.tokens == p.max_steps * 512
        assert p.non_embedding_params < p.params
    assert [p.key for p in points][:1] == ["C1e+12-L1"]


def test_points_below_min_steps_are_left_out_with_the_reason():
    points, skipped = plan_points(SweepSettings(budgets=(1e9,), sizes=3, min_steps=10), BASE, 64, 512)
    assert len(points) + len(skipped) == 3
    assert skipped and "< min_steps 10" in skipped[-1] and "raise the budget" in skipped[-1]


def test_the_sweep_key_changes_with_tokens_and_optimizer_not_with_budgets():
    params = shipped_params()
    key = sweep_key(params, ["a", "b"])
    assert sweep_key(shipped_params({"pretrain": {"lr": 1.0e-3}}), ["a", "b"]) != key
    assert sweep_key(params, ["a", "c"]) != key
    assert sweep_key(shipped_params({"pretrain": {"max_steps": 7}}), ["a", "b"]) == key  # the sweep sets steps
    assert sweep_key(shipped_params({"model": {"n_layers": 9}}), ["a", "b"]) == key  # and the shape


def test_an_empty_sweep_is_refused():
    with pytest.raises(ValueError, match="at least one budget"):
        plan_points(SweepSettings(budgets=(), sizes=3), BASE, 64, 512)


def test_warmup_is_capped_at_a_tenth_of_a_points_run():
    from steps.scaling.sweep import sweep_warmup

    assert sweep_warmup(30, 1000) == 30
    assert sweep_warmup(30, 90) == 9
    assert sweep_warmup(30, 5) == 1
    assert sweep_warmup(0, 90) == 0


def test_the_default_sweep_has_twelve_points_or_more_on_the_shipped_params():
    params = shipped_params()
    points, skipped = plan_points(SweepSettings(), params.model.gpt_config(params.tokenize.vocab_size),
                                  params.pretrain_seq_len, params.pretrain.batch_size * params.pretrain_seq_len)
    assert len(points) >= 12 and len({p.flops for p in points}) >= 3, skipped
