"""Tests for the markdown summary report (steps/evaluation/report.py)."""

from __future__ import annotations

import pytest

from steps.evaluation.report import EMPTY_REPLY, RANDOM_INIT_EXPERIMENT, StartingPoints, pretrained_origin, summary_markdown

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
    "classifier_tfidf_test_accuracy": 0.9667,
}
STARTS = StartingPoints("our pretraining (90 steps from random weights)", "pretrained")
CONFUSION = {"labels": ["ham", "spam"], "confusion_matrix": [[140, 10], [3, 147]]}
EXAMPLES = [
    {"instruction": "Name a colour.", "input": "", "output": "Red.", "finetuned": "Red.",
     "pretrained_only": "the the the"},
    {"instruction": "Pick | one", "input": "a\nb", "output": "x" * 100, "finetuned": "  spaced   out  ",
     "pretrained_only": ""},
]


@pytest.fixture
def lines() -> list[str]:
    text = summary_markdown(METRICS, CONFUSION, EXAMPLES, STARTS)
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
    text = summary_markdown(METRICS, confusion, [], STARTS)
    assert "| | a | b | c |\n|---|---|---|---|\n| **a** | 1 | 2 | 3 |\n| **b** | 4 | 5 | 6 |\n| **c** | 7 | 8 | 9 |" in text


def test_example_rows_are_escaped_and_truncated(lines: list[str]) -> None:
    i = lines.index("| instruction | input | expected | finetuned | pretrained only |")
    assert lines[i + 2] == "| Name a colour. | (none) | Red. | Red. | the the the |"
    row = lines[i + 3]
    assert row.startswith("| Pick \\| one | a b | ")
    assert "x" * 79 + "…" in row and "x" * 80 not in row
    assert row.endswith(f"| spaced out | {EMPTY_REPLY} |")  # an empty reply is said, not a blank cell
    assert len(lines) == i + 4  # one row per example, nothing after


def test_plots_are_referenced(lines: list[str]) -> None:
    text = "\n".join(lines)
    for png in ("plots/evaluate/pretrain_loss.png", "plots/pretrain/loss.png", "plots/evaluate/before_after.png",
                "plots/evaluate/classifier_confusion.png"):
        assert f"]({png})" in text


def test_missing_metric_raises() -> None:
    broken = {k: v for k, v in METRICS.items() if k != "instruct_rougeL"}
    with pytest.raises(KeyError, match="instruct_rougeL"):
        summary_markdown(broken, CONFUSION, EXAMPLES, STARTS)


def test_per_class_table_when_given() -> None:
    confusion = {**CONFUSION, "per_class": [
        {"precision": 0.98, "recall": 0.9333, "f1": 0.956, "support": 150},
        {"precision": 0.9363, "recall": 0.98, "f1": 0.9577, "support": 150},
    ]}
    text = summary_markdown(METRICS, confusion, [], STARTS)
    assert "| label | precision | recall | F1 | support |" in text
    assert "| spam | 0.9363 | 0.9800 | 0.9577 | 150 |" in text


JUDGED = {"instruct_judge_available": 1, "instruct_judge_score": 61.25, "instruct_judge_scored": 9,
          "instruct_judge_unscored": 1, "instruct_start_judge_score": 4.0, "instruct_start_judge_scored": 8,
          "instruct_start_judge_unscored": 2}


def test_no_judge_lines_when_judging_is_off(lines: list[str]) -> None:
    assert not any("judge" in line for line in lines)


def test_judge_row_and_note() -> None:
    text = summary_markdown({**METRICS, **JUDGED}, CONFUSION, [], STARTS, judge="llama3 at http://localhost:11434/v1")
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
    assert "| instruction LLM-judge score (0-100) | no score | 61.2 | – |" in summary_markdown(metrics, CONFUSION, [], STARTS)


def test_unreachable_judge_is_said_and_nothing_else_changes(lines: list[str]) -> None:
    text = summary_markdown({**METRICS, "instruct_judge_available": 0}, CONFUSION, EXAMPLES, STARTS)
    assert "LLM-judge score" not in text and "judge was unreachable" in text
    assert set(lines) <= set(text.splitlines())


