"""Read dataset files (txt, jsonl, json, csv, tsv, parquet) as records; every error names file and record.

Text files are UTF-8, with or without a byte-order mark (spreadsheet programs write one); a file
that starts with a UTF-16 or UTF-32 byte-order mark is decoded as such. A `.gz`, `.bz2` or `.xz`
file is decompressed as it is read, and its format is the one of the name beneath (`a.csv.gz`).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FORMAT_BY_SUFFIX = {
    ".txt": "txt", ".text": "txt", ".md": "txt",
    ".jsonl": "jsonl", ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv", ".tab": "tsv",
    ".parquet": "parquet",
}
# Compressed files are read through these, by extension (each called as `open(path, "rb")`).
OPENERS: dict[str, Callable[..., IO[bytes]]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# What a damaged compressed stream raises while it is read: gzip.BadGzipFile and bz2's "Invalid
# data stream" are OSErrors; a stream cut short raises EOFError.
_DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)
# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# Label values that mean "no label" (what pandas writes or reads as missing): an error, never a class.
MISSING_LABELS = frozenset({"", "nan", "NaN", "-nan", "NA", "N/A", "n/a", "<NA>", "#N/A", "null", "NULL",
                            "None"})


class DataError(ValueError):
    """Bad input data; the message names the file, the record or line, the field and the fix."""


@dataclass(frozen=True)
class Record:
    where: str
    """`file:line` or `file: record N`, for error messages."""
    fields: Mapping[str, Any]


def compression(path: Path) -> str | None:
    """`.gz`, `.bz2` or `.xz` when the file is read through a decompressor, else None."""
    suffix = path.suffix.lower()
    return suffix if suffix in OPENERS else None


def data_suffix(path: Path) -> str:
    """The extension that tells the format: `.csv` for both `a.csv` and `a.csv.gz`."""
    return (path.with_suffix("") if compression(path) else path).suffix.lower()


def detect_format(path: Path, fmt: str) -> str:
    """The configured format, or the one the file's extension implies."""
    if fmt != "auto":
        return fmt
    found = FORMAT_BY_SUFFIX.get(data_suffix(path))
    if found is None:
        known = ", ".join(sorted(set(FORMAT_BY_SUFFIX.values())))
        raise DataError(f"{path}: cannot tell the format from the extension {data_suffix(path)!r}; "
                        f"set `format` ({known}) for this dataset in params.yaml")
    return found


