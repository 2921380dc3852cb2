"""classify(): the labels the evaluation code gives, probabilities that sum to one, truncation as
trained; reading texts from files and writing predictions."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest
import torch

from steps.data.readers import DataError
from steps.inference.classify import classify, read_texts, write_predictions
from steps.inference.loading import load
from steps.tasks.classification import Example, encode_examples, loader, predict
from tests.steps.inference import tiny_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = tiny_models.tokenizer()
    return {pooling: load(tiny_models.classifier_folder(root / pooling, tok, pooling))
            for pooling in ("last", "last_non_pad", "mean")} | {"lm": load(tiny_models.lm_folder(root, tok))}


TEXTS = tiny_models.TEXTS * 3 + ["x", "Win a free prize now, call to claim your cash reward " * 4]


@pytest.mark.parametrize("pooling", ["last", "last_non_pad", "mean"])
def test_the_labels_are_the_evaluation_codes_and_probabilities_sum_to_one(models, pooling: str) -> None:
    loaded = models[pooling]
    predictions = classify(loaded, TEXTS, batch_size=4)
    assert len(predictions) == len(TEXTS)
    items, truncated = encode_examples(loaded.tokenizer, [Example("ham", t) for t in TEXTS], loaded.labels,
                                       tiny_models.CLASSIFIER_MAX_LENGTH)
    assert truncated > 0  # the long texts are cut, as in training
    preds, _, _ = predict(loaded.model, loader(items, 4, loaded.eot_id, shuffle=False, seed=0),
                          torch.device("cpu"), pooling)
    assert [label for label, _ in predictions] == [loaded.labels[p] for p in preds]
    for label, probs in predictions:
        assert list(probs) == tiny_models.LABELS
        assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-6)
        assert probs[label] == max(probs.values())


def test_texts_are_cut_to_the_trained_length(models) -> None:
    loaded = models["last_non_pad"]
    long = TEXTS[-1]
    ids = loaded.tokenizer.encode(long, add_special_tokens=False).ids
    assert len(ids) > tiny_models.CLASSIFIER_MAX_LENGTH
    head = loaded.tokenizer.decode(ids[: tiny_models.CLASSIFIER_MAX_LENGTH])
    assert loaded.tokenizer.encode(head, add_special_tokens=False).ids == ids[: tiny_models.CLASSIFIER_MAX_LENGTH]
    shorter = loaded.tokenizer.decode(ids[: tiny_models.CLASSIFIER_MAX_LENGTH - 1])
    (got, probs), (cut, cut_probs), (_, shorter_probs) = classify(loaded, [long, head, shorter])
    assert got == cut and probs == pytest.approx(cut_probs, abs=1e-6)
    assert probs != pytest.approx(shorter_probs, abs=1e-6)  # the tokens up to the cut all count


def test_with_last_non_pad_pooling_the_batch_does_not_matter(models) -> None:
    loaded = models["last_non_pad"]
    one_by_one = [classify(loaded, [t])[0] for t in TEXTS[:5]]
    together = classify(loaded, TEXTS[:5], batch_size=5)
    for (a, pa), (b, pb) in zip(one_by_one, together):
        assert a == b and pa == pytest.approx(pb, abs=1e-5)


def test_only_a_classifier_classifies(models) -> None:
    with pytest.raises(ValueError, match=r"pretrain is a lm model, not a classifier: name a classifier"):
        classify(models["lm"], ["hello"])


def test_texts_come_from_lines_or_a_column(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first\n\nsecond, with a comma\n")
    assert read_texts(tmp_path / "a.txt") == ["first", "second, with a comma"]
    (tmp_path / "a.csv").write_text('id,message\n1,"hello, there"\n2,bye\n')
    assert read_texts(tmp_path / "a.csv", "message") == ["hello, there", "bye"]
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert read_texts(tmp_path / "a.jsonl") == ["one", "two"]
    with gzip.open(tmp_path / "b.csv.gz", "wt") as f:  # compressed: still a CSV, read by its column
        f.write("message\nhi\n")
    assert read_texts(tmp_path / "b.csv.gz", "message") == ["hi"]
    with pytest.raises(DataError, match=r"a.csv:2: missing field 'text' \(fields present: id, message\); "
                                        r"fix the record or set --column"):
        read_texts(tmp_path / "a.csv")
    with pytest.raises(DataError, match="--column is for CSV"):
        read_texts(tmp_path / "a.txt", "message")
    with pytest.raises(DataError, match="nothing.csv: no such file"):
        read_texts(tmp_path / "nothing.csv")


def test_predictions_are_written_as_csv_or_jsonl(tmp_path: Path) -> None:
    predictions = [("spam", {"ham": 0.25, "spam": 0.75}), ("ham", {"ham": 0.5, "spam": 0.5})]
    texts = ["win, now", "hi"]
    write_predictions(tmp_path / "p.jsonl", texts, predictions)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert rows[0] == {"text": "win, now", "label": "spam", "probabilities": {"ham": 0.25, "spam": 0.75}}
    write_predictions(tmp_path / "p.csv", texts, predictions)
    assert (tmp_path / "p.csv").read_text() == 'text,label,p_ham,p_spam\n"win, now",spam,0.25,0.75\nhi,ham,0.5,0.5\n'
    with pytest.raises(ValueError, match=r"p.txt: --output must end in .csv or .jsonl"):
        write_predictions(tmp_path / "p.txt", texts, predictions)
