"""The book's datasets, fetched from a loopback server the way the `book` profile fetches them:
counts, checksums and splits exactly as the book has them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.params import shipped_params
from steps.data.datasets import (
    DOC_SEPARATOR,
    classification_records,
    corpus_documents,
    instruction_records,
    write_classification,
    write_corpus,
    write_instructions,
)
from steps.data.sources import fetch_url
from steps.tasks.classification import read_labeled, split_examples
from steps.tasks.instruction import split_in_order

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def book(shared_data: Path, serve_folder, tmp_path: Path):
    """The book profile's download section, its URLs pointed at a loopback copy of ../shared."""
    server = serve_folder(shared_data / "book")
    profile = yaml.safe_load((ROOT / "profiles" / "book.yaml").read_text())["download"]
    names = {"corpus": "the-verdict.txt", "classification": "sms+spam+collection.zip",
             "instructions": "instruction-data.json"}
    for dataset, name in names.items():
        profile[dataset]["source"]["url"] = f"{server.url}/{name}"
    cfg = shipped_params({"download": profile}).download
    return cfg, tmp_path / "cache", tmp_path


def test_the_verdict_is_one_document(book) -> None:
    cfg, cache, tmp = book
    got = fetch_url(cfg.corpus.source, cache, tmp / "w")
    assert got.provenance["sha256"] == "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
    stats = write_corpus(corpus_documents(got, cfg.corpus), tmp / "corpus.txt", got.where)
    assert stats["corpus_documents"] == 1
    text = (tmp / "corpus.txt").read_text(encoding="utf-8")
    assert text == got.files[0].read_text(encoding="utf-8").rstrip("\n") + f"\n{DOC_SEPARATOR}\n"


def test_sms_spam_collection_counts_and_the_books_split(book) -> None:
    cfg, cache, tmp = book
    got = fetch_url(cfg.classification.source, cache, tmp / "w")
    assert got.provenance["member_sha256"] == "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"
    out = tmp / "classification.jsonl"
    stats = write_classification(classification_records(got, cfg.classification), cfg.classification.labels,
                                 out, tmp / "labels.json", got.where)
    assert stats["classification_records"] == 5574  # no quote handling: pandas' default sees 5,572
    assert json.loads((tmp / "labels.json").read_text()) == ["ham", "spam"]  # ham = 0, spam = 1
    examples = read_labeled(out)
    assert Counter(e.label for e in examples) == {"ham": 4827, "spam": 747}

    splits = split_examples(examples, 123, 0.7, 0.1, balance=True, labels=["ham", "spam"])
    assert {k: len(v) for k, v in splits.items()} == {"train": 1045, "val": 149, "test": 300}
    pool = [e for part in splits.values() for e in part]
    assert Counter(e.label for e in pool) == {"ham": 747, "spam": 747}


def test_instruction_data_split_in_file_order(book) -> None:
    cfg, cache, tmp = book
    got = fetch_url(cfg.instructions.source, cache, tmp / "w")
    stats = write_instructions(instruction_records(got, cfg.instructions), tmp / "i.json", got.where)
    assert stats["instruction_records"] == 1100
    assert stats["instruction_records_with_input"] == 1100 - 775
    records = json.loads((tmp / "i.json").read_text(encoding="utf-8"))
    splits = split_in_order(records)
    assert {k: len(v) for k, v in splits.items()} == {"train": 935, "test": 110, "val": 55}
    assert records == json.loads(got.files[0].read_text(encoding="utf-8"))  # nothing altered
