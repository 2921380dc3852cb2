"""`gptpipe scaling ...`: plan a pretraining run by the published scaling laws (steps/scaling/)."""

from __future__ import annotations

import argparse
import json
import sys


def add_scaling_parser(sub) -> None:  # what ArgumentParser.add_subparsers() returned
    scaling = sub.add_parser("scaling", help="scaling laws: plan a run's model size and steps for a compute budget")
    actions = scaling.add_subparsers(dest="scaling_command", required=True)
    plan = actions.add_parser(
        "plan", help="the compute-optimal model size, tokens and max_steps for a budget, by Kaplan 2020, "
                     "Chinchilla 2022 and its 2024 refit",
        description="For a compute budget, where each published law puts the optimum (parameters N, tokens D, "
                    "tokens per parameter, predicted loss), the nearest model of this project's shape rule "
                    "(emb_dim = 64 x layers, 64-wide heads), the tokens the budget buys on it at this project's "
                    "FLOPs per token, the pretrain.max_steps that spend it, and the nearest preset. The model's "
                    "other fields, the vocabulary and the tokens per step come from params.yaml.")
    budget = plan.add_mutually_exclusive_group(required=True)
    budget.add_argument("--flops", type=float, help="compute budget in FLOPs, e.g. 1e18")
    budget.add_argument("--gpu-hours", type=float, help="compute budget in GPU hours (with --gpu and --mfu)")
    plan.add_argument("--gpu", default="h100", help="GPU of --gpu-hours (h100, h200, a100, l4, ...; default h100)")
    plan.add_argument("--mfu", type=float, default=0.4,
                      help="model FLOPs utilisation of --gpu-hours, a fraction of the bf16 peak (default 0.4)")
    plan.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")

    from steps.scaling.sweep import SweepSettings  # stdlib + model/ only: cheap at parser build time

    default = SweepSettings()
    sweep = actions.add_parser(
        "sweep", help="an isoFLOP sweep: several model sizes at each of a few budgets, each a pretraining run "
                      "recorded in MLflow; a rerun skips finished points",
        description="Pretrain, on the pipeline's token files (dvc repro tokenize first), the sweep's points: at "
                    "each budget the shape rule's model nearest 20 tokens per parameter and its neighbours in "
                    "depth, each for the steps that spend the budget (params.yaml's optimizer, batch and seed). "
                    "One Prefect flow; one MLflow run per point (stage scaling_sweep). docs/scaling.md gives the "
                    "defaults' time on 2 CPU cores, and GPU settings.")
    sweep.add_argument("--budgets", type=_floats, default=default.budgets,
                       help=f"compute budgets in FLOPs, comma-separated (default {_show(default.budgets)})")
    sweep.add_argument("--sizes", type=int, default=default.sizes,
                       help=f"model sizes per budget (default {default.sizes})")
    sweep.add_argument("--min-steps", type=int, default=default.min_steps,
                       help=f"leave out points with fewer optimizer steps (default {default.min_steps})")
    sweep.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    fit = actions.add_parser(
        "fit", help="fit L(N, D) = E + A/N^alpha + B/D^beta to the sweep's runs, with bootstrap intervals, "
                    "and recommend a size for a target budget",
        description="Fits the law to this sweep's finished runs (same tokens and params) as Hoffmann et al. 2022 "
                    "do, with bootstrap intervals and the isoFLOP-parabola optima; writes reports/scaling/fit.md, "
                    "fit.png and fit.json and an MLflow run (stage scaling_fit); prints the optimum for the "
                    "target budget next to the published laws' and how far that extrapolates.")
    fit.add_argument("--target-flops", type=float, default=None,
                     help="budget to recommend a size for (default: 100x the sweep's largest)")
    fit.add_argument("--samples", type=int, default=100, help="bootstrap resamples (default 100)")
    fit.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FLOPs separated by commas, e.g. 1e12,3e12,1e13; got {text!r}")
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"budgets must be positive FLOPs, got {text!r}")
    return values


def _show(budgets: tuple[float, ...]) -> str:
    return ",".join(f"{b:.0e}".replace("e+", "e") for b in budgets)


def scaling_command(args: argparse.Namespace) -> int:
    """`gptpipe scaling plan|sweep|fit`."""
    if args.scaling_command == "sweep":
        return sweep_command(args)
    if args.scaling_command == "fit":
        return fit_command(args)
    return plan_command(args)


def plan_command(args: argparse.Namespace) -> int:
    """`gptpipe scaling plan`; 2 on a bad budget, GPU name or params file."""
    from steps.config import ConfigError, load_params
    from steps.scaling.plan import PlanError, format_plan, gpu_budget, plan_for, plan_json

    try:
        flops = args.flops if args.flops is not None else gpu_budget(args.gpu_hours, args.gpu, args.mfu)
        plan = plan_for(flops, load_params(args.params))
    except (ConfigError, PlanError) as err:
        print(f"gptpipe scaling: {err}", file=sys.stderr)
        return 2
    print(json.dumps(plan_json(plan)) if args.json else format_plan(plan))
    return 0


