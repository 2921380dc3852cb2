"""Comparing runs (steps/evaluation/compare.py) over plain records, and over runs in a real MLflow store."""

from __future__ import annotations

import math
import re
from datetime import datetime

import pytest

from steps.evaluation import compare
from steps.tracking import runs as tracking
from steps.tracking.runs import RunRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(run_id: str, params: dict[str, str], metrics: dict[str, float], stage: str = "finetune_classifier",
           dvc_exp: str | None = None) -> RunRecord:
    tags = {"stage": stage, "git_commit": "0123456789abcdef", **({"dvc_exp": dvc_exp} if dvc_exp else {})}
    return RunRecord(run_id=run_id, name=stage, status="FINISHED", start_time=datetime(2026, 1, 2, 3, 4),
                     end_time=datetime(2026, 1, 2, 3, 6, 5), params=params, metrics=metrics, tags=tags)


RUNS = [
    record("a" * 32, {"lr": "0.001", "trainable": "head", "seed": "1"}, {"test_accuracy": 0.90, "val_loss": 0.4},
           dvc_exp="cls-head"),
    record("b" * 32, {"lr": "0.001", "trainable": "lora", "seed": "1"}, {"test_accuracy": 0.95, "val_loss": 0.3},
           dvc_exp="cls-lora"),
    record("c" * 32, {"lr": "0.001", "trainable": "all", "seed": "1", "rank": "8"}, {"val_loss": 0.1}),
]
FILTERS = compare.Filters(experiment="gptpipe", stage="finetune_classifier")


