"""Fit L(N, D) = E + A / N^alpha + B / D^beta to your own runs, as Hoffmann et al. 2022 (appendix
D.2) fit theirs, with bootstrap intervals; and the isoFLOP-parabola estimate of N_opt per budget.

The fit works in logs: with a = log A, b = log B, e = log E it minimises, over the runs i,
    sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i )
(LSE = log-sum-exp), delta = 1e-3 as in the paper: nearly an L1 fit, so one diverged run does not
drag the law. The objective has many local minima, so the paper starts L-BFGS from a grid of
points; we evaluate the objective on the paper's grid (4,500 points), and start L-BFGS from the
best `starts` of them, which finds the same minimum at a small fraction of the cost.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp, softmax
from threadpoolctl import threadpool_limits

from steps.errors import ExpectedError
from steps.scaling.laws import ParametricLaw

HUBER_DELTA = 1e-3
# Hoffmann et al.'s grid of starting points for (alpha, beta, e, a, b).
GRID_ALPHA = GRID_BETA = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_E = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_A = GRID_B = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)


class FitError(ExpectedError):
    """Too few runs, or runs that cannot pin a law; the message says what to add."""


@dataclass(frozen=True)
class Run:
    """One finished pretraining run of a sweep."""

    params: float
    """N, all parameters (as Chinchilla counts them)."""
    tokens: float
    """D, training tokens seen."""
    loss: float
    """Final validation loss, nats per token."""
    flops: float
    """The budget the run belongs to (its isoFLOP curve)."""


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Fit:
    law: ParametricLaw
    intervals: dict[str, Interval]
    """Bootstrap percentile intervals of E, A, B, alpha, beta and of the exponent a (N_opt ∝ C^a)."""
    level: float
    """The intervals' coverage, e.g. 0.8 for the 10th to 90th percentile."""
    runs: int


def fit_law(runs: Sequence[Run], starts: int = 8, name: str = "your fit",
            fitted_params: tuple[float, float] | None = None, near: ParametricLaw | None = None) -> ParametricLaw:
    """The L(N, D) that best explains `runs` by the Huber-on-log-loss objective above, from the best
    `starts` grid points (and from `near`, a law fitted before, when given)."""
    if len(runs) < 5:
        raise FitError(f"fitting L(N, D) = E + A/N^alpha + B/D^beta takes at least 5 runs (5 parameters), got "
                       f"{len(runs)}: run a larger sweep (more budgets or sizes)")
    log_n, log_d, log_l = (np.log([getattr(r, f) for r in runs]) for f in ("params", "tokens", "loss"))
    if np.ptp(log_n) == 0 or np.ptp(log_d) == 0:
        raise FitError("every run has the same model size or the same token count: the law's two terms cannot "
                       "be told apart; sweep several sizes at each of several budgets")

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b, e, alpha, beta = theta
        terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, runs)
        r = logsumexp(terms, axis=0) - log_l
        weights = softmax(terms, axis=0)  # d LSE / d term
        slope = np.clip(r, -HUBER_DELTA, HUBER_DELTA)  # d Huber / d r
        grad = np.array([np.sum(slope * weights[0]), np.sum(slope * weights[1]), np.sum(slope * weights[2]),
                         -np.sum(slope * weights[0] * log_n), -np.sum(slope * weights[1] * log_d)])
        return float(np.sum(huber(HUBER_DELTA, r))), grad

    # One BLAS thread: L-BFGS-B's 5-variable steps are far too small to share, and idle BLAS threads
    # spinning between them made each fit 4x slower on a busy 2-core machine.
    with threadpool_limits(limits=1, user_api="blas"):
        best = min((minimize(objective, x0, jac=True, method="L-BFGS-B")
                    for x0 in _best_starts(log_n, log_d, log_l, starts) + _as_start(near)),
                   key=lambda result: result.fun)
    a, b, e, alpha, beta = best.x
    if alpha <= 0 or beta <= 0:
        raise FitError(f"the fit found no falling law (alpha {alpha:.3g}, beta {beta:.3g}): the runs' losses do "
                       "not fall with size or data; train each run longer or widen the budgets")
    span = fitted_params or (float(np.exp(log_n.min())), float(np.exp(log_n.max())))
    return ParametricLaw(name, E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=float(alpha), beta=float(beta),
                         fitted_params=span)


