"""Fitting L(N, D) to runs: known laws are recovered, the isoFLOP parabolas find the optimum."""

import numpy as np
import pytest

from steps.scaling.fit import FitError, Run, bootstrap, fit_law, isoflop_optima
from steps.scaling.laws import ParametricLaw

TRUE = ParametricLaw("known", E=2.0, A=300.0, B=900.0, alpha=0.35, beta=0.40)
BUDGETS = (1e13, 1e14, 1e15, 1e16)


def sweep(law: ParametricLaw, noise: float, seed: int = 1, sizes: int = 6) -> list[Run]:
    """Runs at each budget over sizes from a third to three times the law's optimum, their losses
    the law's times log-normal noise of `noise` (0.005: half a percent)."""
    rng = np.random.default_rng(seed)
    runs = []
    for flops in BUDGETS:
        centre = law.optimum(flops).params
        for n in np.geomspace(centre / 3, centre * 3, sizes):
            d = flops / (6 * n)
            runs.append(Run(n, d, law.loss(n, d) * float(np.exp(rng.normal(0.0, noise))), flops))
    return runs


def test_the_fit_recovers_a_known_law_from_noisy_runs():
    fitted = fit_law(sweep(TRUE, noise=0.005))
    # Tolerances: exponents within 0.03, E within 3 %, and the allocation at a budget inside the
    # sweep within 10 % (A and B trade off against the exponents, so they are looser: 25 %).
    assert fitted.alpha == pytest.approx(TRUE.alpha, abs=0.03)
    assert fitted.beta == pytest.approx(TRUE.beta, abs=0.03)
    assert fitted.E == pytest.approx(TRUE.E, rel=0.03)
    assert fitted.A == pytest.approx(TRUE.A, rel=0.25) and fitted.B == pytest.approx(TRUE.B, rel=0.25)
    assert fitted.optimum(3e14).params == pytest.approx(TRUE.optimum(3e14).params, rel=0.10)
    assert fitted.fitted_params[0] == pytest.approx(TRUE.optimum(1e13).params / 3)


def test_one_diverged_run_barely_moves_the_huber_fit():
    runs = sweep(TRUE, noise=0.0)
    clean = fit_law(runs)
    runs[5] = Run(runs[5].params, runs[5].tokens, runs[5].loss * 3, runs[5].flops)  # a spike
    spiked = fit_law(runs)
    assert spiked.alpha == pytest.approx(clean.alpha, abs=0.01)
    assert spiked.beta == pytest.approx(clean.beta, abs=0.01)


def test_bootstrap_intervals_hold_the_fit_and_widen_with_noise():
    quiet = bootstrap(sweep(TRUE, noise=0.002), samples=30, level=0.9)
    noisy = bootstrap(sweep(TRUE, noise=0.02), samples=30, level=0.9)
    assert quiet.runs == 24 and quiet.level == 0.9
    for fit in (quiet, noisy):
        assert fit.intervals["alpha"].low <= fit.law.alpha <= fit.intervals["alpha"].high
        assert fit.intervals["a"].low <= fit.law.exponents[0] <= fit.intervals["a"].high
    for name in ("alpha", "beta", "a"):
        quiet_width, noisy_width = (f.intervals[name].high - f.intervals[name].low for f in (quiet, noisy))
        assert noisy_width > 3 * quiet_width, name


def test_isoflop_parabolas_find_each_budgets_optimum():
    optima = isoflop_optima(sweep(TRUE, noise=0.0, sizes=7))
    assert [o.flops for o in optima] == list(BUDGETS)
    for o in optima:
        assert o.inside
        assert o.params == pytest.approx(TRUE.optimum(o.flops).params, rel=0.15)


def test_a_budget_with_fewer_than_three_sizes_has_no_parabola():
    runs = sweep(TRUE, noise=0.0)
    assert isoflop_optima([r for r in runs if r.flops == 1e13][:2]) == []


def test_too_few_runs_or_one_size_is_a_clear_error():
    runs = sweep(TRUE, noise=0.0)
    with pytest.raises(FitError, match="at least 5 runs"):
        fit_law(runs[:4])
    one_size = [Run(1e6, 1e8 * (i + 1), 3.0 - 0.1 * i, 6e14 * (i + 1)) for i in range(6)]
    with pytest.raises(FitError, match="same model size"):
        fit_law(one_size)


def test_a_sweep_that_misses_the_optimum_is_flagged_and_one_that_brackets_it_is_not():
    from steps.scaling.report import recommend

    runs = sweep(TRUE, noise=0.0, sizes=7)  # sizes from a third to three times each optimum
    fit = bootstrap(runs, samples=5)
    assert recommend(fit, runs, isoflop_optima(runs), 1e17).unbracketed is None
    # Only sizes above each budget's optimum: the best run is always the smallest one swept.
    above = [r for r in runs if r.params > TRUE.optimum(r.flops).params * 1.2]
    flagged = recommend(bootstrap(above, samples=2), above, isoflop_optima(above), 1e17).unbracketed
    assert flagged and "every budget's best run is at the edge of the sizes run" in flagged