def table_rows(markdown: str) -> list[list[str]]:
    """The report's comparison table: header first, separator line dropped."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    header_len = len(rows[0])
    return [r for r in rows if len(r) == header_len and r[0] != "param"]


def column(rows: list[list[str]], name: str) -> list[str]:
    i = rows[0].index(name)
    return [r[i] for r in rows[1:]]


# --- pure logic ---------------------------------------------------------------------------------

def test_key_params_are_the_ones_that_differ_including_missing():
    assert compare.key_params(RUNS) == ["rank", "trainable"]
    assert compare.key_params(RUNS[:2]) == ["trainable"]
    assert compare.key_params(RUNS[:1]) == []


@pytest.mark.parametrize("metric, minimize", [
    ("val_loss", True), ("train_loss", True), ("val_perplexity", True), ("seconds_per_step", True),
    ("compute_seconds", True), ("peak_memory_mb", True),
    ("test_accuracy", False), ("tokens_per_s", False), ("instruct_rougeL", False),
])
def test_direction_by_metric_name(metric, minimize):
    assert compare.minimize_by_default(metric) is minimize


def test_best_maximizes_minimizes_and_skips_runs_without_the_metric():
    assert compare.pick_best(RUNS, "test_accuracy", maximize=True).run_ids == {"b" * 32}
    # The third run has no accuracy: it is never best, even when lower is asked for.
    assert compare.pick_best(RUNS, "test_accuracy", maximize=False).run_ids == {"a" * 32}
    assert compare.pick_best(RUNS, "val_loss", maximize=False).run_ids == {"c" * 32}
    assert compare.pick_best(RUNS, "missing", maximize=True).run_ids == frozenset()


def test_nan_is_never_best_and_ties_are_all_marked():
    runs = [record("x" * 32, {}, {"m": math.nan}), record("y" * 32, {}, {"m": 1.0}), record("z" * 32, {}, {"m": 1.0})]
    assert compare.pick_best(runs, "m", maximize=True).run_ids == {"y" * 32, "z" * 32}


def test_compare_defaults_to_the_stage_columns_and_headline_metric():
    result = compare.compare(RUNS, FILTERS)
    assert result.metrics == ["test_accuracy"]  # the stage's defaults that some run logged
    assert result.best == compare.Best("test_accuracy", True, frozenset({"b" * 32}))
    assert result.shared_params == {"lr": "0.001", "seed": "1"}


def test_legend_names_runs_by_experiment_else_by_their_differing_params():
    result = compare.compare(RUNS, FILTERS)
    assert compare.plot_label(RUNS[0], result) == f"cls-head ({'a' * 8})"
    assert compare.plot_label(RUNS[2], result) == f"rank=8 trainable=all ({'c' * 8})"
    assert compare.plot_label(RUNS[2]) == f"finetune_classifier ({'c' * 8})"


def test_compare_with_chosen_metrics_and_direction():
    result = compare.compare(RUNS, FILTERS, metrics=["val_loss"], best="test_accuracy", maximize=False)
    assert result.metrics == ["test_accuracy", "val_loss"]  # the best-by metric is always a column
    assert result.best.run_ids == {"a" * 32} and not result.best.maximize


def test_unknown_metrics_are_errors_that_list_the_available_ones():
    with pytest.raises(compare.CompareError, match="test_acc;.*test_accuracy, val_loss"):
        compare.compare(RUNS, FILTERS, best="test_acc")
    with pytest.raises(compare.CompareError, match="f1"):
        compare.compare(RUNS, FILTERS, metrics=["f1"])


def test_curve_points_drop_the_summary_logged_after_training():
    # Step 0 again at the end: the stage's summary value, logged without a step.
    assert compare.curve_points([(0, 0.7), (5, 0.5), (10, 0.3), (0, 0.25)]) == [(0, 0.7), (5, 0.5), (10, 0.3)]
    assert compare.curve_points([(0, 1.0)]) == [(0, 1.0)]


def test_parse_tags():
    assert compare.parse_tags(["dvc_exp=cls-lora", "stage = pretrain"]) == {"dvc_exp": "cls-lora", "stage": "pretrain"}
    assert compare.parse_tags(["note=a=b"]) == {"note": "a=b"}
    with pytest.raises(compare.CompareError, match="KEY=VALUE"):
        compare.parse_tags(["dvc_exp"])


@pytest.mark.parametrize("value, text", [
    (None, "—"), (0.912345, "0.9123"), (1000.0, "1,000"), (12345.6, "12,346"), (3.0, "3"), (math.nan, "nan"),
])
def test_format_value(value, text):
    assert compare.format_value(value) == text


def test_markdown_marks_the_best_row_and_shows_only_differing_params():
    md = compare.markdown(compare.compare(RUNS, FILTERS), images=["curves.png"])
    rows = table_rows(md)
    assert rows[0][:4] == ["run", "id", "started", "commit"]
    assert "rank" in rows[0] and "trainable" in rows[0] and "lr" not in rows[0]
    assert column(rows, "run") == ["cls-head", f"**cls-lora {compare.BEST_MARK}**", "finetune_classifier"]
    assert column(rows, "rank") == ["—", "—", "8"]
    assert column(rows, "commit") == ["0123456"] * 3
    assert column(rows, "wall time") == ["2m 05s"] * 3
    assert "Best by `test_accuracy` (higher is better): **cls-lora**" in md
    assert "![curves](curves.png)" in md
    assert "| lr | 0.001 |" in md  # the shared params, listed once below the table


def test_no_curve_figures_without_histories(tmp_path):
    paths = compare.write_report(compare.compare(RUNS, FILTERS), {}, tmp_path)
    assert [p.name for p in paths] == ["compare.md", "compare.html"]
    assert "data:image/png" not in (tmp_path / "compare.html").read_text()


# --- against a real MLflow store ----------------------------------------------------------------

def test_report_files_from_real_runs(mlflow_store, tmp_path):
    runs = tracking.fetch_runs("cmp", stage="finetune_classifier")
    result = compare.compare(runs, compare.Filters("cmp", stage="finetune_classifier"))
    curves = ["train_loss", "val_loss", "val_accuracy"]
    histories = {r.run_id: tracking.metric_histories(r.run_id, curves) for r in runs}
    paths = compare.write_report(result, histories, tmp_path / "out")
    assert [p.name for p in paths] == ["compare.md", "compare.html", "curves.png", "accuracy.png"]
    for name in ("curves.png", "accuracy.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000

    rows = table_rows((tmp_path / "out" / "compare.md").read_text())
    assert len(rows) == 1 + 3
    assert column(rows, "run") == ["cls-lora", f"**cls-block {compare.BEST_MARK}**", "cls-head"]
    assert column(rows, "trainable") == ["lora", "last_block", "head"]
    assert "lr" not in rows[0] and "epochs" not in rows[0]
    assert column(rows, "tokens_per_s") == ["800", "700", "900"]

    page = (tmp_path / "out" / "compare.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert "<style>" in page and 'href="' not in page  # self-contained
    best_rows = re.findall(r'<tr class="best">(.*?)</tr>', page)
    assert len(best_rows) == 1 and "cls-block" in best_rows[0]
    assert page.count("<tr>") >= 1 + 2  # header and the other two runs
