"""Write the three datasets the pipeline starts from, in one normalized shape whatever their source.

- corpus: UTF-8 text, documents separated by a line that is exactly `<|endoftext|>` (a folder of
  .txt files gives one document per file; record formats one per record);
- classification: JSON lines `{"label": ..., "text": ...}`, plus `labels.json` (names in id order);
- instructions: a JSON list of `{"instruction", "input", "output"}` records, the book's shape;
- preferences: a JSON list of `{"instruction", "input", "chosen", "rejected"}` records, in file
  order (finetune_preference splits them 85/10/5 in that order, as the book does).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from model.atomic import atomic_path, write_json, write_text
from steps.config import (
    BuiltinSizes,
    ClassificationSource,
    CorpusSource,
    DatasetSource,
    InstructionSource,
    PreferenceSource,
)
from steps.data import builtin_data
from steps.data.readers import (
    DataError,
    Record,
    detect_format,
    is_missing,
    iter_lines,
    label_field,
    read_records,
    records_of_rows,
    text_field,
)
from steps.data.sources import Fetched
from steps.tasks.splits import instruction_splits

DOC_SEPARATOR = "<|endoftext|>"
MISSING = "(no label)"
"""How dropped records without a label are counted."""
log = logging.getLogger("gptpipe.datasets")


# --- corpus -------------------------------------------------------------------------------------

def corpus_documents(fetched: Fetched, cfg: CorpusSource) -> Iterator[Iterable[str]]:
    """Each document as an iterable of text pieces (a .txt file streams line by line)."""
    if fetched.rows is not None:
        for record in records_of_rows(fetched.rows, fetched.where):
            yield [text_field(record, cfg.text_field, "download.corpus.text_field", allow_empty=True)]
        return
    for path in fetched.files:
        if detect_format(path, cfg.format) == "txt":
            yield (line for _, line in iter_lines(path))
        else:
            for record in read_records(path, cfg.format, cfg.header, cfg.columns):
                yield [text_field(record, cfg.text_field, "download.corpus.text_field", allow_empty=True)]


def builtin_documents(seed: int, sizes: BuiltinSizes) -> Iterator[Iterable[str]]:
    text = builtin_data.generate_corpus(seed, target_bytes=sizes.corpus_bytes)
    for block in text.split("\n\n"):
        yield [block]


def write_corpus(documents: Iterable[Iterable[str]], out: Path, where: str) -> dict[str, float]:
    """Stream documents into the corpus file; blank documents are dropped, an empty corpus is an error."""
    n_docs = n_blank = 0
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        for doc in documents:
            start = f.tell()
            has_text = False
            last = ""
            for piece in doc:
                if not piece:
                    continue
                has_text = has_text or bool(piece.strip())
                f.write(piece)
                last = piece[-1]
            if not has_text:
                # Rewind rather than buffer: a document can be larger than memory.
                f.seek(start)
                f.truncate()
                n_blank += 1
                continue
            f.write(("" if last == "\n" else "\n") + DOC_SEPARATOR + "\n")
            n_docs += 1
        size = f.tell()
        if n_docs == 0:
            raise DataError(f"{where}: the corpus is empty (no document has any text); "
                            f"check download.corpus.source and text_field")
    return {"corpus_documents": n_docs, "corpus_blank_documents_dropped": n_blank, "corpus_bytes": size}


# --- classification -----------------------------------------------------------------------------

def classification_records(fetched: Fetched, cfg: ClassificationSource) -> Iterator[tuple[str, str | None, str]]:
    """(where, label, text) of every record; the label is None where the record has none (an
    empty, NaN or null value)."""
    for record in _records(fetched, cfg):
        label = label_field(record, cfg.label_field, "download.classification.label_field")
        text = text_field(record, cfg.text_field, "download.classification.text_field")
        yield record.where, label, text


def builtin_classification(seed: int, sizes: BuiltinSizes) -> Iterator[tuple[str, str, str]]:
    for i, (label, text) in enumerate(builtin_data.generate_sms(seed, n_messages=sizes.sms_messages)):
        yield f"builtin sms {i}", label, text


def write_classification(
    examples: Iterable[tuple[str, str | None, str]], labels: list[str] | None, out: Path, labels_out: Path,
    where: str, unlisted_labels: str = "error",
) -> dict[str, float]:
    """JSON lines of {label, text}; label names in id order go to `labels_out`.

    A record without a label, or (when `labels` lists them) with a label not listed, is an error,
    or with `unlisted_labels: drop` is left out and counted (per label in the log, in total in
    the metrics).
    """
    allowed = set(labels) if labels is not None else None
    counts: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec_where, label, text in examples:
            if label is None or (allowed is not None and label not in allowed):
                if unlisted_labels != "drop":
                    raise DataError(_unlisted_message(rec_where, label, labels))
                dropped[MISSING if label is None else label] += 1
                continue
            f.write(json.dumps({"label": label, "text": text}, ensure_ascii=False) + "\n")
            counts[label] += 1
    if dropped:
        log.warning("%s: dropped %d record(s) whose label is not in download.classification.labels %s: %s",
                    where, sum(dropped.values()), labels,
                    ", ".join(f"{name} {n}" for name, n in dropped.most_common()))
    names = list(labels) if labels is not None else sorted(counts)
    if sum(counts.values()) == 0:
        out.unlink()
        raise DataError(f"{where}: no labelled records" + (f" ({sum(dropped.values())} dropped: their labels are "
                                                           f"not in {labels})" if dropped else ""))
    if len(names) < 2:
        out.unlink()
        raise DataError(f"{where}: found only the label(s) {names}; a classifier needs at least two")
    write_json(labels_out, names)
    metrics: dict[str, float] = {"classification_records": sum(counts.values()), "classification_labels": len(names),
                                 "classification_records_dropped": sum(dropped.values())}
    metrics["classification_minority_share"] = min(counts[n] for n in names) / sum(counts.values())
    return metrics


def _unlisted_message(where: str, label: str | None, labels: list[str] | None) -> str:
    drop = "set download.classification.unlisted_labels: drop to leave such records out (they are counted)"
    if label is None:
        return (f"{where}: the record has no label (an empty, NaN or null value); give it one or remove it, "
                f"or list the labels to keep in download.classification.labels and {drop}")
    return (f"{where}: label {label!r} is not one of {labels} (download.classification.labels); fix the record, "
            f"add the label, or {drop}")


def label_counts(path: Path) -> Counter[str]:
    """Records per label of a written classification file."""
    with open(path, encoding="utf-8") as f:
        return Counter(json.loads(line)["label"] for line in f)


# --- instructions -------------------------------------------------------------------------------

def instruction_records(fetched: Fetched, cfg: InstructionSource) -> Iterator[dict[str, str]]:
    """{instruction, input, output} for every record, through the configured field mapping."""
    m = cfg.fields
    for record in _records(fetched, cfg):
        yield {
            "instruction": text_field(record, m.instruction, "download.instructions.fields.instruction"),
            "input": optional_input(record, m.input, "download.instructions.fields.input"),
            "output": text_field(record, m.output, "download.instructions.fields.output"),
        }


def optional_input(record: Record, field: str | None, param: str) -> str:
    """The record's input text; "" when the mapping has no input field, or the record has none
    (absent, null, or NaN: pandas' empty cell). Instruction and response fields are required."""
    if field is None or is_missing(record.fields.get(field)):
        return ""
    return text_field(record, field, param, allow_empty=True)


def builtin_instructions(seed: int, sizes: BuiltinSizes) -> list[dict[str, str]]:
    return builtin_data.generate_instructions(
        seed, n_train=sizes.instructions_train, n_test=sizes.instructions_test, n_val=sizes.instructions_val
    )


def write_instructions(records: Iterable[dict[str, str]], out: Path, where: str) -> dict[str, float]:
    data = list(records)
    if not data:
        raise DataError(f"{where}: no instruction records")
    write_text(out, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return {"instruction_records": len(data),
            "instruction_records_with_input": sum(1 for r in data if r["input"].strip())}


# --- preferences --------------------------------------------------------------------------------

def preference_records(fetched: Fetched, cfg: PreferenceSource) -> Iterator[tuple[str, dict[str, str]]]:
    """(where, {instruction, input, chosen, rejected}) of every record, through the configured
    field mapping."""
    m = cfg.fields
    for record in _records(fetched, cfg):
        yield record.where, {
            "instruction": text_field(record, m.instruction, "download.preferences.fields.instruction"),
            "input": optional_input(record, m.input, "download.preferences.fields.input"),
            "chosen": text_field(record, m.chosen, "download.preferences.fields.chosen"),
            "rejected": text_field(record, m.rejected, "download.preferences.fields.rejected"),
        }


def builtin_preferences(seed: int, sizes: BuiltinSizes) -> Iterator[tuple[str, dict[str, str]]]:
    """The generated preference set, its train / test / validation counts those the 85/10/5 split
    in file order gives, so the held-out records land exactly in the test and validation splits."""
    splits = instruction_splits(sizes.preferences)
    records = builtin_data.generate_preferences(seed, n_train=splits.train, n_test=splits.test, n_val=splits.val)
    for i, record in enumerate(records):
        yield f"builtin preferences record {i}", record


def write_preferences(pairs: Iterable[tuple[str, dict[str, str]]], out: Path, where: str,
                      identical_pairs: str = "error") -> dict[str, float]:
    """A JSON list of the records in file order. A record whose chosen and rejected responses are
    the same text (spaces aside) teaches no preference: an error naming it, or with
    `identical_pairs: drop` left out, or with `keep` written as it is; both counted."""
    data: list[dict[str, str]] = []
    identical = 0
    for rec_where, record in pairs:
        if record["chosen"].split() == record["rejected"].split():
            if identical_pairs == "error":
                raise DataError(
                    f"{rec_where}: the chosen and rejected responses (download.preferences.fields.chosen and "
                    f".rejected) are the same text ({_excerpt(record['chosen'])}); "
                    f"a preference pair needs a preferred and a dispreferred response that differ: fix the record "
                    f"or remove it, or set download.preferences.identical_pairs: drop (leave such records out) or "
                    f"keep (train on them as they are, as the book does)")
            identical += 1
            if identical_pairs == "drop":
                continue
        data.append(record)
    if identical:
        log.warning("%s: %s %d record(s) whose chosen and rejected responses are the same "
                    "(download.preferences.identical_pairs: %s)", where,
                    "dropped" if identical_pairs == "drop" else "kept", identical, identical_pairs)
    if not data:
        raise DataError(f"{where}: no preference records")
    write_text(out, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return {"preference_records": len(data),
            "preference_records_with_input": sum(1 for r in data if r["input"].strip()),
            "preference_identical_pairs": identical}


def _records(fetched: Fetched, cfg: DatasetSource) -> Iterable[Record]:
    """The records of a fetched source: its rows, or its files' records in order."""
    if fetched.rows is not None:
        return records_of_rows(fetched.rows, fetched.where)
    return (r for path in fetched.files for r in read_records(path, cfg.format, cfg.header, cfg.columns))


def _excerpt(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def write_provenance(out: Path, provenance: dict[str, Any]) -> None:
    """What each dataset was made from (urls, checksums, revisions, files): the data's pedigree."""
    write_json(out, provenance)