def test_no_table_cell_is_blank(lines: list[str]) -> None:
    for line in lines:
        if line.startswith("|") and not line.startswith("|---"):
            cells = line.strip("|").split(" | ") if line != "| | ham | spam |" else ["corner"]
            assert all(c.strip() for c in cells), line


def test_a_gpt_below_the_tfidf_baseline_is_said_plainly(lines: list[str]) -> None:
    text = "\n".join(lines)
    assert "| finetuned GPT | our pretraining (90 steps from random weights), new classification head | 0.9375 |" in lines
    assert "| TF-IDF + logistic regression (same training split) | no GPT: word 1-2 grams | 0.9667 |" in lines
    assert ("**The finetuned GPT is below the TF-IDF + logistic regression baseline** on this test split: "
            "accuracy 0.9375 vs 0.9667 (-0.0292).") in text
    above = summary_markdown({**METRICS, "classifier_tfidf_test_accuracy": 0.9}, CONFUSION, [], STARTS)
    assert "The finetuned GPT beats the TF-IDF + logistic regression baseline: accuracy 0.9375 vs 0.9000" in above
    assert "below the TF-IDF" not in above


def test_the_random_init_result_is_this_run_or_how_to_run_it(lines: list[str]) -> None:
    assert f"| GPT finetuned from random init | random init (no pretraining) | not run: `{RANDOM_INIT_EXPERIMENT}` |" in lines
    random = summary_markdown(METRICS, CONFUSION, [], StartingPoints("our pretraining (9 steps from random weights)", "random"))
    assert "| GPT finetuned from random init | random init (no pretraining) | 0.9375 (this run) |" in random
    assert "| finetuned GPT | random init (no pretraining), new classification head | 0.9375 |" in random


def test_every_finetuned_model_names_its_starting_point(lines: list[str]) -> None:
    assert "- classifier: starts from our pretraining (90 steps from random weights), new classification head" in lines
    assert ("- instruction model: starts from our pretraining (90 steps from random weights), answering the same "
            "Alpaca prompts") in lines


def test_pretrained_origin_in_words() -> None:
    assert pretrained_origin(None, 90) == "our pretraining (90 steps from random weights)"
    hub = {"source": "hub", "repo": "openai-community/gpt2", "revision": "main", "sha256": "ab"}
    assert pretrained_origin(hub, 0) == "GPT-2 weights (openai-community/gpt2@main)"
    folder = {"source": "folder", "folder": "weights/gpt2", "sha256": "ab"}
    assert pretrained_origin(folder, 50) == "GPT-2 weights (weights/gpt2), pretrained 50 more steps on our corpus"


PREFERENCE = {"preference_test_loss": 0.4321, "preference_test_reward_margin": 1.25,
              "preference_test_reward_accuracy": 0.95}
PREFERENCE_EXAMPLE = {"instruction": "What is the plural of mouse?", "input": "", "chosen": "Mice. Thanks for asking!",
                      "rejected": "Mice.", "sft_response": "Mice.", "dpo_response": ""}


def test_no_preference_section_without_its_metrics(lines: list[str]) -> None:
    assert not any("Preference tuning" in line for line in lines)


def test_preference_section_with_property_rates_and_responses_side_by_side() -> None:
    metrics = {**METRICS, **PREFERENCE, "preference_sft_property_rate": 0.05, "preference_dpo_property_rate": 0.62}
    text = summary_markdown(metrics, CONFUSION, EXAMPLES, STARTS, preference_examples=[PREFERENCE_EXAMPLE])
    assert text.startswith(summary_markdown(METRICS, CONFUSION, EXAMPLES, STARTS))  # what was there stays as it was
    assert "| held-out reward accuracy | 0.9500 |" in text
    assert "| held-out mean reward margin | 1.2500 |" in text
    assert "| held-out DPO loss (ln 2 = 0.6931 before tuning) | 0.4321 |" in text
    assert "| 5.0% | 62.0% | +57.0 points |" in text
    assert f"| What is the plural of mouse? | Mice. Thanks for asking! | Mice. | {EMPTY_REPLY} |" in text
    assert "![DPO reward margin](plots/finetune_preference/reward_margin.png)" in text


