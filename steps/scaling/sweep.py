"""An isoFLOP sweep: at each of a few compute budgets, several model sizes, each pretrained on this
project's tokens for exactly the steps that spend the budget; the runs `fit.py` fits a law to.

Which sizes (the rule): at budget C, the shape rule's model (shapes.py: emb_dim = 64 x layers)
whose total parameters are nearest sqrt(C / 120), i.e. the size at which C buys 20 tokens per
parameter (Chinchilla's allocation), and its neighbours in depth, `sizes` in all (shifted up when
the smallest would have under one layer). Every run shares params.yaml's optimizer, batch,
windows and seed; the cosine schedule runs to each run's own last step, as Hoffmann et al. found
it must, after a warmup of params.yaml's warmup_steps capped at a tenth of the run (a 30-step
warmup would be a third of a 90-step point). A point that would train fewer than `min_steps` steps
is left out, with the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from model.config import GPTConfig
from steps.scaling.shapes import count_params, nearest_shape, shape
from steps.training.throughput import flops_per_token

STAGE = "scaling_sweep"
"""The stage tag of the sweep's MLflow runs."""
SWEEP_TAG, POINT_TAG = "sweep", "sweep_point"
"""MLflow tags: the sweep's key (`sweep_key`) and the point's (`SweepPoint.key`)."""
if TYPE_CHECKING:  # pydantic's import costs every `gptpipe` command ~0.4 s; the CLI builds its parser from here
    from steps.config import Params

TOKENS_PER_PARAM = 20.0
"""Where the rule centres each budget's sizes (Chinchilla's allocation)."""


