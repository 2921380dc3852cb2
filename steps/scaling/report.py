"""The fit's report: a markdown page, a picture and the figures as JSON (reports/scaling/)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.atomic import atomic_path, write_json, write_text
from steps.evaluation.plots import pyplot
from steps.scaling.fit import Fit, IsoFlopOptimum, Run
from steps.scaling.laws import CHINCHILLA, CHINCHILLA_REFIT, KAPLAN, Allocation


@dataclass(frozen=True)
class Recommendation:
    """Where each law puts a target budget, and how far beyond the sweep that reaches."""

    flops: float
    ours: Allocation
    published: list[Allocation]
    stretch: float
    """target / the sweep's largest budget: 1 is inside the sweep; 100 is two decades of extrapolation."""
    unbracketed: str | None = None
    """Why the sweep does not bracket the optimum (so the fit's allocation is not to be trusted), or None."""


def recommend(fit: Fit, runs: Sequence[Run], optima: Sequence[IsoFlopOptimum],
              target_flops: float) -> Recommendation:
    largest = max(r.flops for r in runs)
    return Recommendation(target_flops, fit.law.optimum(target_flops),
                          [law.optimum(target_flops) for law in (KAPLAN, CHINCHILLA, CHINCHILLA_REFIT)],
                          target_flops / largest, unbracketed(fit, runs, optima))


def unbracketed(fit: Fit, runs: Sequence[Run], optima: Sequence[IsoFlopOptimum]) -> str | None:
    """Why the sweep cannot pin the optimum, or None: every budget's best run is its smallest (or
    largest) size, an isoFLOP minimum lies outside the sizes run, or the fit puts the largest
    budget's optimum outside the sizes swept. The fit then extrapolates its N term from one side."""
    smallest, biggest = min(r.params for r in runs), max(r.params for r in runs)
    reasons = []
    budgets = sorted({r.flops for r in runs})
    groups = [[r for r in runs if r.flops == f] for f in budgets]
    edge = [g for g in groups if min(g, key=lambda r: r.loss).params in (min(r.params for r in g),
                                                                          max(r.params for r in g))]
    if len(edge) == len(groups):
        reasons.append("every budget's best run is at the edge of the sizes run")
    missed = [o for o in optima if not o.inside]
    if missed:
        reasons.append(f"{len(missed)} of {len(optima)} isoFLOP minima fall outside the sizes run")
    at_largest = fit.law.optimum(budgets[-1]).params
    if not smallest <= at_largest <= biggest:
        reasons.append(f"the fit's optimum at the largest budget ({at_largest:,.0f} parameters) lies outside "
                       f"the sizes swept ({smallest:,.0f} to {biggest:,.0f})")
    return "; ".join(reasons) or None


