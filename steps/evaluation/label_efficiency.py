"""The label-efficiency curve's numbers: how many steps a point trains, which point is the headline,
and the report the `label_efficiency` stage writes and `evaluate` reads back.

Pretraining pays most where labels are few: at each fraction of the classifier's training split
the stage measures three methods on the same (nested, stratified) subset, scored on the same test
split. Plain Python: the evaluate stage reads the report without importing any training code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

METHODS: dict[str, str] = {
    "pretrained": "pretrained GPT",
    "random_init": "GPT from random init",
    "tfidf": "TF-IDF + logistic regression",
}
"""Report key -> what the summary and the plot call the method, in the order they are shown."""
HEADLINE_MIN_LABELS = 50
"""The headline point is the smallest subset with at least this many labels (issue: where a few
labelled examples are all there is, a pretrained model should beat both others clearly)."""
POINT_STAGE = "label_efficiency_point"
"""The `stage` tag of each point's MLflow run: `gptpipe compare --stage label_efficiency_point`."""
CSV_COLUMNS = ["labels", "fraction", *METHODS]


def point_steps(epoch_steps: int, min_steps: int) -> int:
    """Optimizer steps of a point: finetune_classifier's epochs over the subset (`epoch_steps`, as
    steps.tasks.classification.epoch_steps counts them), at least `min_steps` (a subset of 20
    messages would otherwise train for a handful of updates)."""
    return max(min_steps, epoch_steps)


def point_warmup(steps: int, warmup_steps: int) -> int:
    """finetune_classifier's warmup, at most a tenth of a point's steps (a 60-step point should not
    spend a sixth of them warming up)."""
    return min(warmup_steps, steps // 10)


def fraction_key(fraction: float) -> str:
    """A point's key in the report: the fraction as params.yaml writes it ("0.03", "1.0")."""
    return repr(float(fraction))


def headline_point(points: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The smallest subset with at least HEADLINE_MIN_LABELS labels; if none has as many, the largest."""
    ordered = sorted(points.values(), key=lambda p: p["fraction"])
    if not ordered:
        return None
    return next((p for p in ordered if p["labels"] >= HEADLINE_MIN_LABELS), ordered[-1])


def with_margins(point: Mapping[str, Any] | None) -> dict[str, Any]:
    """A point with what the pretrained model gains over each other method ({} for no point)."""
    if point is None:
        return {}
    return {**point, "pretrained_minus_random_init": point["pretrained"] - point["random_init"],
            "pretrained_minus_tfidf": point["pretrained"] - point["tfidf"]}


def curve_report(points: Mapping[str, Mapping[str, Any]], enabled: bool = True) -> dict[str, Any]:
    """reports/label_efficiency.json: every point by its fraction key, the headline point and the
    full-data (largest) point with the pretrained model's margins; no points when it was off."""
    largest = max(points.values(), key=lambda p: p["fraction"]) if points else None
    return {"enabled": enabled, "points": dict(points), "headline": with_margins(headline_point(points)),
            "full": with_margins(largest)}


def read_curve(report: Any, where: str) -> dict[str, Any]:
    """A label-efficiency report read back (evaluate): checked to hold what the summary shows."""
    if not isinstance(report, dict) or not isinstance(report.get("points"), dict) or "enabled" not in report:
        raise ValueError(f"{where}: not a label-efficiency report (expected enabled, points, headline, full); "
                         "rerun the stage: dvc repro -f -s label_efficiency")
    for key, point in report["points"].items():
        missing = [k for k in ("fraction", "labels", *METHODS) if k not in point]
        if missing:
            raise ValueError(f"{where}: point {key} lacks {', '.join(missing)}; rerun the stage: "
                             "dvc repro -f -s label_efficiency")
    return {k: report.get(k) for k in ("enabled", "points", "headline", "full")}


def csv_rows(points: Mapping[str, Mapping[str, Any]]) -> list[dict[str, float]]:
    """One row per point, by number of labels: what reports/plots/label_efficiency/curve.csv holds."""
    return [{c: p[c] for c in CSV_COLUMNS} for p in sorted(points.values(), key=lambda p: p["fraction"])]


def plot_lines(points: Mapping[str, Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """{method's name: [(labels, accuracy), ...]} for the plot."""
    return {name: [(p["labels"], p[key]) for p in points.values()] for key, name in METHODS.items()}
