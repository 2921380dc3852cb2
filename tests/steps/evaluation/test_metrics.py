"""Tests for the project's local `evaluate` modules, loaded through steps.evaluation.metrics."""

from __future__ import annotations

import math

import pytest

from steps.evaluation.metrics import compute, load_metric

# --- classification_report ------------------------------------------------------------------


def test_classification_report_hand_example() -> None:
    # true:      0  0  0  1
    # predicted: 0  1  1  1
    out = compute("classification_report", predictions=[0, 1, 1, 1], references=[0, 0, 0, 1])
    assert out["accuracy"] == pytest.approx(0.5)
    # class 0: P = 1/1, R = 1/3, F1 = 0.5; class 1: P = 1/3, R = 1/1, F1 = 0.5
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(0.5)
    # Rows are the true class, columns the prediction.
    assert out["confusion_matrix"] == [[1, 2], [0, 1]]
    assert out["per_class"] == [
        {"precision": 1.0, "recall": pytest.approx(1 / 3), "f1": 0.5, "support": 3},
        {"precision": pytest.approx(1 / 3), "recall": 1.0, "f1": 0.5, "support": 1},
    ]


def test_classification_report_num_classes_pads_unseen_classes() -> None:
    out = compute("classification_report", predictions=[0, 1, 1, 1], references=[0, 0, 0, 1], num_classes=3)
    assert out["confusion_matrix"] == [[1, 2, 0], [0, 1, 0], [0, 0, 0]]
    assert out["precision"] == pytest.approx((1 + 1 / 3 + 0) / 3)  # zero_division=0 for the empty class
    assert out["accuracy"] == pytest.approx(0.5)


def test_classification_report_perfect_and_all_wrong() -> None:
    perfect = compute("classification_report", predictions=[1, 0, 2, 1], references=[1, 0, 2, 1])
    assert perfect["accuracy"] == perfect["f1"] == 1.0
    assert perfect["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 0, 1]]
    wrong = compute("classification_report", predictions=[1, 1, 0], references=[0, 0, 1])
    assert wrong["accuracy"] == 0.0 and wrong["f1"] == 0.0
    assert wrong["confusion_matrix"] == [[0, 2], [1, 0]]


# --- exact_match ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, reference, hit",
    [
        ("Cold.", "cold", True),
        ("  The   hot\n\tday ", "the hot day", True),
        ("YES!", "yes", True),
        ('"Paris."', "paris", True),
        ("cats", "cat", False),
        ("don't", "dont", False),  # only surrounding punctuation is stripped
        ("hot day", "hotday", False),
        ("", "", True),
    ],
)
def test_exact_match_normalisation(prediction: str, reference: str, hit: bool) -> None:
    assert compute("exact_match", predictions=[prediction], references=[reference])["exact_match"] == float(hit)


def test_exact_match_share() -> None:
    out = compute("exact_match", predictions=["Cold.", "warm", "Dogs", "no"], references=["cold", "hot", "dogs", "No."])
    assert out["exact_match"] == pytest.approx(0.75)


# --- rouge_l --------------------------------------------------------------------------------


def rouge(prediction: str, reference: str) -> float:
    return compute("rouge_l", predictions=[prediction], references=[reference])["rougeL"]


def test_rouge_l_identical_and_disjoint() -> None:
    assert rouge("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge("The CAT, sat!", "the cat sat") == pytest.approx(1.0)  # case and punctuation ignored
    assert rouge("alpha beta", "gamma delta") == 0.0


def test_rouge_l_partial_overlap() -> None:
    # LCS "the cat on the mat" = 5 of 6 words each side.
    assert rouge("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "the cat" = 2: precision 2/2, recall 2/4, F1 = 2/3.
    assert rouge("the cat", "the big cat sat") == pytest.approx(2 / 3)
    # Order matters: a subsequence, not a bag of words. LCS of "a b c" and "c b a" is 1.
    assert rouge("a b c", "c b a") == pytest.approx(1 / 3)


def test_rouge_l_empty_texts() -> None:
    assert rouge("", "") == 1.0
    assert rouge("", "something") == 0.0
    assert rouge("!!!", "words") == 0.0


def test_rouge_l_mean_over_pairs() -> None:
    out = compute("rouge_l", predictions=["a b", "x y", "the cat"], references=["a b", "z w", "the big cat sat"])
    assert out["rougeL"] == pytest.approx((1.0 + 0.0 + 2 / 3) / 3)


# --- perplexity -----------------------------------------------------------------------------


def test_perplexity_is_token_weighted() -> None:
    out = compute("perplexity", losses=[1.0, 2.0], token_counts=[1, 3])
    assert out["loss"] == pytest.approx(1.75)  # not the unweighted 1.5
    assert out["perplexity"] == pytest.approx(math.exp(1.75))


def test_perplexity_caps_and_rejects_no_tokens() -> None:
    assert compute("perplexity", losses=[500.0], token_counts=[10])["perplexity"] == pytest.approx(math.exp(50))
    with pytest.raises(ValueError, match="at least one token"):
        compute("perplexity", losses=[1.0], token_counts=[0])


# --- loading --------------------------------------------------------------------------------


def test_unknown_metric_lists_shipped_ones() -> None:
    with pytest.raises(ValueError, match="unknown metric 'bleu'") as info:
        load_metric("bleu")
    message = str(info.value)
    for name in ("classification_report", "exact_match", "perplexity", "rouge_l"):
        assert name in message
    assert "__pycache__" not in message
    with pytest.raises(ValueError, match="unknown metric"):
        compute("accuracy", predictions=[1], references=[1])


def test_load_metric_is_cached() -> None:
    assert load_metric("exact_match") is load_metric("exact_match")
