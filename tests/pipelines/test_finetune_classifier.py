"""Tests for the finetune_classifier stage's body (pipelines/finetune_classifier.py) on data too
small to split, in a scratch folder: it must stop with a clear error before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.atomic import write_json
from pipelines.finetune_classifier import finetune
from pipelines.stage import NoTracking, StageContext
from steps import layout
from steps.tasks.classification import Example, write_labeled
from steps.tokenization.tokenizer import train_bpe
from tests.params import shipped_params


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project with a tokenizer where the pretrain stage leaves it (the stage reads the
    data before it loads any model)."""
    monkeypatch.chdir(tmp_path)
    layout.PRETRAIN_MODEL.mkdir(parents=True)
    train_bpe(["win a prize now", "see you at lunch"] * 5, vocab_size=300).save(
        str(layout.PRETRAIN_MODEL / layout.MODEL_TOKENIZER))
    write_json(layout.LABELS, ["ham", "spam"])
    return tmp_path


def run() -> dict[str, float]:
    params = shipped_params({"finetune_classifier": {"train_fraction": 0.7, "val_fraction": 0.1, "balance": False}})
    return finetune.fn(StageContext("finetune_classifier", params, NoTracking()))


def test_five_messages_stop_with_the_empty_split_named_not_a_zero_division(project: Path) -> None:
    # Issue 19: 5 rows pretrained, then crashed with a bare ZeroDivisionError (no validation message).
    write_labeled(layout.CLASSIFICATION, [Example("ham" if i % 2 else "spam", f"message {i}") for i in range(5)])
    with pytest.raises(ValueError) as err:
        run()
    assert str(err.value) == (
        f"{layout.CLASSIFICATION}: the val split is empty (5 records split as train 3, val 0, test 2); finetuning "
        "needs at least one record in every split: use at least 10 messages for finetune_classifier.train_fraction "
        "0.7 and val_fraction 0.1, or change those fractions")


def test_a_train_split_of_one_label_is_refused(project: Path) -> None:
    examples = [Example("ham", f"message {i}") for i in range(9)] + [Example("spam", "win")]
    write_labeled(layout.CLASSIFICATION, examples)
    with pytest.raises(ValueError, match=rf"^{layout.CLASSIFICATION}: the train split holds one label only \('ham', "
                                         r"7 messages\): a classifier needs examples of two labels at least"):
        run()
