"""`gptpipe scaling plan`: a compute budget -> the optimum by each published law, in this project's
terms: a model shape, the tokens it can see and the `max_steps` that spend the budget."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from model.config import GPTConfig
from model.presets import GPT2_VOCAB
from steps.config import Params
from steps.scaling.laws import PUBLISHED, Allocation, KaplanLaw, ParametricLaw
from steps.scaling.shapes import count_params, nearest_preset, nearest_shape
from steps.training.throughput import PEAK_FLOPS, flops_per_token


class PlanError(ValueError):
    """A budget or GPU the plan cannot use; the message says what to give instead."""


@dataclass(frozen=True)
class PlanRow:
    """One law's optimum and the run of this project that comes nearest it."""

    allocation: Allocation
    config: GPTConfig
    """The shape rule's model nearest N_opt (steps/scaling/shapes.py)."""
    config_params: int
    """That model's parameters, counted as the law counts them."""
    flops_per_token: float
    """This project's training FLOPs per token for that model, attention included."""
    tokens: float
    """Tokens the budget pays for on that model at `flops_per_token`."""
    max_steps: int
    """pretrain.max_steps that train on `tokens` at the plan's tokens per step."""
    preset: str
    preset_params: int


@dataclass(frozen=True)
class CurrentRun:
    """What params.yaml's own pretraining spends, for scale."""

    config: GPTConfig
    max_steps: int
    flops: float


@dataclass(frozen=True)
class Plan:
    flops: float
    seq_len: int
    tokens_per_step: int
    rows: list[PlanRow]
    current: CurrentRun | None = None


def gpu_budget(gpu_hours: float, gpu: str, mfu: float) -> float:
    """FLOPs of `gpu_hours` on a GPU named as in steps/training/throughput.py (h100, a100, l4, ...)
    at model FLOPs utilisation `mfu`, against its dense bf16 peak."""
    if gpu_hours <= 0:
        raise PlanError(f"--gpu-hours must be positive, got {gpu_hours}")
    if not 0.0 < mfu <= 1.0:
        raise PlanError(f"--mfu is a fraction of the peak in (0, 1] (0.4 is good for a large model), got {mfu}")
    return gpu_hours * 3600.0 * peak_flops(gpu) * mfu


def peak_flops(gpu: str) -> float:
    """Dense bf16 peak FLOP/s of a GPU name, matched without case, spaces or dashes."""
    def key(name: str) -> str:
        return name.lower().replace(" ", "").replace("-", "")

    for name, flops in PEAK_FLOPS.items():
        if key(name) == key(gpu):
            return flops
    known = ", ".join(key(n) for n in PEAK_FLOPS)
    raise PlanError(f"unknown GPU {gpu!r}: known are {known}; or give the budget as --flops")


def make_plan(flops: float, base: GPTConfig, seq_len: int, tokens_per_step: int) -> Plan:
    """Each published law's optimum for `flops`, and the nearest model of the shape rule with `base`'s
    other fields, trained on windows of `seq_len` at `tokens_per_step`."""
    if not math.isfinite(flops) or flops <= 0:
        raise PlanError(f"the compute budget must be a positive number of FLOPs, got {flops}")
    rows = [_row(law, flops, base, seq_len, tokens_per_step) for law in PUBLISHED]
    return Plan(flops, seq_len, tokens_per_step, rows)


def plan_for(flops: float, params: Params) -> Plan:
    """`make_plan` with params.yaml's model, tokenizer and pretraining batch."""
    vocab = GPT2_VOCAB if params.tokenize.kind == "gpt2" else params.tokenize.vocab_size
    seq_len = params.pretrain_seq_len
    tokens_per_step = params.pretrain.global_batch_tokens or params.pretrain.batch_size * seq_len
    cfg = params.model.gpt_config(vocab)
    plan = make_plan(flops, cfg, seq_len, tokens_per_step)
    steps = params.pretrain.max_steps
    if steps is None:  # pretrain.epochs: the step count depends on the token files, not known here
        return plan
    current = CurrentRun(cfg, steps, flops_per_token(cfg, seq_len) * steps * tokens_per_step)
    return dataclasses.replace(plan, current=current)