def _as_start(law: ParametricLaw | None) -> list[np.ndarray]:
    if law is None:
        return []
    return [np.array([math.log(law.A), math.log(law.B), math.log(law.E), law.alpha, law.beta])]


def _best_starts(log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, starts: int) -> list[np.ndarray]:
    """The `starts` points of Hoffmann et al.'s grid with the lowest objective (all evaluated at once)."""
    grid = np.array([(a, b, e, alpha, beta)
                     for alpha, beta, e, a, b in itertools.product(GRID_ALPHA, GRID_BETA, GRID_E, GRID_A, GRID_B)])
    a, b, e, alpha, beta = (grid[:, i:i + 1] for i in range(5))  # each (points, 1)
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(grid), len(log_n)))])
    values = huber(HUBER_DELTA, logsumexp(terms, axis=0) - log_l).sum(axis=1)  # (points,)
    return list(grid[np.argsort(values)[:starts]])


def bootstrap(runs: Sequence[Run], samples: int = 100, level: float = 0.8, seed: int = 0) -> Fit:
    """`fit_law` on all runs, with percentile intervals from refits on `samples` resamples (runs drawn
    with replacement; a resample that cannot be fitted is skipped and counted against `samples`).
    Each refit starts from the full fit and the best grid point: a resample moves the minimum a
    little, not to another basin the full fit's grid search would have missed."""
    law = fit_law(runs)
    rng = np.random.default_rng(seed)
    laws = []
    for _ in range(samples):
        pick = rng.integers(0, len(runs), len(runs))
        try:
            laws.append(fit_law([runs[i] for i in pick], starts=1, near=law))
        except FitError:
            continue
    if len(laws) < samples // 2:
        raise FitError(f"only {len(laws)} of {samples} bootstrap resamples could be fitted: add runs")
    tail = (1.0 - level) / 2 * 100
    values = {"E": [f.E for f in laws], "A": [f.A for f in laws], "B": [f.B for f in laws],
              "alpha": [f.alpha for f in laws], "beta": [f.beta for f in laws],
              "a": [f.exponents[0] for f in laws]}
    intervals = {key: Interval(*(float(v) for v in np.percentile(vals, [tail, 100 - tail])))
                 for key, vals in values.items()}
    return Fit(law, intervals, level, len(runs))


@dataclass(frozen=True)
class IsoFlopOptimum:
    flops: float
    params: float
    """N at the minimum of the parabola in log N."""
    loss: float
    inside: bool
    """Whether that minimum lies within the sizes the budget's runs covered."""


def isoflop_optima(runs: Sequence[Run]) -> list[IsoFlopOptimum]:
    """Per budget with at least 3 sizes, a parabola of loss in log N through its runs, and its
    minimum (Hoffmann et al.'s approach 2). A budget whose parabola opens downwards has no minimum
    and is left out."""
    optima = []
    for flops in sorted({r.flops for r in runs}):
        group = [r for r in runs if r.flops == flops]
        if len({r.params for r in group}) < 3:
            continue
        x = np.log([r.params for r in group])
        c2, c1, c0 = np.polyfit(x, [r.loss for r in group], 2)
        if c2 <= 0:
            continue
        x_min = -c1 / (2 * c2)
        optima.append(IsoFlopOptimum(flops, float(np.exp(x_min)), float(c0 - c1**2 / (4 * c2)),
                                     bool(x.min() <= x_min <= x.max())))
    return optima