@contextmanager
def open_data(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed when its extension says so; a damaged or truncated
    compressed file is a DataError saying so, wherever the reading stops."""
    kind = compression(path)
    if kind is None:
        with open(path, "rb") as f:
            yield f
        return
    try:
        with OPENERS[kind](path, "rb") as f:
            yield f
    except _DECOMPRESSION_ERRORS as err:
        raise DataError(f"{path}: truncated or corrupt {kind[1:]} file ({err or type(err).__name__}); "
                        f"compress or copy it again") from None


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a text file, line by line so any size streams.

    UTF-8 is decoded strictly, line by line, so a bad byte is reported with its line; a leading
    UTF-8 byte-order mark is dropped (it is no text). A UTF-16 or UTF-32 byte-order mark selects
    that encoding.
    """
    with open_data(path) as f:
        head = f.read(4)
        f.seek(0)  # plain and compressed files both rewind
        wide = next((enc for bom, enc in _WIDE_BOMS if head.startswith(bom)), None)
        if wide is not None:
            yield from _wide_lines(path, f, wide)
            return
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            yield line_no, _utf8_line(path, line_no, raw)


def _utf8_line(path: Path, line_no: int, raw: bytes) -> str:
    if b"\x00" in raw:
        # ASCII saved as UTF-16 is valid UTF-8 with a NUL after every letter: refuse, not misread.
        raise DataError(f"{path}:{line_no}: NUL bytes in a text file: it looks like UTF-16 or UTF-32 without "
                        f"a byte-order mark; convert it: `iconv -f UTF-16LE -t UTF-8 {path} > converted` "
                        f"(UTF-16BE, UTF-32LE or UTF-32BE if that one is not it)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}:{line_no}: bytes that are not UTF-8 at column {err.start + 1} "
            f"({raw[err.start:err.start + 4]!r}); re-encode the file as UTF-8: `file -i {path}` tells its "
            f"encoding, then e.g. `iconv -f WINDOWS-1252 -t UTF-8 {path} > converted`"
        ) from None


def _wide_lines(path: Path, raw: IO[bytes], encoding: str) -> Iterator[tuple[int, str]]:
    """Lines of a UTF-16/32 file; the codec reads the byte-order mark for the byte order."""
    text = io.TextIOWrapper(raw, encoding=encoding, newline="")  # type: ignore[type-var]
    line_no = 0
    try:
        for line_no, line in enumerate(text, start=1):
            yield line_no, line
    except UnicodeDecodeError as err:
        name = encoding.upper()
        raise DataError(f"{path}:{line_no + 1}: not valid {name} although it starts with a {name} byte-order "
                        f"mark ({err.reason}); convert it to UTF-8: `iconv -f {name} -t UTF-8 {path} > converted`"
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
    # A quoted field may span lines: a record is named by its first line, where a reader looks.
    first = 1
    try:
        for row in reader:
            where, first = f"{path}:{first}", reader.line_num + 1
            if not row or all(not cell.strip() for cell in row):
                continue
            if header_pending:  # `columns`, when given, rename the header's columns
                header_pending = False
                names = names or [cell.strip() for cell in row]
                continue
            if names is None:
                raise DataError(f"{path}: no header row and no `columns`: name the columns in params.yaml")
            if len(row) > len(names):
                raise DataError(f"{where}: row has {len(row)} fields, expected "
                                f"{len(names)} ({', '.join(names)})")
            yield Record(where, dict(zip(names, row)))
    except csv.Error as err:
        raise DataError(f"{path}:{first}: malformed {fmt.upper()} in the record starting on this line ({err})"
                        ) from None


def _parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    if compression(path):
        raise DataError(f"{path}: a compressed Parquet file; Parquet compresses its own columns, so give "
                        f"the .parquet file itself (decompress it first)")
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
    """The string in `field`; a missing, non-string or empty value is an error naming the param to fix.

    A number is an error too, not silently turned into text: `42` where a response is expected
    is more often a column mix-up than an answer.
    """
    value = _field(record, field, param)
    if is_missing(value):
        raise DataError(f"{record.where}: field {field!r} is {value} (a missing value), expected text; "
                        f"fill it in or remove the record")
    if isinstance(value, (bool, int, float)):
        raise DataError(f"{record.where}: field {field!r} is {value!r}, not text; quote it in the file "
                        f"(\"{value}\") if it is meant as text, or check the field mapping in params.yaml")
    if not isinstance(value, str):
        raise DataError(f"{record.where}: field {field!r} is a {type(value).__name__}, expected text")
    if not allow_empty and not value.strip():
        raise DataError(f"{record.where}: field {field!r} is empty")
    return value


def label_field(record: Record, field: str, param: str) -> str | None:
    """A label's name, stripped: text as is, an integer as its digits (Hugging Face stores class
    ids, e.g. 0 / 1); None when the value means "no label" (empty, NaN, null, `NA`, see
    MISSING_LABELS). Any other value is an error."""
    value = _field(record, field, param)
    if is_missing(value):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{record.where}: field {field!r} is {value!r}, expected a label name (text or an "
                        f"integer id)")
    label = value.strip()
    return None if label in MISSING_LABELS else label


def is_missing(value: Any) -> bool:
    """None, or the NaN that pandas writes for an empty cell (JSON `NaN`, a Parquet null float)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _field(record: Record, field: str, param: str) -> Any:
    if field not in record.fields:
        present = ", ".join(map(str, record.fields)) or "none"
        raise DataError(f"{record.where}: missing field {field!r} (fields present: {present}); "
                        f"fix the record or set {param}")
    return record.fields[field]