def _row(law: KaplanLaw | ParametricLaw, flops: float, base: GPTConfig, seq_len: int,
         tokens_per_step: int) -> PlanRow:
    opt = law.optimum(flops)
    cfg = nearest_shape(opt.params, opt.params_kind, base)
    per_token = flops_per_token(cfg, seq_len)
    tokens = flops / per_token
    preset, preset_params = nearest_preset(opt.params, opt.params_kind, base.vocab_size)
    return PlanRow(opt, cfg, count_params(cfg, opt.params_kind), per_token, tokens,
                   max(1, round(tokens / tokens_per_step)), preset, preset_params)


def format_plan(plan: Plan) -> str:
    """The plan as a table a person reads, with what each column means."""
    lines = [f"Compute budget {plan.flops:.3g} FLOPs; pretraining windows of {plan.seq_len} tokens, "
             f"{plan.tokens_per_step:,} tokens per step (params.yaml)", ""]
    head = ("law", "N_opt", "D_opt", "D/N", "loss", "shape (layers x width, heads)", "its N", "D here",
            "max_steps", "nearest preset")
    table = [head]
    for r in plan.rows:
        a, c = r.allocation, r.config
        table.append((a.law, f"{_si(a.params)} ({'non-emb' if a.params_kind == 'non-embedding' else 'total'})",
                      _si(a.tokens), f"{a.tokens_per_param:.1f}", f"{a.loss:.2f}",
                      f"{c.n_layers} x {c.emb_dim}, {c.n_heads}", _si(r.config_params), _si(r.tokens),
                      f"{r.max_steps:,}", f"{r.preset} ({_si(r.preset_params)})"))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for r in plan.rows:
        stretch = r.allocation.extrapolation
        if stretch > 1.0:
            low, high = r.allocation.fitted_params
            side = "below the smallest" if r.allocation.params < low else "above the largest"
            lines.append(f"note: {r.allocation.law}: N_opt is {stretch:,.0f}x {side} model it was fitted on "
                         f"({_si(low)} to {_si(high)}): an extrapolation")
    if plan.current is not None:
        c = plan.current
        lines.append(f"params.yaml's own pretraining: {c.config.n_layers} x {c.config.emb_dim}, "
                     f"{_si(count_params(c.config, 'total'))} parameters, {c.max_steps:,} steps = {c.flops:.3g} FLOPs")
    lines += ["",
              "N_opt, D_opt: the law's optimum with C = 6 N D (N as the law counts it); D/N: tokens per parameter;",
              "loss: the law's prediction in its own paper's nats/token (not comparable to this corpus);",
              "shape: the nearest model with emb_dim = 64 x layers and 64-wide heads; its N: counted as the law counts;",
              "D here: tokens the budget buys on that shape at this project's FLOPs per token (attention included);",
              "max_steps: pretrain.max_steps that spend the budget at the tokens per step above."]
    return "\n".join(lines)


def plan_json(plan: Plan) -> dict:
    """The plan as plain data (`--json`)."""
    current = plan.current
    return {"flops": plan.flops, "seq_len": plan.seq_len, "tokens_per_step": plan.tokens_per_step,
            "current_run": None if current is None else {
                "n_layers": current.config.n_layers, "emb_dim": current.config.emb_dim,
                "params": count_params(current.config, "total"), "max_steps": current.max_steps,
                "flops": current.flops},
            "laws": [{**asdict(r.allocation), "tokens_per_param": r.allocation.tokens_per_param,
                      "extrapolation": r.allocation.extrapolation,
                      "shape": {"n_layers": r.config.n_layers, "emb_dim": r.config.emb_dim,
                                "n_heads": r.config.n_heads},
                      "shape_params": r.config_params, "flops_per_token": r.flops_per_token,
                      "shape_tokens": r.tokens, "max_steps": r.max_steps,
                      "preset": r.preset, "preset_params": r.preset_params} for r in plan.rows]}


def _si(x: float) -> str:
    """1.2M, 3.4B, 5.6T."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"