def test_preference_section_without_a_checked_property() -> None:
    text = summary_markdown({**METRICS, **PREFERENCE}, CONFUSION, [], STARTS)
    assert "| held-out reward accuracy | 0.9500 |" in text and "checked property" not in text


def curve(enabled: bool = True) -> dict:
    """A label-efficiency report as the label_efficiency stage writes it."""
    from steps.evaluation.label_efficiency import curve_report

    points = {"0.01": {"fraction": 0.01, "labels": 21, "steps": 60, "pretrained": 0.8, "random_init": 0.7, "tfidf": 0.75},
              "0.03": {"fraction": 0.03, "labels": 63, "steps": 60, "pretrained": 0.9, "random_init": 0.78,
                       "tfidf": 0.85},
              "1.0": {"fraction": 1.0, "labels": 2100, "steps": 396, "pretrained": 0.97, "random_init": 0.96,
                      "tfidf": 0.97}}
    return curve_report(points if enabled else {}, enabled=enabled)


def test_label_efficiency_table_margins_and_curve() -> None:
    lines = summary_markdown(METRICS, CONFUSION, EXAMPLES, STARTS, label_efficiency=curve()).splitlines()
    i = lines.index("## Label efficiency: test accuracy against the number of labels")
    header = lines.index("| labels (share of the training split) | pretrained GPT | GPT from random init | "
                         "TF-IDF + logistic regression |")
    assert header > i
    # Rows by number of labels, the best method of each row in bold (ties too).
    assert lines[header + 2:header + 5] == ["| 21 (1%) | **0.8000** | 0.7000 | 0.7500 |",
                                            "| 63 (3%) | **0.9000** | 0.7800 | 0.8500 |",
                                            "| 2,100 (100%) | **0.9700** | 0.9600 | **0.9700** |"]
    text = "\n".join(lines)
    assert ("At 63 labels (the fewest with at least 50), the pretrained GPT is +12.0 points against random init "
            "and +5.0 points against TF-IDF; with 2,100 labels, +1.0 points and +0.0 points.") in text
    assert "![label efficiency](plots/label_efficiency/curve.png)" in lines


def test_label_efficiency_turned_off_is_said() -> None:
    text = summary_markdown(METRICS, CONFUSION, EXAMPLES, STARTS, label_efficiency=curve(enabled=False))
    assert "Not measured: `label_efficiency.enabled` is false in params.yaml" in text
    assert "plots/label_efficiency/curve.png" not in text


def test_no_label_efficiency_section_without_its_report(lines: list[str]) -> None:
    assert not any("Label efficiency" in line for line in lines)


def test_the_random_init_instruction_model_sits_beside_the_others_only_when_it_ran(lines: list[str]) -> None:
    title = "### What pretraining bought the instruction model (test split)"
    assert title not in lines
    scratch = {"instruct_random_init_exact_match": 0.05, "instruct_random_init_rougeL": 0.0812}
    with_it = summary_markdown({**METRICS, **scratch}, CONFUSION, EXAMPLES, STARTS).splitlines()
    i = with_it.index(title)
    assert with_it[i + 2: i + 7] == ["| model | exact match | ROUGE-L |", "|---|---|---|",
                                     "| finetuned from the pretrained model | 0.4200 | 0.1000 |",
                                     "| finetuned from random weights | 0.0500 | 0.0812 |",
                                     "| pretrained only, not finetuned | 0.0000 | 0.1230 |"]


def test_exact_match_per_family_is_a_table_of_the_models_scored(lines: list[str]) -> None:
    title = "### Instruction exact match per kind of question (built-in test set)"
    assert title not in lines  # no per-family metrics (a dataset that is not the built-in one)
    families = {"instruct_exact_match_plural": 0.25, "instruct_exact_match_lives": 0.9,
                "instruct_start_exact_match_plural": 0.0, "instruct_start_exact_match_lives": 0.05}
    with_it = summary_markdown({**METRICS, **families}, CONFUSION, EXAMPLES, STARTS).splitlines()
    i = with_it.index(title)
    assert with_it[i + 2: i + 6] == ["| question | finetuned | pretrained only |", "|---|---|---|",
                                     "| lives | 0.90 | 0.05 |", "| plural | 0.25 | 0.00 |"]
