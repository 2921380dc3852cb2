"""Tests for the promotion gate's decision rule (pipelines/retraining/promotion.py)."""

import math

import pytest

from pipelines.retraining.promotion import CANDIDATES, decide


def test_a_strictly_better_challenger_is_promoted() -> None:
    d = decide(0.91, 0.90, higher_is_better=True, metric="acc")
    assert d.promote and (d.challenger, d.champion) == (0.91, 0.90)
    assert "beats" in d.reason and "0.9100" in d.reason and "0.9000" in d.reason


def test_a_tie_keeps_the_champion() -> None:
    d = decide(0.90, 0.90, higher_is_better=True)
    assert not d.promote and "ties" in d.reason


def test_a_worse_challenger_keeps_the_champion() -> None:
    d = decide(0.85, 0.90, higher_is_better=True)
    assert not d.promote and "worse" in d.reason


def test_lower_is_better_metrics_flip_the_comparison() -> None:
    assert decide(1.9, 2.0, higher_is_better=False).promote
    assert not decide(2.1, 2.0, higher_is_better=False).promote


def test_the_first_scored_version_becomes_champion() -> None:
    d = decide(0.10, None, higher_is_better=True)
    assert d.promote and d.champion is None and "no champion" in d.reason


@pytest.mark.parametrize("missing", [None, math.nan])
def test_a_challenger_without_its_metric_never_wins(missing) -> None:
    assert not decide(missing, 0.5, higher_is_better=True).promote
    assert not decide(missing, None, higher_is_better=True).promote


def test_an_unscored_champion_loses_to_a_scored_challenger() -> None:
    d = decide(0.2, math.nan, higher_is_better=True)
    assert d.promote and "no" in d.reason


def test_candidates_are_the_two_finetuned_models_with_distinct_registry_names() -> None:
    assert {c.stage for c in CANDIDATES} == {"finetune_classifier", "finetune_instruct"}
    assert len({c.registered_name for c in CANDIDATES}) == len(CANDIDATES)