def sweep_command(args: argparse.Namespace) -> int:
    """`gptpipe scaling sweep`: the Prefect flow of points (pipelines/scaling_sweep.py). Exit status
    as a stage's: 2 on an expected error (said once), 1 on a bug."""
    from pipelines.cli import use_prefect_server
    from steps.config import ConfigError, load_params

    try:
        load_params(args.params)  # a typo should not cost a Prefect server start-up
    except ConfigError as err:
        print(f"gptpipe scaling: {err}", file=sys.stderr)
        return 2
    if not use_prefect_server():
        return 1
    from pipelines.failures import StageLog
    from pipelines.scaling_sweep import scaling_sweep
    from steps.scaling.sweep import STAGE

    log = StageLog(STAGE)
    try:
        scaling_sweep(args.params, list(args.budgets), args.sizes, args.min_steps)
    except Exception as err:  # noqa: BLE001 - reported once, by kind (pipelines/failures.py)
        return log.failed(err)
    finally:
        log.close()
    return 0


def fit_command(args: argparse.Namespace) -> int:
    """`gptpipe scaling fit`: the law, the report and its MLflow run; 2 when the runs cannot be fitted."""
    from steps.config import ConfigError, load_params
    from steps.errors import is_expected

    try:
        outcome = fit_sweep(load_params(args.params), args.target_flops, args.samples)
    except Exception as err:  # noqa: BLE001 - an expected error is one line; a bug keeps its traceback
        if isinstance(err, ConfigError) or is_expected(err):
            print(f"gptpipe scaling: {err}", file=sys.stderr)
            return 2
        raise
    print(outcome)
    return 0


def fit_sweep(params, target_flops: float | None, samples: int) -> str:
    """Fit this sweep's finished runs (the sweep key of these params and token files), write the
    report, record it as an MLflow run (stage scaling_fit); what to print."""
    from steps import layout
    from steps.hashing import sha256_file
    from steps.scaling.fit import FitError, Run, bootstrap, isoflop_optima
    from steps.scaling.report import recommend, write_report
    from steps.scaling.sweep import POINT_TAG, STAGE, SWEEP_TAG, sweep_key
    from steps.tracking.runs import fetch_runs, stage_run

    if not (layout.TRAIN_BIN.exists() and layout.VAL_BIN.exists()):
        raise FitError(f"{layout.TOKENS}: no token files, so no sweep to fit: run `dvc repro tokenize`, then "
                       "`gptpipe scaling sweep`")
    key = sweep_key(params, [sha256_file(layout.TRAIN_BIN), sha256_file(layout.VAL_BIN)])
    latest = {}
    for run in fetch_runs(params.tracking.experiment, stage=STAGE, tags={SWEEP_TAG: key}):  # newest first
        latest.setdefault(run.tags[POINT_TAG], run)
    runs = [Run(r.metrics["params"], r.metrics["tokens"], r.metrics["val_loss"], r.metrics["budget_flops"])
            for r in latest.values()]
    if not runs:
        raise FitError(f"no finished run of sweep {key} (these params and token files) in experiment "
                       f"{params.tracking.experiment!r}: run `gptpipe scaling sweep` first")
    fit = bootstrap(runs, samples=samples)
    optima = isoflop_optima(runs)
    rec = recommend(fit, runs, optima, target_flops or 100 * max(r.flops for r in runs))
    paths = write_report(layout.REPORTS / "scaling", fit, runs, optima, rec)
    law = fit.law
    with stage_run("scaling_fit", params={"sweep": key, "runs": len(runs), "samples": samples,
                                          "target_flops": rec.flops},
                   params_hash=key, inputs=[layout.TRAIN_BIN, layout.VAL_BIN],
                   experiment=params.tracking.experiment, log_models=False) as run:
        run.log_metrics({"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
                         "a": law.exponents[0], "target_params": rec.ours.params, "target_tokens": rec.ours.tokens})
        for path in paths.values():
            run.log_artifact(path, "scaling")
    lo = fit.intervals
    return "\n".join([
        f"fitted to {len(runs)} runs of sweep {key}: L(N, D) = {law.E:.3g} + {law.A:.3g}/N^{law.alpha:.3g} + "
        f"{law.B:.3g}/D^{law.beta:.3g}",
        f"  N_opt ∝ C^{law.exponents[0]:.3f} ({round(fit.level * 100)} % interval {lo['a'].low:.3f} to {lo['a'].high:.3f}); "
        "Chinchilla 0.46, refit 0.51, Kaplan 0.73",
        f"  for {rec.flops:.3g} FLOPs: N_opt {rec.ours.params:,.0f}, D_opt {rec.ours.tokens:,.0f} "
        f"({rec.ours.tokens_per_param:.1f} tokens per parameter); published: "
        + "; ".join(f"{a.law} {a.params:,.0f}" for a in rec.published),
        f"  {rec.stretch:,.0f}x the sweep's largest budget" if rec.stretch > 1 else "  within the sweep's budgets",
        *([f"  warning: the sweep does not bracket the optimum ({rec.unbracketed}): this allocation is not a "
           "recommendation; see the report"] if rec.unbracketed else []),
        f"report: {paths['markdown']} (picture {paths['plot']})",
    ])
