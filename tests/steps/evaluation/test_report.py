"""Tests for the markdown summary report (steps/evaluation/report.py)."""

from __future__ import annotations

import pytest

from steps.evaluation.report import summary_markdown

METRICS = {
    "unigram_val_loss": 5.123456,
    "unigram_val_perplexity": 167.91234,
    "pretrain_val_loss": 2.5,
    "pretrain_val_perplexity": 12.182494,
    "classifier_start_test_accuracy": 0.5,
    "classifier_test_accuracy": 0.9375,
    "classifier_start_test_f1": 0.3333333,
    "classifier_test_f1": 0.93,
    "instruct_start_exact_match": 0.0,
    "instruct_exact_match": 0.42,
    "instruct_start_rougeL": 0.123,
    "instruct_rougeL": 0.1,
}
CONFUSION = {"labels": ["ham", "spam"], "confusion_matrix": [[140, 10], [3, 147]]}
EXAMPLES = [
    {"instruction": "Name a colour.", "input": "", "output": "Red.", "finetuned": "Red.",
     "pretrained_only": "the the the"},
    {"instruction": "Pick | one", "input": "a\nb", "output": "x" * 100, "finetuned": "  spaced   out  ",
     "pretrained_only": ""},
]


@pytest.fixture
def lines() -> list[str]:
    text = summary_markdown(METRICS, CONFUSION, EXAMPLES)
    assert text.endswith("\n") and text.startswith("# gptpipe summary\n")
    return text.splitlines()


def test_pretraining_table(lines: list[str]) -> None:
    assert "| unigram (token frequencies) | 5.1235 | 167.91 |" in lines
    assert "| pretrained GPT | 2.5000 | 12.18 |" in lines


def test_before_after_rows_with_signed_change(lines: list[str]) -> None:
    assert "| classifier accuracy | 0.5000 | 0.9375 | +0.4375 |" in lines
    assert "| classifier macro F1 | 0.3333 | 0.9300 | +0.5967 |" in lines
    assert "| instruction exact match | 0.0000 | 0.4200 | +0.4200 |" in lines
    assert "| instruction ROUGE-L | 0.1230 | 0.1000 | -0.0230 |" in lines


def test_confusion_table(lines: list[str]) -> None:
    i = lines.index("| | ham | spam |")
    assert lines[i + 1] == "|---|---|---|"
    assert lines[i + 2] == "| **ham** | 140 | 10 |"  # rows are the true class
    assert lines[i + 3] == "| **spam** | 3 | 147 |"
    assert "rows: true, columns: predicted" in lines[i - 2]


def test_confusion_table_three_classes() -> None:
    confusion = {"labels": ["a", "b", "c"], "confusion_matrix": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}
    text = summary_markdown(METRICS, confusion, [])
    assert "| | a | b | c |\n|---|---|---|---|\n| **a** | 1 | 2 | 3 |\n| **b** | 4 | 5 | 6 |\n| **c** | 7 | 8 | 9 |" in text


def test_example_rows_are_escaped_and_truncated(lines: list[str]) -> None:
    i = lines.index("| instruction | input | expected | finetuned | pretrained only |")
    assert lines[i + 2] == "| Name a colour. |  | Red. | Red. | the the the |"
    row = lines[i + 3]
    assert row.startswith("| Pick \\| one | a b | ")
    assert "x" * 79 + "…" in row and "x" * 80 not in row
    assert row.endswith("| spaced out |  |")
    assert len(lines) == i + 4  # one row per example, nothing after


def test_plots_are_referenced(lines: list[str]) -> None:
    text = "\n".join(lines)
    for png in ("plots/evaluate/pretrain_loss.png", "plots/pretrain/loss.png", "plots/evaluate/before_after.png",
                "plots/evaluate/classifier_confusion.png"):
        assert f"]({png})" in text


def test_missing_metric_raises() -> None:
    broken = {k: v for k, v in METRICS.items() if k != "instruct_rougeL"}
    with pytest.raises(KeyError, match="instruct_rougeL"):
        summary_markdown(broken, CONFUSION, EXAMPLES)


def test_per_class_table_when_given() -> None:
    confusion = {**CONFUSION, "per_class": [
        {"precision": 0.98, "recall": 0.9333, "f1": 0.956, "support": 150},
        {"precision": 0.9363, "recall": 0.98, "f1": 0.9577, "support": 150},
    ]}
    text = summary_markdown(METRICS, confusion, [])
    assert "| label | precision | recall | F1 | support |" in text
    assert "| spam | 0.9363 | 0.9800 | 0.9577 | 150 |" in text


JUDGED = {"instruct_judge_available": 1, "instruct_judge_score": 61.25, "instruct_judge_scored": 9,
          "instruct_judge_unscored": 1, "instruct_start_judge_score": 4.0, "instruct_start_judge_scored": 8,
          "instruct_start_judge_unscored": 2}


def test_no_judge_lines_when_judging_is_off(lines: list[str]) -> None:
    assert not any("judge" in line for line in lines)


def test_judge_row_and_note() -> None:
    text = summary_markdown({**METRICS, **JUDGED}, CONFUSION, [], judge="llama3 at http://localhost:11434/v1")
    lines = text.splitlines()
    i = lines.index("| instruction ROUGE-L | 0.1230 | 0.1000 | -0.0230 |")
    assert lines[i + 1] == "| instruction LLM-judge score (0-100) | 4.0 | 61.2 | +57.2 |"
    note = " ".join(lines[i + 2: i + 6])
    assert "(llama3 at http://localhost:11434/v1)" in note
    assert "9 scored and 1 unscored finetuned" in note and "8 scored and 2 unscored pretrained-only" in note
    assert "judged_responses.json" in note


def test_judge_row_when_one_side_has_no_score() -> None:
    metrics = {**METRICS, **JUDGED}
    del metrics["instruct_start_judge_score"]
    assert "| instruction LLM-judge score (0-100) | no score | 61.2 | – |" in summary_markdown(metrics, CONFUSION, [])


def test_unreachable_judge_is_said_and_nothing_else_changes(lines: list[str]) -> None:
    text = summary_markdown({**METRICS, "instruct_judge_available": 0}, CONFUSION, EXAMPLES)
    assert "LLM-judge score" not in text and "judge was unreachable" in text
    assert set(lines) <= set(text.splitlines())