@dataclass(frozen=True)
class SweepSettings:
    """What `gptpipe scaling sweep` varies. The defaults (13 runs) suit 2 CPU cores with the built-in
    corpus and the shipped params.yaml (docs/scaling.md gives the time measured, and GPU settings)."""

    budgets: tuple[float, ...] = (3e11, 1e12, 3e12)
    """Compute budgets in training FLOPs (this project's count, attention included)."""
    sizes: int = 5
    """Model sizes per budget."""
    min_steps: int = 10
    """Points with fewer optimizer steps are left out: too short for the schedule to mean anything."""


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep: a model shape trained for the steps that spend one budget."""

    flops: float
    """The budget the point belongs to."""
    n_layers: int
    emb_dim: int
    n_heads: int
    max_steps: int
    tokens: int
    """Training tokens: max_steps x tokens per step."""
    params: int
    """All parameters (Chinchilla's N)."""
    non_embedding_params: int
    """Kaplan's N."""
    flops_spent: float
    """max_steps x tokens per step x this project's FLOPs per token: the budget, to within a step."""

    @property
    def key(self) -> str:
        """Names the point within its sweep (an MLflow tag: a rerun skips a point it finds finished)."""
        return f"C{self.flops:.3g}-L{self.n_layers}"


def tokens_per_step(params: Params) -> int:
    return params.pretrain.global_batch_tokens or params.pretrain.batch_size * params.pretrain_seq_len


def plan_points(settings: SweepSettings, base: GPTConfig, seq_len: int, step_tokens: int) -> tuple[list[SweepPoint], list[str]]:
    """The sweep's points by the rule above, and a reason for each point left out."""
    if settings.sizes < 1 or not settings.budgets:
        raise ValueError("a sweep needs at least one budget and one size per budget")
    points, skipped = [], []
    for flops in sorted(settings.budgets):
        centre = nearest_shape(math.sqrt(flops / (6 * TOKENS_PER_PARAM)), "total", base).n_layers
        first = max(1, centre - (settings.sizes - 1) // 2)
        for depth in range(first, first + settings.sizes):
            cfg = shape(depth, base)
            per_token = flops_per_token(cfg, seq_len)
            steps = round(flops / (per_token * step_tokens))
            if steps < settings.min_steps:
                skipped.append(f"{depth} x {cfg.emb_dim} at {flops:.3g} FLOPs: {steps} steps (< min_steps "
                               f"{settings.min_steps}); raise the budget or lower pretrain.batch_size")
                continue
            points.append(SweepPoint(flops, depth, cfg.emb_dim, cfg.n_heads, steps, steps * step_tokens,
                                     count_params(cfg, "total"), count_params(cfg, "non-embedding"),
                                     steps * step_tokens * per_token))
    return points, skipped


def sweep_warmup(warmup_steps: int, max_steps: int) -> int:
    """params.yaml's warmup, capped at a tenth of the run (at least one step when it asks for any)."""
    return min(warmup_steps, max(1, max_steps // 10)) if warmup_steps else 0


def point_config(point: SweepPoint, base: GPTConfig) -> GPTConfig:
    return shape(point.n_layers, base)


def sweep_key(params: Params, token_hashes: list[str]) -> str:
    """What makes two sweeps' runs comparable: the tokens, the model's fixed fields, the optimizer and
    batch, and the seed. Budgets, sizes and min_steps are left out: a sweep widened later (another
    budget, more sizes) reuses the points it shares with the first."""
    pretrain = params.pretrain.model_dump(include={"batch_size", "lr", "min_lr_ratio", "warmup_steps",
                                                   "weight_decay", "grad_clip", "global_batch_tokens", "precision"})
    payload = {"seed": params.seed, "model": params.model.model_dump(exclude={"n_layers", "emb_dim", "n_heads"}),
               "pretrain": pretrain, "seq_len": params.pretrain_seq_len, "eval_batches": params.pretrain.eval_batches,
               "tokens": token_hashes}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def point_params(point: SweepPoint) -> dict[str, float | int]:
    """The point as MLflow params (what was trained)."""
    return {k: v for k, v in asdict(point).items() if k in ("flops", "n_layers", "emb_dim", "n_heads", "max_steps")}


def point_metrics(point: SweepPoint, val_loss: float) -> dict[str, float]:
    """The point's figures for MLflow: N (total and non-embedding), D, C (both counts) and the loss."""
    return {"params": point.params, "non_embedding_params": point.non_embedding_params, "tokens": point.tokens,
            "flops": point.flops_spent, "flops_6nd": 6.0 * point.params * point.tokens, "budget_flops": point.flops,
            "val_loss": val_loss}


def train_point(point: SweepPoint, params: Params, train_bin: Path, val_bin: Path, vocab_size: int,
                on_metrics=None) -> float:
    """Pretrain the point's model from scratch on the token files; its final validation loss."""
    import torch

    from model.checkpoint import new_model
    from steps.tasks.language_modeling import fixed_windows, lm_loss, mean_loss, random_windows
    from steps.tokenization.tokenizer import read_tokens
    from steps.training.hardware import autocast_dtype, resolve_device
    from steps.training.train import TrainSettings, train

    cfg = params.pretrain
    seq_len = params.pretrain_seq_len
    device = resolve_device(cfg.device)
    train_tokens, val_tokens = read_tokens(train_bin, vocab_size), read_tokens(val_bin, vocab_size)
    torch.manual_seed(params.seed)
    model = new_model(point_config(point, params.model.gpt_config(vocab_size)))
    val_batches = fixed_windows(val_tokens, cfg.batch_size, seq_len, cfg.eval_batches)
    final: dict[str, float] = {}

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        final["val_loss"] = mean_loss(m, val_batches, device)
        return dict(final)

    # Evaluations only at the start and the end: the sweep needs the final loss, not the curve.
    settings = dataclasses.replace(TrainSettings.from_config(cfg, point.max_steps), eval_interval=point.max_steps,
                                   warmup_steps=sweep_warmup(cfg.warmup_steps, point.max_steps),
                                   accum_steps=cfg.accumulation_steps(seq_len),
                                   flops_per_token=flops_per_token(model.cfg, seq_len))
    batches = functools.partial(random_windows, train_tokens, cfg.batch_size, seq_len, params.seed)
    train(model, batches, lm_loss, settings, device, autocast_dtype(device, cfg.precision), evaluate,
          on_metrics=on_metrics, desc=f"{point.key} ({point.max_steps} steps)")
    return final["val_loss"]
