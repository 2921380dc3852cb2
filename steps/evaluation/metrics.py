"""Load the project's metrics: local `evaluate` modules, so nothing is fetched from the hub."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import evaluate

# Must be set before `evaluate` is imported: the hub is never reachable from a pipeline run.
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODULES = Path(__file__).parent / "eval_modules"


@functools.cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """`classification_report`, `exact_match`, `rouge_l` or `perplexity`. Hugging Face's `evaluate`
    (and the `datasets` and `transformers` it imports) is imported here, when a metric is needed."""
    import evaluate
    folder = MODULES / name
    if not (folder / f"{name}.py").is_file():
        known = sorted(p.name for p in MODULES.iterdir() if p.is_dir() and not p.name.startswith("_"))
        raise ValueError(f"unknown metric {name!r}; the project ships {known}")
    return evaluate.load(str(folder))


def compute(name: str, **inputs: Any) -> dict[str, Any]:
    return load_metric(name).compute(**inputs)
