"""Tests for the dataset size checks of the download stage (steps/data/sizes.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from steps.data.readers import DataError
from steps.data.sizes import (
    check_classification,
    check_corpus,
    check_instructions,
    check_preferences,
)
from steps.tasks.classification import Example, split_examples
from steps.tasks.instruction import split_in_order
from steps.tasks.splits import classification_splits, instruction_splits


@pytest.mark.parametrize("train_fraction, val_fraction", [(0.7, 0.1), (0.8, 0.15), (0.5, 0.25)])
def test_classification_splits_are_the_ones_finetuning_makes(train_fraction: float, val_fraction: float) -> None:
    for n in range(120):
        examples = [Example("a" if i % 2 else "b", f"t{i}") for i in range(n)]
        made = split_examples(examples, seed=1, train_fraction=train_fraction, val_fraction=val_fraction,
                              balance=False)
        got = classification_splits(n, train_fraction, val_fraction)
        assert (got.train, got.val, got.test) == (len(made["train"]), len(made["val"]), len(made["test"])), n


def test_instruction_splits_are_the_ones_finetuning_makes() -> None:
    for n in range(300):
        made = split_in_order([{"instruction": str(i)} for i in range(n)])
        got = instruction_splits(n)
        assert (got.train, got.val, got.test) == (len(made["train"]), len(made["val"]), len(made["test"])), n


def test_five_rows_leave_the_validation_split_empty() -> None:
    # The case: 5 rows pretrained first, then finetuning divided by an empty validation split.
    with pytest.raises(DataError) as err:
        check_classification({"ham": 3, "spam": 2}, ["ham", "spam"], 0.7, 0.1, balance=False, where="five.csv")
    assert str(err.value) == (
        "five.csv: too few records for finetune_classifier: 5 records (2 labels) split by train_fraction 0.7 / "
        "val_fraction 0.1 give train 3, validation 0, test 2, so the validation split gets too few (every split "
        "needs a record, train one per label); add records (at least 10 records with these fractions) or change "
        "finetune_classifier.train_fraction / val_fraction")


def test_balancing_counts_the_smallest_label() -> None:
    with pytest.raises(DataError, match=r"6 records \(balanced to 3 per label \(finetune_classifier.balance\), "
                                        r"2 labels\).*at least 10 records \(5 per label, balanced\)"):
        check_classification({"ham": 300, "spam": 3}, ["ham", "spam"], 0.7, 0.1, balance=True, where="x")
    fits = check_classification({"ham": 300, "spam": 5}, ["ham", "spam"], 0.7, 0.1, balance=True, where="x")
    assert (fits.train, fits.val, fits.test) == (7, 1, 2)


def test_train_needs_a_record_per_label() -> None:
    # 10 records of 5 labels at train_fraction 0.3: train 3 < 5 labels.
    counts = {name: 2 for name in "abcde"}
    with pytest.raises(DataError, match="so the train split gets too few.*at least 17 records"):
        check_classification(counts, list(counts), 0.3, 0.3, balance=False, where="x")


def test_a_listed_label_without_records() -> None:
    with pytest.raises(DataError, match=r"x: label 'spam' has no records \(download.classification.labels lists "
                                        r"\['ham', 'spam'\]\)"):
        check_classification({"ham": 50}, ["ham", "spam"], 0.7, 0.1, balance=False, where="x")


def test_instruction_splits_need_ten_records() -> None:
    with pytest.raises(DataError) as err:
        check_instructions(9, "data.json")
    assert str(err.value) == (
        "data.json: too few records for finetune_instruct: 9 records split in file order (85% train, 10% test, "
        "the rest validation) give train 7, validation 2, test 0, so the test split is empty; add records "
        "(at least 10)")
    assert check_instructions(10, "data.json").val == 1


def test_preference_splits_need_ten_records_and_name_their_stage() -> None:
    with pytest.raises(DataError) as err:
        check_preferences(9, "prefs.json")
    assert str(err.value) == (
        "prefs.json: too few records for finetune_preference: 9 records split in file order (85% train, 10% test, "
        "the rest validation) give train 7, validation 2, test 0, so the test split is empty; add records "
        "(at least 10)")
    assert check_preferences(1100, "prefs.json") == instruction_splits(1100)


def corpus(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_corpus_smaller_than_one_window_is_refused(tmp_path: Path) -> None:
    path = corpus(tmp_path, "".join(f"line {i:02d}\n" for i in range(30)))  # 240 bytes, 90 % = 27 lines
    with pytest.raises(DataError, match=r"c: the corpus is too small to pretrain on: tokenize.val_fraction 0.1 "
                                        r"leaves 216 bytes for training, and one training window is .* \+ 1 = 257 "
                                        r"tokens, which takes at least 257 bytes"):
        check_corpus(path, 0.1, 256, "c")


def test_a_corpus_that_likely_fits_no_window_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = corpus(tmp_path, "".join(f"line {i}\n" for i in range(100)) + "<|endoftext|>\n")
    with caplog.at_level(logging.WARNING, logger="gptpipe.sizes"):
        got = check_corpus(path, 0.1, 200, "c")  # 201 tokens: more than the 630 training bytes / 4
    assert got["corpus_train_bytes"] + got["corpus_val_bytes"] == path.stat().st_size
    assert "an estimate" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gptpipe.sizes"):
        check_corpus(path, 0.1, 16, "c")
    assert caplog.text == ""


def test_a_corpus_whose_validation_part_has_no_text(tmp_path: Path) -> None:
    path = corpus(tmp_path, "one long line without a break " * 20 + "\n")
    with pytest.raises(DataError, match=r"c: .*the validation split .* has no text.*tokenize.val_fraction"):
        check_corpus(path, 0.1, 8, "c")
