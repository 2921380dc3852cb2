"""The promotion gate: which finetuned models the registry holds, and when a challenger becomes champion."""

from __future__ import annotations

import math
from dataclasses import dataclass

CHAMPION = "champion"
"""The registry alias that marks the version to serve (`models:/gptpipe-classifier@champion`)."""


@dataclass(frozen=True)
class Candidate:
    """A finetuned model the retraining flow registers, and the held-out metric that judges it."""

    key: str
    """Short name used in reports and logs."""
    stage: str
    """The DVC stage that trains it (its MLflow run holds the model folder under `model/`)."""
    registered_name: str
    """Name in the MLflow Model Registry."""
    metric: str
    """Key in reports/evaluate.json, computed on the test split the model never trained on."""
    higher_is_better: bool


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("classifier", "finetune_classifier", "gptpipe-classifier", "classifier_test_accuracy", True),
    Candidate("instruct", "finetune_instruct", "gptpipe-instruct", "instruct_rougeL", True),
)


@dataclass(frozen=True)
class Decision:
    """Whether the challenger takes the champion alias, and why (both scores kept for the record)."""

    promote: bool
    reason: str
    challenger: float | None
    champion: float | None


def decide(challenger: float | None, champion: float | None, higher_is_better: bool,
           metric: str = "the held-out metric") -> Decision:
    """Promote only a strictly better challenger; with no champion yet, the first scored one wins.

    `champion` is None when there is no champion, NaN when there is one without a score.
    Ties and regressions keep the champion. A challenger without a score (None or NaN) never
    wins: an unmeasured model must not replace a measured one. An unscored champion loses to
    any scored challenger.
    """
    if not _is_score(challenger):
        return Decision(False, f"challenger has no {metric} score: keeping the champion", challenger, champion)
    if champion is None:
        return Decision(True, f"no champion yet: the first version with a {metric} score becomes champion",
                        challenger, None)
    if not _is_score(champion):
        return Decision(True, f"the champion has no {metric} score: any scored challenger replaces it",
                        challenger, champion)
    assert challenger is not None
    better = challenger > champion if higher_is_better else challenger < champion
    direction = "higher" if higher_is_better else "lower"
    if better:
        return Decision(True, f"challenger {metric} {challenger:.4f} beats champion {champion:.4f} "
                              f"({direction} is better)", challenger, champion)
    verdict = "ties" if challenger == champion else "is worse than"
    return Decision(False, f"challenger {metric} {challenger:.4f} {verdict} champion {champion:.4f} "
                           f"({direction} is better): keeping the champion", challenger, champion)


def _is_score(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
