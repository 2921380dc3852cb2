"""The published laws: closed-form optima, and what the papers report."""

import math

import numpy as np
import pytest

from steps.scaling.laws import CHINCHILLA, CHINCHILLA_REFIT, KAPLAN, PF_DAY, ParametricLaw


@pytest.mark.parametrize("law", [CHINCHILLA, CHINCHILLA_REFIT], ids=lambda law: law.name)
@pytest.mark.parametrize("flops", [1e15, 1e19, 5.76e23])
def test_the_closed_form_optimum_is_the_numeric_minimum_under_c_equals_6nd(law, flops):
    opt = law.optimum(flops)
    # A dense grid over N (D = C / 6N) around the optimum, then the grid's best point.
    n = np.exp(np.linspace(math.log(opt.params) - 3, math.log(opt.params) + 3, 200_001))
    loss = law.E + law.A / n**law.alpha + law.B / (flops / (6 * n)) ** law.beta
    best = n[np.argmin(loss)]
    assert best == pytest.approx(opt.params, rel=1e-3)
    assert 6 * opt.params * opt.tokens == pytest.approx(flops, rel=1e-9)
    assert opt.loss == pytest.approx(loss.min(), rel=1e-9)


def test_chinchillas_approach_3_exponents_are_the_papers_table_2():
    # Hoffmann et al. 2022, table 2, approach 3: N_opt ∝ C^0.46, D_opt ∝ C^0.54 (from the rounded fit).
    a, b = CHINCHILLA.exponents
    assert a == pytest.approx(0.46, abs=0.01) and b == pytest.approx(0.54, abs=0.01)
    assert a + b == pytest.approx(1.0)


def test_the_refit_puts_chinchillas_own_budget_at_chinchillas_size():
    # Chinchilla: 70 B parameters on 1.4 T tokens, 5.76e23 FLOPs (Gopher's budget), ~20 tokens per parameter.
    opt = CHINCHILLA_REFIT.optimum(5.76e23)
    assert opt.params == pytest.approx(70e9, rel=0.1)
    assert opt.tokens == pytest.approx(1.4e12, rel=0.1)
    assert 15 < opt.tokens_per_param < 25
    # The published approach-3 values put far more tokens on each parameter (what the refit corrected).
    assert CHINCHILLA.optimum(5.76e23).tokens_per_param > 60


def test_kaplans_frontier_is_1_3e9_parameters_per_pf_day_to_the_0_73():
    one = KAPLAN.optimum(PF_DAY)
    assert one.params == pytest.approx(1.3e9)
    assert one.params_kind == "non-embedding"
    # Ten times the compute, 10^0.73 = 5.4 times the parameters: data grows only 10^0.27 = 1.9 times.
    ten = KAPLAN.optimum(10 * PF_DAY)
    assert ten.params / one.params == pytest.approx(10**0.73)
    assert ten.tokens / one.tokens == pytest.approx(10**0.27)
    assert KAPLAN.optimum(3.1e8 * PF_DAY).loss == pytest.approx(1.0)


def test_kaplan_grows_models_faster_than_chinchilla():
    small, large = 1e18, 1e22
    kaplan = KAPLAN.optimum(large).params / KAPLAN.optimum(small).params
    chinchilla = CHINCHILLA_REFIT.optimum(large).params / CHINCHILLA_REFIT.optimum(small).params
    assert kaplan > 2 * chinchilla


def test_extrapolation_says_how_far_outside_the_fitted_range():
    law = ParametricLaw("test", E=1.0, A=1.0, B=1.0, alpha=0.5, beta=0.5, fitted_params=(1e6, 1e8))
    assert law.optimum(6e14).extrapolation == pytest.approx(1.0)  # N = D = 1e7: inside
    assert law.optimum(6e10).extrapolation == pytest.approx(10.0)  # N = 1e5: 10x below
    assert law.optimum(6e20).extrapolation == pytest.approx(100.0)  # N = 1e10: 100x above
