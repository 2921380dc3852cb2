"""Tests for the label-efficiency curve's arithmetic and report (steps/evaluation/label_efficiency.py)."""

from __future__ import annotations

import pytest

from steps.evaluation.label_efficiency import (
    csv_rows,
    curve_report,
    fraction_key,
    headline_point,
    plot_lines,
    point_steps,
    point_warmup,
    read_curve,
)
from steps.tasks.classification import epoch_steps
from tests.params import shipped_params


def point(fraction: float, labels: int, pretrained: float = 0.9, random_init: float = 0.7, tfidf: float = 0.8) -> dict:
    return {"fraction": fraction, "labels": labels, "steps": 60, "pretrained": pretrained,
            "random_init": random_init, "tfidf": tfidf}


def points(*items: dict) -> dict[str, dict]:
    return {fraction_key(p["fraction"]): p for p in items}


def test_a_point_trains_its_epochs_or_min_steps_whichever_is_more() -> None:
    cfg = shipped_params({"finetune_classifier": {"epochs": 3, "batch_size": 16}}).finetune_classifier
    assert point_steps(epoch_steps(21, cfg), min_steps=60) == 60  # 3 x 2 batches
    assert point_steps(epoch_steps(2100, cfg), min_steps=60) == 396  # 3 x 132, as finetune_classifier
    assert point_steps(epoch_steps(21, cfg), min_steps=1) == 6


def test_warmup_is_at_most_a_tenth_of_the_steps() -> None:
    assert point_warmup(60, warmup_steps=10) == 6
    assert point_warmup(396, warmup_steps=10) == 10
    assert point_warmup(5, warmup_steps=10) == 0


def test_fraction_keys_read_as_params_yaml_writes_them() -> None:
    assert [fraction_key(f) for f in (0.01, 0.03, 0.1, 1.0, 1)] == ["0.01", "0.03", "0.1", "1.0", "1.0"]


def test_the_headline_is_the_smallest_subset_with_50_labels() -> None:
    curve = points(point(0.01, 21), point(0.03, 63), point(0.1, 210))
    assert headline_point(curve)["labels"] == 63
    assert headline_point(points(point(0.5, 50), point(1.0, 100)))["labels"] == 50


def test_without_50_labels_anywhere_the_headline_is_the_largest_subset() -> None:
    assert headline_point(points(point(0.1, 4), point(1.0, 40)))["labels"] == 40
    assert headline_point({}) is None


def test_the_report_holds_every_point_and_the_margins_at_headline_and_full_data() -> None:
    report = curve_report(points(point(0.03, 63, 0.9, 0.75, 0.85), point(1.0, 2100, 0.97, 0.96, 0.975)))
    assert report["enabled"] is True and list(report["points"]) == ["0.03", "1.0"]
    assert report["headline"]["labels"] == 63
    assert report["headline"]["pretrained_minus_random_init"] == pytest.approx(0.15)
    assert report["headline"]["pretrained_minus_tfidf"] == pytest.approx(0.05)
    assert report["full"]["labels"] == 2100 and report["full"]["pretrained_minus_tfidf"] == pytest.approx(-0.005)
    assert read_curve(report, "r.json") == report


def test_a_disabled_curve_has_no_points() -> None:
    assert curve_report({}, enabled=False) == {"enabled": False, "points": {}, "headline": {}, "full": {}}


def test_rows_and_lines_go_by_number_of_labels() -> None:
    curve = points(point(0.1, 210, 0.93), point(0.01, 21, 0.81))
    assert [row["labels"] for row in csv_rows(curve)] == [21, 210]
    assert list(csv_rows(curve)[0]) == ["labels", "fraction", "pretrained", "random_init", "tfidf"]
    assert sorted(plot_lines(curve)["pretrained GPT"]) == [(21, 0.81), (210, 0.93)]


@pytest.mark.parametrize(("report", "why"), [
    ([], "not a label-efficiency report"),
    ({"points": {}}, "not a label-efficiency report"),
    ({"enabled": True, "points": {"0.1": {"fraction": 0.1, "labels": 5, "pretrained": 0.9}}},
     "point 0.1 lacks random_init, tfidf"),
])
def test_a_report_that_is_not_the_stages_is_named_with_the_fix(report: object, why: str) -> None:
    with pytest.raises(ValueError, match=rf"^reports/label_efficiency.json: {why}.*dvc repro -f -s label_efficiency"):
        read_curve(report, "reports/label_efficiency.json")
