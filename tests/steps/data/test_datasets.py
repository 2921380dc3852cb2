"""Tests for writing the normalized datasets (steps/data/datasets.py), from every kind of input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from steps.config import (
    BuiltinSizes,
    BuiltinSource,
    ClassificationSource,
    CorpusSource,
    InstructionSource,
    PreferenceSource,
)
from steps.data.builtin_data import preference_property
from steps.data.datasets import (
    DOC_SEPARATOR,
    builtin_classification,
    builtin_documents,
    builtin_instructions,
    builtin_preferences,
    classification_records,
    corpus_documents,
    instruction_records,
    preference_records,
    write_classification,
    write_corpus,
    write_instructions,
    write_preferences,
)
from steps.data.readers import DataError
from steps.data.sources import Fetched
from steps.tasks.splits import instruction_splits

BUILTIN = BuiltinSource()  # the reading options under test apply to any source
SIZES = BuiltinSizes(corpus_bytes=20_000, sms_messages=60, instructions_train=20, instructions_test=5,
                     instructions_val=5, preferences=40)


def files(*paths: Path) -> Fetched:
    return Fetched(where="test", files=list(paths))


def documents_of(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith(f"\n{DOC_SEPARATOR}\n")
    return text[: -len(DOC_SEPARATOR) - 2].split(f"\n{DOC_SEPARATOR}\n")


def test_a_folder_of_text_files_gives_one_document_per_file(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("First paragraph.\n\nSecond paragraph of a.\n")
    b = tmp_path / "b.txt"
    b.write_text("Only b, no final newline")
    blank = tmp_path / "c.txt"
    blank.write_text("\n  \n")
    out = tmp_path / "raw" / "corpus.txt"
    stats = write_corpus(corpus_documents(files(a, blank, b), CorpusSource(source=BUILTIN)), out, "test")
    assert documents_of(out) == ["First paragraph.\n\nSecond paragraph of a.", "Only b, no final newline"]
    assert stats == {"corpus_documents": 2, "corpus_blank_documents_dropped": 1,
                     "corpus_bytes": out.stat().st_size}


def test_corpus_from_records_uses_the_text_field(tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text('{"body": "doc one"}\n{"body": "doc two"}\n')
    out = tmp_path / "corpus.txt"
    write_corpus(corpus_documents(files(src), CorpusSource(source=BUILTIN, text_field="body")), out, "test")
    assert documents_of(out) == ["doc one", "doc two"]
    with pytest.raises(DataError, match=r"docs.jsonl:1: missing field 'text'.*download.corpus.text_field"):
        write_corpus(corpus_documents(files(src), CorpusSource(source=BUILTIN)), tmp_path / "other.txt", "test")
    assert not (tmp_path / "other.txt").exists()


def test_an_empty_corpus_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n\n")
    out = tmp_path / "raw" / "corpus.txt"
    with pytest.raises(DataError, match="the corpus is empty"):
        write_corpus(corpus_documents(files(blank), CorpusSource(source=BUILTIN)), out, "data/local/blank.txt")
    assert list(out.parent.iterdir()) == []


def test_non_utf8_text_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ok\n" + "café\n".encode("latin-1"))
    out = tmp_path / "raw" / "corpus.txt"
    with pytest.raises(DataError, match=rf"{bad}:2: bytes that are not UTF-8"):
        write_corpus(corpus_documents(files(bad), CorpusSource(source=BUILTIN)), out, "test")
    assert list(out.parent.iterdir()) == []


def test_classification_from_csv_with_label_names(tmp_path: Path) -> None:
    src = tmp_path / "reviews.csv"
    src.write_text("review,sentiment\ngreat film,pos\n\"bad, awful\",neg\nfine,neu\n")
    cfg = ClassificationSource(source=BUILTIN, text_field="review", label_field="sentiment", labels=["neg", "neu", "pos"])
    out, labels_out = tmp_path / "c.jsonl", tmp_path / "labels.json"
    stats = write_classification(classification_records(files(src), cfg), cfg.labels, out, labels_out, "test")
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"label": "pos", "text": "great film"}, {"label": "neg", "text": "bad, awful"},
        {"label": "neu", "text": "fine"}]
    assert json.loads(labels_out.read_text()) == ["neg", "neu", "pos"]  # the configured id order
    assert stats["classification_records"] == 3 and stats["classification_labels"] == 3


def test_a_label_outside_the_label_set_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    src = tmp_path / "sms.csv"
    src.write_text("text,label\nhi,ham\nwin,spam\nhm,maybe\n")
    cfg = ClassificationSource(source=BUILTIN, labels=["ham", "spam"])
    out = tmp_path / "c.jsonl"
    with pytest.raises(DataError, match=r"sms.csv:4: label 'maybe' is not one of \['ham', 'spam'\]"):
        write_classification(classification_records(files(src), cfg), cfg.labels, out, tmp_path / "l.json", "test")
    assert not out.exists() and not (tmp_path / "l.json").exists()


def test_a_row_missing_its_label_is_named(tmp_path: Path) -> None:
    src = tmp_path / "sms.csv"
    src.write_text("text,label\nhi,ham\nno label\n")
    with pytest.raises(DataError, match=r"sms.csv:3: missing field 'label'"):
        write_classification(classification_records(files(src), ClassificationSource(source=BUILTIN)), None,
                             tmp_path / "c.jsonl", tmp_path / "l.json", "test")


def test_one_label_is_not_a_classification_task(tmp_path: Path) -> None:
    src = tmp_path / "one.jsonl"
    src.write_text('{"text": "a", "label": "x"}\n')
    out = tmp_path / "c.jsonl"
    with pytest.raises(DataError, match="needs at least two"):
        write_classification(classification_records(files(src), ClassificationSource(source=BUILTIN)), None, out,
                             tmp_path / "l.json", "test")
    assert not out.exists()


def test_instructions_through_a_field_mapping(tmp_path: Path) -> None:
    src = tmp_path / "chat.jsonl"
    src.write_text('{"prompt": "Say hi", "context": "to Bob", "response": "Hi Bob"}\n'
                   '{"prompt": "Count", "response": "1 2 3"}\n')
    cfg = InstructionSource.model_validate(
        {"source": {"kind": "builtin"}, "fields": {"instruction": "prompt", "input": "context", "output": "response"}})
    out = tmp_path / "instructions.json"
    stats = write_instructions(instruction_records(files(src), cfg), out, "test")
    assert json.loads(out.read_text()) == [
        {"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"},
        {"instruction": "Count", "input": "", "output": "1 2 3"}]
    assert stats == {"instruction_records": 2, "instruction_records_with_input": 1}
    no_input = InstructionSource.model_validate(
        {"source": {"kind": "builtin"}, "fields": {"instruction": "prompt", "input": None, "output": "response"}})
    assert all(r["input"] == "" for r in instruction_records(files(src), no_input))


def test_instruction_missing_its_output_is_named(tmp_path: Path) -> None:
    src = tmp_path / "bad.json"
    src.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]')
    with pytest.raises(DataError, match=r"bad.json: record 1: missing field 'output'.*fields.output"):
        write_instructions(instruction_records(files(src), InstructionSource(source=BUILTIN)), tmp_path / "i.json", "test")
    assert not (tmp_path / "i.json").exists()


def test_builtin_world_goes_through_the_same_writers(tmp_path: Path) -> None:
    stats = write_corpus(builtin_documents(1, SIZES), tmp_path / "corpus.txt", "builtin")
    assert stats["corpus_documents"] > 10
    stats = write_classification(builtin_classification(1, SIZES), None, tmp_path / "c.jsonl",
                                 tmp_path / "labels.json", "builtin")
    assert json.loads((tmp_path / "labels.json").read_text()) == ["ham", "spam"]
    assert stats["classification_records"] == 60
    assert write_instructions(builtin_instructions(1, SIZES), tmp_path / "i.json", "b")["instruction_records"] == 30
    assert write_preferences(builtin_preferences(1, SIZES), tmp_path / "p.json", "b")["preference_records"] == 40


def test_a_numeric_output_is_an_error_naming_the_record(tmp_path: Path) -> None:
    # It used to become the text "42" without a word.
    src = tmp_path / "math.json"
    src.write_text('[{"instruction": "Add 40 and 2", "input": NaN, "output": "42"},\n'
                   ' {"instruction": "Add 1 and 2", "input": "", "output": 3}]')
    first = next(instruction_records(files(src), InstructionSource(source=BUILTIN)))
    assert first == {"instruction": "Add 40 and 2", "input": "", "output": "42"}  # a NaN input is no input
    with pytest.raises(DataError, match=r"math.json: record 1: field 'output' is 3, not text; quote it in the file "
                                        r"\(\"3\"\)"):
        write_instructions(instruction_records(files(src), InstructionSource(source=BUILTIN)), tmp_path / "i.json", "t")


@pytest.mark.parametrize("name, content, where", [
    ("nan.jsonl", '{"text": "hi", "label": "ham"}\n{"text": "yo", "label": "spam"}\n{"text": "x", "label": NaN}\n',
     "nan.jsonl:3"),
    ("nan.csv", "text,label\nhi,ham\nyo,spam\nx,NaN\n", "nan.csv:4"),
    ("empty.csv", "text,label\nhi,ham\nyo,spam\nx,\n", "empty.csv:4"),
])
def test_a_missing_label_is_an_error_not_a_class(tmp_path: Path, name: str, content: str, where: str) -> None:
    # A NaN label used to become a third class "nan".
    src = tmp_path / name
    src.write_text(content)
    with pytest.raises(DataError, match=rf"{where}: the record has no label \(an empty, NaN or null value\).*"
                                        r"unlisted_labels: drop"):
        write_classification(classification_records(files(src), ClassificationSource(source=BUILTIN)), None,
                             tmp_path / "c.jsonl", tmp_path / "l.json", "test")


def test_unlisted_labels_drop_keeps_the_listed_ones_and_counts_the_rest(tmp_path: Path, caplog) -> None:
    # Rotten Tomatoes-like: `plot` besides fresh / rotten, and a record without a label.
    src = tmp_path / "rt.csv"
    src.write_text("text,label\na,fresh\nb,plot\nc,rotten\nd,plot\ne,\nf,fresh\n")
    cfg = ClassificationSource(source=BUILTIN, labels=["rotten", "fresh"], unlisted_labels="drop")
    out, labels_out = tmp_path / "c.jsonl", tmp_path / "l.json"
    with caplog.at_level("WARNING", logger="gptpipe.datasets"):
        stats = write_classification(classification_records(files(src), cfg), cfg.labels, out, labels_out, "rt.csv",
                                     unlisted_labels=cfg.unlisted_labels)
    assert [json.loads(line)["label"] for line in out.read_text().splitlines()] == ["fresh", "rotten", "fresh"]
    assert json.loads(labels_out.read_text()) == ["rotten", "fresh"]
    assert stats["classification_records"] == 3 and stats["classification_records_dropped"] == 3
    assert "rt.csv: dropped 3 record(s) whose label is not in download.classification.labels ['rotten', 'fresh']: " \
           "plot 2, (no label) 1" in caplog.text
    with pytest.raises(DataError, match=r"rt.csv:3: label 'plot' is not one of \['rotten', 'fresh'\].*"
                                        r"unlisted_labels: drop"):
        write_classification(classification_records(files(src), cfg), cfg.labels, out, labels_out, "rt.csv",
                             unlisted_labels="error")


def test_a_corpus_with_a_byte_order_mark_keeps_it_out_of_the_text(tmp_path: Path) -> None:
    src = tmp_path / "doc.txt"
    src.write_bytes("\ufeffOnce upon a time.\n".encode("utf-8"))
    out = tmp_path / "corpus.txt"
    write_corpus(corpus_documents(files(src), CorpusSource(source=BUILTIN)), out, "test")
    assert documents_of(out) == ["Once upon a time."]


def test_dropping_unlisted_labels_needs_the_list() -> None:
    with pytest.raises(ValueError, match="unlisted_labels: drop needs `labels`"):
        ClassificationSource(source=BUILTIN, unlisted_labels="drop")


# --- preferences ----------------------------------------------------------------------------------

PREFERENCES = PreferenceSource(source=BUILTIN)


def preference_file(tmp_path: Path, records: str, name: str = "prefs.json") -> Path:
    path = tmp_path / name
    path.write_text(records)
    return path


def test_preferences_through_a_field_mapping(tmp_path: Path) -> None:
    src = preference_file(tmp_path, '{"q": "Say hi", "ctx": "to Bob", "good": "Hi Bob!", "bad": "No.", "output": "x"}\n'
                                    '{"q": "Count", "ctx": null, "good": "1 2 3", "bad": "Count yourself."}\n',
                          "prefs.jsonl")
    cfg = PreferenceSource.model_validate({"source": {"kind": "builtin"}, "fields": {
        "instruction": "q", "input": "ctx", "chosen": "good", "rejected": "bad"}})
    out = tmp_path / "preferences.json"
    stats = write_preferences(preference_records(files(src), cfg), out, "test")
    assert json.loads(out.read_text()) == [
        {"instruction": "Say hi", "input": "to Bob", "chosen": "Hi Bob!", "rejected": "No."},
        {"instruction": "Count", "input": "", "chosen": "1 2 3", "rejected": "Count yourself."}]
    assert stats == {"preference_records": 2, "preference_records_with_input": 1, "preference_identical_pairs": 0}


def test_preferences_from_rows_keep_their_order() -> None:
    rows = [{"instruction": f"q{i}", "input": "", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(5)]
    got = list(preference_records(Fetched(where="hf:x[train]", rows=rows), PREFERENCES))
    assert [(where, r["instruction"]) for where, r in got] == [(f"hf:x[train] row {i}", f"q{i}") for i in range(5)]


@pytest.mark.parametrize("missing", ["chosen", "rejected"])
def test_a_preference_missing_a_response_is_named(tmp_path: Path, missing: str) -> None:
    record = {"instruction": "a", "input": "", "chosen": "good", "rejected": "bad"}
    del record[missing]
    src = preference_file(tmp_path, json.dumps([{"instruction": "q", "chosen": "c", "rejected": "r"}, record]))
    with pytest.raises(DataError, match=rf"prefs.json: record 1: missing field '{missing}' \(fields present: "
                                        rf".*\); fix the record or set download.preferences.fields.{missing}"):
        write_preferences(preference_records(files(src), PREFERENCES), tmp_path / "p.json", "test")
    assert not (tmp_path / "p.json").exists()


IDENTICAL = [{"instruction": "Capital?", "chosen": "Paris.", "rejected": "It is Paris, obviously."},
             {"instruction": "Sum?", "chosen": "4.", "rejected": "  4.\n"}]


@pytest.mark.parametrize("rejected", ["Paris.", "  Paris.\n", "Paris. "])
def test_identical_chosen_and_rejected_is_an_error_naming_the_record(tmp_path: Path, rejected: str) -> None:
    src = preference_file(tmp_path, json.dumps({"instruction": "Capital?", "chosen": "Paris.", "rejected": rejected})
                          + "\n", "prefs.jsonl")
    with pytest.raises(DataError) as err:
        write_preferences(preference_records(files(src), PREFERENCES), tmp_path / "p.json", str(src))
    assert str(err.value) == (
        f"{src}:1: the chosen and rejected responses (download.preferences.fields.chosen and .rejected) are the "
        f"same text ('Paris.'); a preference pair needs a preferred and a dispreferred response that differ: fix "
        f"the record or remove it, or set download.preferences.identical_pairs: drop (leave such records out) or "
        f"keep (train on them as they are, as the book does)")
    assert not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(("policy", "kept"), [("drop", ["Capital?"]), ("keep", ["Capital?", "Sum?"])])
def test_identical_pairs_can_be_dropped_or_kept_and_are_counted(tmp_path: Path, caplog, policy: str,
                                                                 kept: list[str]) -> None:
    src = preference_file(tmp_path, json.dumps(IDENTICAL))
    out = tmp_path / "p.json"
    with caplog.at_level(logging.WARNING, logger="gptpipe.datasets"):
        stats = write_preferences(preference_records(files(src), PREFERENCES), out, "prefs.json", policy)
    assert [r["instruction"] for r in json.loads(out.read_text())] == kept
    assert (stats["preference_records"], stats["preference_identical_pairs"]) == (len(kept), 1)
    assert f"prefs.json: {policy.replace('drop', 'dropped').replace('keep', 'kept')} 1 record(s)" in caplog.text


@pytest.mark.parametrize(("value", "says"), [
    ("3", r"field 'rejected' is 3, not text"),
    ('["a", "b"]', r"field 'rejected' is a list, expected text"),
    ("null", r"field 'rejected' is None \(a missing value\)"),
    ('"  "', r"field 'rejected' is empty"),
])
def test_a_preference_field_that_is_not_text_is_named(tmp_path: Path, value: str, says: str) -> None:
    src = preference_file(tmp_path, f'[{{"instruction": "q", "chosen": "c", "rejected": {value}}}]')
    with pytest.raises(DataError, match=rf"prefs.json: record 0: {says}"):
        list(preference_records(files(src), PREFERENCES))


def test_a_non_text_instruction_or_input_is_named(tmp_path: Path) -> None:
    src = preference_file(tmp_path, '[{"instruction": "q", "input": 7, "chosen": "c", "rejected": "r"}]')
    with pytest.raises(DataError, match=r"prefs.json: record 0: field 'input' is 7, not text"):
        list(preference_records(files(src), PREFERENCES))
    src = preference_file(tmp_path, '[{"instruction": {"a": 1}, "chosen": "c", "rejected": "r"}]')
    with pytest.raises(DataError, match=r"prefs.json: record 0: field 'instruction' is a dict, expected text"):
        list(preference_records(files(src), PREFERENCES))


def test_no_preference_records_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data/local/p.json: no preference records"):
        write_preferences(iter([]), tmp_path / "p.json", "data/local/p.json")


def test_builtin_preferences_put_the_held_out_records_where_the_split_reads_them() -> None:
    records = [r for _, r in builtin_preferences(3, SIZES)]
    splits = instruction_splits(len(records))  # the 85/10/5 split in file order the stage makes
    train = records[:splits.train]
    held_out = records[splits.train:]
    assert (len(train), len(held_out)) == (34, 6)
    assert not {(r["instruction"], r["input"]) for r in train} & {(r["instruction"], r["input"]) for r in held_out}
    assert all(preference_property(r, r["chosen"]) and not preference_property(r, r["rejected"]) for r in records)