def write_report(folder: Path, fit: Fit, runs: Sequence[Run], optima: Sequence[IsoFlopOptimum],
                 rec: Recommendation) -> dict[str, Path]:
    """fit.md, fit.png and fit.json in `folder`; the paths by name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": folder / "fit.md", "plot": folder / "fit.png", "json": folder / "fit.json"}
    plot(paths["plot"], fit, runs, optima)
    write_text(paths["markdown"], markdown(fit, runs, optima, rec, paths["plot"].name))
    write_json(paths["json"], figures(fit, runs, optima, rec))
    return paths


def figures(fit: Fit, runs: Sequence[Run], optima: Sequence[IsoFlopOptimum], rec: Recommendation) -> dict:
    law = fit.law
    return {
        "law": {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta, "a": law.exponents[0],
                "b": law.exponents[1]},
        "intervals": {k: [v.low, v.high] for k, v in fit.intervals.items()}, "level": fit.level,
        "runs": [{"params": r.params, "tokens": r.tokens, "loss": r.loss, "flops": r.flops} for r in runs],
        "isoflop_optima": [{"flops": o.flops, "params": o.params, "loss": o.loss, "inside": o.inside} for o in optima],
        "target": {"flops": rec.flops, "stretch": rec.stretch, "unbracketed": rec.unbracketed,
                   "laws": [{"law": a.law, "params": a.params, "tokens": a.tokens, "tokens_per_param": a.tokens_per_param}
                            for a in (rec.ours, *rec.published)]},
    }


def markdown(fit: Fit, runs: Sequence[Run], optima: Sequence[IsoFlopOptimum], rec: Recommendation, picture: str) -> str:
    law, iv, pct = fit.law, fit.intervals, round(fit.level * 100)
    a, b = law.exponents

    def ci(key: str, value: float, fmt: str = ".3g") -> str:
        return f"{value:{fmt}} ({iv[key].low:{fmt}} to {iv[key].high:{fmt}})"

    lines = [
        "# Your scaling law",
        "",
        f"Fitted to {fit.runs} pretraining runs over {len({r.flops for r in runs})} compute budgets "
        f"({min(r.flops for r in runs):.3g} to {max(r.flops for r in runs):.3g} FLOPs) by the method of Hoffmann "
        f"et al. 2022 (Huber loss on log-loss, L-BFGS); {pct} % bootstrap intervals in brackets.",
        "",
        "L(N, D) = E + A / N^alpha + B / D^beta, N all parameters, D training tokens:",
        "",
        "| | ours | Chinchilla 2022 | refit 2024 |",
        "|---|---|---|---|",
        f"| E | {ci('E', law.E)} | {CHINCHILLA.E} | {CHINCHILLA_REFIT.E} |",
        f"| A | {ci('A', law.A)} | {CHINCHILLA.A} | {CHINCHILLA_REFIT.A} |",
        f"| B | {ci('B', law.B)} | {CHINCHILLA.B} | {CHINCHILLA_REFIT.B} |",
        f"| alpha | {ci('alpha', law.alpha)} | {CHINCHILLA.alpha} | {CHINCHILLA_REFIT.alpha} |",
        f"| beta | {ci('beta', law.beta)} | {CHINCHILLA.beta} | {CHINCHILLA_REFIT.beta} |",
        f"| a (N_opt ∝ C^a) | {ci('a', a)} | {CHINCHILLA.exponents[0]:.3g} | {CHINCHILLA_REFIT.exponents[0]:.3g} |",
        "",
        "## The isoFLOP parabolas (approach 2)",
        "",
        "| budget (FLOPs) | N_opt | loss there | inside the sizes run |",
        "|---|---|---|---|",
    ]
    lines += [f"| {o.flops:.3g} | {o.params:,.0f} | {o.loss:.3f} | {'yes' if o.inside else 'no: the sweep missed it'} |"
              for o in optima] or ["| (no budget had three sizes with a minimum) | | | |"]
    lines += [
        "",
        f"## For {rec.flops:.3g} FLOPs",
        "",
        "| law | N_opt | D_opt | tokens per parameter |",
        "|---|---|---|---|",
    ]
    lines += [f"| {x.law} | {x.params:,.0f} | {x.tokens:,.0f} | {x.tokens_per_param:.1f} |"
              for x in (rec.ours, *rec.published)]
    lines += [
        "",
        _stretch_sentence(rec),
        *([f"**The sweep does not bracket the optimum** ({rec.unbracketed}): the fitted allocation is an "
           "extrapolation of one side of the curve and not a recommendation. Sweep smaller models (a smaller "
           "vocabulary or width) or larger budgets until each budget's best size has a worse one on both sides.",
           ""] if rec.unbracketed else []),
        "Kaplan's N leaves out the embeddings; the others count every parameter. The published laws were fitted to "
        "far larger models and other corpora: they say how to split compute, not what loss this corpus reaches.",
        "",
        f"![isoFLOP curves and loss against compute]({picture})",
        "",
    ]
    return "\n".join(lines)


def _stretch_sentence(rec: Recommendation) -> str:
    if rec.stretch <= 1.0:
        return "The target lies within the sweep's budgets: the fit interpolates."
    return (f"The target is {rec.stretch:,.0f}x the sweep's largest budget ({np.log10(rec.stretch):.1f} decades of "
            f"extrapolation): trust the allocation's exponent more than its constant, and sweep larger budgets "
            f"before spending this one.")


def plot(path: Path, fit: Fit, runs: Sequence[Run], optima: Sequence[IsoFlopOptimum]) -> None:
    """Left: loss against N per budget with the fitted law's isoFLOP curve and its frontier. Right:
    each budget's best loss against compute, with the fitted law's optimum and the published ones'."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    budgets = sorted({r.flops for r in runs})
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, len(budgets)))
    for flops, colour in zip(budgets, colours):
        group = sorted((r for r in runs if r.flops == flops), key=lambda r: r.params)
        left.scatter([r.params for r in group], [r.loss for r in group], color=colour, label=f"{flops:.2g} FLOPs")
        n = np.geomspace(group[0].params / 1.5, group[-1].params * 1.5, 100)
        left.plot(n, [fit.law.loss(x, flops / (6 * x)) for x in n], color=colour, linewidth=1)
    if optima:
        left.plot([o.params for o in optima], [o.loss for o in optima], "k--", marker="x", label="parabola minima")
    left.set(xscale="log", xlabel="parameters N", ylabel="validation loss (nats/token)", title="isoFLOP curves")
    left.legend(fontsize=8)

    best = [min((r for r in runs if r.flops == f), key=lambda r: r.loss) for f in budgets]
    right.scatter([b.flops for b in best], [b.loss for b in best], color="k", label="best run per budget")
    c = np.geomspace(budgets[0] / 3, budgets[-1] * 30, 100)
    right.plot(c, [fit.law.optimum(x).loss for x in c], label="fitted law, optimal N and D")
    for law, style in ((CHINCHILLA, ":"), (CHINCHILLA_REFIT, "-.")):
        right.plot(c, [law.optimum(x).loss for x in c], style, label=f"{law.name} (its own corpus)")
    right.plot(c, [KAPLAN.optimum(x).loss for x in c], "--", label=f"{KAPLAN.name} (its own corpus)")
    right.set(xscale="log", xlabel="compute C (FLOPs)", ylabel="loss (nats/token)", title="loss against compute")
    right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
