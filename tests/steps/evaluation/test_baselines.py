"""Tests for the TF-IDF + logistic-regression baseline (steps/evaluation/baselines.py)."""

from __future__ import annotations

import random

from steps.evaluation.baselines import tfidf_logreg_predictions
from steps.tasks.classification import Example


def test_tfidf_baseline_separates_an_easy_task_and_is_deterministic() -> None:
    rng = random.Random(0)
    spam = ["WIN a FREE prize now", "URGENT claim your cash reward", "free entry txt WIN to 80082"]
    ham = ["see you at lunch", "are we still on for tonight", "call me when you get home"]
    examples = [Example("spam", rng.choice(spam) + f" {i}") for i in range(40)]
    examples += [Example("ham", rng.choice(ham) + f" {i}") for i in range(40)]
    rng.shuffle(examples)
    train, test = examples[:60], examples[60:]
    preds = tfidf_logreg_predictions(train, test, ["ham", "spam"], seed=1)
    refs = [["ham", "spam"].index(e.label) for e in test]
    assert sum(p == r for p, r in zip(preds, refs)) / len(refs) == 1.0
    assert preds == tfidf_logreg_predictions(train, test, ["ham", "spam"], seed=1)


def test_labels_map_to_the_given_id_order() -> None:
    train = [Example("b", "bbb bbb"), Example("a", "aaa aaa")] * 5
    preds = tfidf_logreg_predictions(train, [Example("b", "bbb"), Example("a", "aaa")], ["b", "a"], seed=0)
    assert preds == [0, 1]
