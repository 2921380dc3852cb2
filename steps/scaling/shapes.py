"""Model shapes for a parameter budget, by one documented rule, and the two ways laws count
parameters.

The rule: width grows with depth at a fixed aspect ratio, emb_dim = 64 * n_layers, with 64-wide
attention heads (n_heads = n_layers). GPT-2 small (12 layers, 768 wide, 12 heads of 64) sits
exactly on it; Kaplan et al. found loss nearly flat over a wide band of aspect ratios around it,
so one rule costs little and makes sizes comparable. A budget picks the depth whose parameter
count is nearest (in ratio); everything else (context, bias, tying, dropout, padding) is kept
from params.yaml's model section.
"""

from __future__ import annotations

import dataclasses
import math

from model.config import GPTConfig
from model.presets import PRESETS, parameter_count
from steps.scaling.laws import ParamsKind

WIDTH_PER_LAYER = 64
HEAD_DIM = 64
MAX_LAYERS = 512
"""Deepest shape considered (32,768 wide, ~6.6 T parameters)."""


def count_params(cfg: GPTConfig, kind: ParamsKind) -> int:
    """`total`: every parameter of the model (Chinchilla's N); `non-embedding`: without the token
    and position embeddings and the output head (Kaplan's N, which assumed a tied head)."""
    total = parameter_count(cfg, tied=cfg.tie_embeddings)
    if kind == "total":
        return total
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.emb_dim
    return total - head - (cfg.vocab_size + cfg.context_length) * cfg.emb_dim


def shape(n_layers: int, base: GPTConfig) -> GPTConfig:
    """The rule's model of `n_layers` blocks; the other fields from `base`."""
    width = WIDTH_PER_LAYER * n_layers
    return dataclasses.replace(base, n_layers=n_layers, emb_dim=width, n_heads=width // HEAD_DIM)


def nearest_shape(params: float, kind: ParamsKind, base: GPTConfig) -> GPTConfig:
    """The rule's shape whose `kind` parameter count is nearest `params` in ratio."""
    return min((shape(depth, base) for depth in range(1, MAX_LAYERS + 1)),
               key=lambda cfg: abs(math.log(count_params(cfg, kind) / params)))


def nearest_preset(params: float, kind: ParamsKind, vocab_size: int) -> tuple[str, int]:
    """The shipped preset (model/presets.py) nearest `params` in ratio, and its count; a preset
    that fixes no vocabulary is counted with `vocab_size`."""
    counts = {name: count_params(p.gpt_config(None if p.vocab_size else vocab_size), kind)
              for name, p in PRESETS.items()}
    name = min(counts, key=lambda n: abs(math.log(counts[n] / params)))
    return name, counts[name]
