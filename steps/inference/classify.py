"""Classify texts with a finetuned classifier: the tokenization, truncation, padding and pooling
it was trained and evaluated with (steps/tasks/classification.py), in batches."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from model.atomic import write_text
from steps.data.readers import (
    FORMAT_BY_SUFFIX,
    DataError,
    data_suffix,
    iter_lines,
    read_records,
    text_field,
)
from steps.inference.loading import LoadedModel
from steps.tasks.classification import Example, class_logits, collate, encode_examples

Prediction = tuple[str, dict[str, float]]
"""The most likely label and every label's probability."""


def require_classifier(loaded: LoadedModel) -> None:
    if loaded.kind != "classifier" or not loaded.labels:
        raise ValueError(f"{loaded.source} is a{'n' if loaded.kind == 'instruct' else ''} {loaded.kind} model, not a "
                         "classifier: name a classifier (e.g. models/classifier, models:/gptpipe-classifier@champion)")


@torch.inference_mode()
def classify(loaded: LoadedModel, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
    """(label, {label: probability}) per text, in order; `batch_size` texts share a forward pass.

    Texts longer than the classifier's max_length are cut to it, as in training. With `last`
    pooling (the book's) the score is read after the padding, so a text's probabilities depend a
    little on the longest text in its batch, as in the evaluate stage.
    """
    require_classifier(loaded)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    labels = loaded.labels
    assert labels is not None and loaded.max_length is not None and loaded.pooling is not None
    # encode_examples wants labelled examples: the first label stands in, and is never read.
    examples = [Example(labels[0], text) for text in texts]
    items, _ = encode_examples(loaded.tokenizer, examples, labels, loaded.max_length)
    predictions: list[Prediction] = []
    for start in range(0, len(items), batch_size):
        batch = tuple(t.to(loaded.device) for t in collate(items[start : start + batch_size], loaded.eot_id))
        probs = torch.softmax(class_logits(loaded.model, batch, loaded.pooling).float(), dim=-1)  # (B, K)
        for row in probs.tolist():
            best = max(range(len(labels)), key=row.__getitem__)
            predictions.append((labels[best], dict(zip(labels, row))))
    return predictions


def read_texts(path: Path, column: str | None = None) -> list[str]:
    """The texts of a file: a CSV / TSV / JSON(L) / Parquet file's `column` (default `text`), or
    the non-empty lines of any other file."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = FORMAT_BY_SUFFIX.get(data_suffix(path), "txt")  # `texts.csv.gz` is a CSV
    if fmt == "txt":
        if column:
            raise DataError(f"{path}: --column is for CSV, TSV, JSON, JSONL and Parquet files; this one is read "
                            "line by line")
        return [line.rstrip("\r\n") for _, line in iter_lines(path) if line.strip()]
    texts = [text_field(record, column or "text", "--column") for record in read_records(path, fmt)]
    if not texts:
        raise DataError(f"{path}: no records")
    return texts


def write_predictions(path: Path, texts: Sequence[str], predictions: Sequence[Prediction]) -> None:
    """`.csv`: text, label and one `p_<label>` column per class; `.jsonl`: one object per text
    with `text`, `label` and `probabilities`. Written atomically."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        write_text(path, "".join(json.dumps({"text": t, "label": label, "probabilities": probs}, ensure_ascii=False)
                                 + "\n" for t, (label, probs) in zip(texts, predictions)))
        return
    if suffix != ".csv":
        raise ValueError(f"{path}: --output must end in .csv or .jsonl")
    names = list(predictions[0][1]) if predictions else []
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label", *(f"p_{name}" for name in names)])
    for text, (label, probs) in zip(texts, predictions):
        writer.writerow([text, label, *(repr(probs[name]) for name in names)])
    write_text(path, out.getvalue())
