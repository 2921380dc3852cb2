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


def scaling_command(args: argparse.Namespace) -> int:
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
