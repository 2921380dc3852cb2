"""Configs for tests, built from the shipped params.yaml: the code has no defaults of its own for
what params.yaml gives, so a test states only what it changes."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from typing import Any

import yaml

from model.config import GPTConfig
from steps.config import Params, parse_params
from tests.conftest import ROOT

ARCHITECTURE_NULLS = dict.fromkeys(["context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias"])
"""The model fields a preset fills: null them to take a preset's values (`{"preset": ..., **ARCHITECTURE_NULLS}`)."""


@cache
def _shipped() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))


def shipped(path: str = "") -> dict[str, Any]:
    """A copy of the shipped params.yaml, or of one section of it by dotted path ("evaluate.judge")."""
    data = copy.deepcopy(_shipped())
    for key in filter(None, path.split(".")):
        data = data[key]
    return data


def merged(overrides: Mapping[str, Any] | None = None, path: str = "") -> dict[str, Any]:
    """`shipped(path)` with `overrides` merged in, key by key into nested mappings."""
    return _merge(shipped(path), overrides or {})


def shipped_params(overrides: Mapping[str, Any] | None = None) -> Params:
    """The shipped params.yaml, validated, with `overrides` merged in."""
    return parse_params(merged(overrides), "params.yaml (test overrides)")


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


PLAIN_MODEL = {"drop_rate": 0.1, "qkv_bias": False, "tie_embeddings": False, "vocab_multiple": 1}
"""What a test model has unless it says otherwise: the book's plain GPT (dropout 0.1, no q/k/v
bias, untied and unpadded embeddings)."""


def gpt_config(**fields: Any) -> GPTConfig:
    """A GPTConfig of the sizes given (vocab_size, context_length, emb_dim, n_heads, n_layers),
    PLAIN_MODEL for the rest unless given too."""
    return GPTConfig(**{**PLAIN_MODEL, **fields})
