"""Read dataset files (txt, jsonl, json, csv, tsv, parquet) as records; every error names file and record."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT_BY_SUFFIX = {
    ".txt": "txt", ".text": "txt", ".md": "txt",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv", ".tab": "tsv",
    ".parquet": "parquet",
}


class DataError(ValueError):
    """Bad input data; the message names the file, the record or line, the field and the fix."""


@dataclass(frozen=True)
class Record:
    where: str
    """`file:line` or `file: record N`, for error messages."""
    fields: Mapping[str, Any]


def detect_format(path: Path, fmt: str) -> str:
    """The configured format, or the one the file's extension implies."""
    if fmt != "auto":
        return fmt
    found = FORMAT_BY_SUFFIX.get(path.suffix.lower())
    if found is None:
        known = ", ".join(sorted(set(FORMAT_BY_SUFFIX.values())))
        raise DataError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                        f"set `format` ({known}) for this dataset in params.yaml")
    return found


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) with strict UTF-8 decoding, line by line so any size streams.

    Reading bytes and decoding each line is what lets a bad byte be reported with its line.
    """
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    f"{path}:{line_no}: bytes that are not UTF-8 at column {err.start + 1} "
                    f"({raw[err.start:err.start + 4]!r}); re-encode the file as UTF-8 "
                    f"(e.g. `iconv -f latin1 -t utf-8`)"
                ) from None


def read_records(path: Path, fmt: str, header: bool = True, columns: list[str] | None = None) -> Iterator[Record]:
    """Records of a jsonl / json / csv / tsv / parquet file, in file order."""
    fmt = detect_format(path, fmt)
    if fmt == "jsonl":
        yield from _jsonl(path)
    elif fmt == "json":
        yield from _json(path)
    elif fmt in ("csv", "tsv"):
        yield from _table(path, fmt, header, columns)
    elif fmt == "parquet":
        yield from _parquet(path)
    else:
        raise DataError(f"{path}: format {fmt!r} holds no records (txt is for the pretraining corpus only)")


def _jsonl(path: Path) -> Iterator[Record]:
    for line_no, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line_no}: malformed JSON line ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, found {type(obj).__name__}")
        yield Record(f"{path}:{line_no}", obj)


def _json(path: Path) -> Iterator[Record]:
    text = "".join(line for _, line in iter_lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records at the top level, found {type(data).__name__}")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: record {i}: expected a JSON object, found {type(obj).__name__}")
        yield Record(f"{path}: record {i}", obj)


def _table(path: Path, fmt: str, header: bool, columns: list[str] | None) -> Iterator[Record]:
    # TSV is read without quote handling: in the SMS Spam Collection a message may start with `"`,
    # and quote handling would swallow the following lines into it (pandas' default sees 5,572
    # rows instead of 5,574).
    if fmt == "tsv":
        dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    else:
        dialect = {"delimiter": ","}
    lines = (line for _, line in iter_lines(path))
    reader = csv.reader(lines, **dialect)  # type: ignore[arg-type]
    names = list(columns) if columns else None
    header_pending = header
    try:
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            if header_pending:  # `columns`, when given, rename the header's columns
                header_pending = False
                names = names or [cell.strip() for cell in row]
                continue
            if names is None:
                raise DataError(f"{path}: no header row and no `columns`: name the columns in params.yaml")
            if len(row) > len(names):
                raise DataError(f"{path}:{reader.line_num}: row has {len(row)} fields, expected "
                                f"{len(names)} ({', '.join(names)})")
            yield Record(f"{path}:{reader.line_num}", dict(zip(names, row)))
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed {fmt.upper()} ({err})") from None


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own error types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    row = 0
    for batch in pfile.iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            yield Record(f"{path}: row {row}", obj)
            row += 1


def records_of_rows(rows: Iterable[Mapping[str, Any]], where: str) -> Iterator[Record]:
    """Records of an in-memory table (a Hugging Face dataset), named `where row N`."""
    for i, row in enumerate(rows):
        yield Record(f"{where} row {i}", row)


def text_field(record: Record, field: str, param: str, allow_empty: bool = False) -> str:
    """The string in `field`; a missing, non-string or empty value is an error naming the param to fix."""
    if field not in record.fields:
        present = ", ".join(map(str, record.fields)) or "none"
        raise DataError(f"{record.where}: missing field {field!r} (fields present: {present}); "
                        f"fix the record or set {param}")
    value = record.fields[field]
    if isinstance(value, bool) or value is None:
        raise DataError(f"{record.where}: field {field!r} is {value!r}, expected text")
    if isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(f"{record.where}: field {field!r} is a {type(value).__name__}, expected text")
    if not allow_empty and not value.strip():
        raise DataError(f"{record.where}: field {field!r} is empty")
    return value
