"""Tests for reading dataset files into records (steps/data/readers.py): formats and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps.data.readers import DataError, Record, detect_format, iter_lines, label_field, read_records, text_field


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, fmt", [("a.txt", "txt"), ("a.JSONL", "jsonl"), ("a.json", "json"),
                                       ("a.csv", "csv"), ("a.tsv", "tsv"), ("a.parquet", "parquet")])
def test_format_follows_the_extension(name: str, fmt: str) -> None:
    assert detect_format(Path(name), "auto") == fmt
    assert detect_format(Path(name), "tsv") == "tsv"  # an explicit format wins


def test_unknown_extension_asks_for_a_format() -> None:
    with pytest.raises(DataError, match=r"SMSSpamCollection: cannot tell the format.*set `format`"):
        detect_format(Path("SMSSpamCollection"), "auto")


def test_jsonl_records_name_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '{"text": "a"}\n\n{"text": "b"}\n')
    records = list(read_records(path, "auto"))
    assert [r.fields["text"] for r in records] == ["a", "b"]
    assert records[1].where == f"{path}:3"


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DataError, match=rf"{path}:2: malformed JSON line"):
        list(read_records(path, "auto"))


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '["a"]\n')
    with pytest.raises(DataError, match=r":1: expected a JSON object, found list"):
        list(read_records(path, "auto"))


def test_json_list_and_its_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", '[{"a": 1},\n {"a": 2}]')
    assert [r.where for r in read_records(path, "auto")] == [f"{path}: record 0", f"{path}: record 1"]
    bad = write(tmp_path, "bad.json", '[{"a": 1},\n {"a": }]')
    with pytest.raises(DataError, match=rf"{bad}:2: malformed JSON"):
        list(read_records(bad, "auto"))
    obj = write(tmp_path, "obj.json", '{"a": 1}')
    with pytest.raises(DataError, match="expected a JSON list of records"):
        list(read_records(obj, "auto"))
    mixed = write(tmp_path, "mixed.json", '[{"a": 1}, 3]')
    with pytest.raises(DataError, match="record 1: expected a JSON object, found int"):
        list(read_records(mixed, "auto"))


def test_csv_with_header_and_quoted_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'text,label\n"hello, world",ham\n"multi\nline",spam\n')
    records = list(read_records(path, "auto"))
    assert [dict(r.fields) for r in records] == [{"text": "hello, world", "label": "ham"},
                                                {"text": "multi\nline", "label": "spam"}]


def test_csv_row_missing_its_label_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,label\nfine,ham\nno label here\n")
    records = list(read_records(path, "auto"))
    with pytest.raises(DataError, match=rf"{path}:3: missing field 'label' \(fields present: text\).*label_field"):
        text_field(records[1], "label", "download.classification.label_field")


def test_row_with_too_many_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", "label\ttext\nham\thi\textra\n")
    with pytest.raises(DataError, match=rf"{path}:2: row has 3 fields, expected 2 \(label, text\)"):
        list(read_records(path, "auto"))


def test_tsv_without_header_and_without_quote_handling(tmp_path: Path) -> None:
    # A message that opens a quote must not swallow the lines after it (the SMS collection has such).
    path = write(tmp_path, "SMSSpamCollection", 'ham\t"Hi there\nspam\tWIN now\nham\tok"\n')
    records = list(read_records(path, "tsv", header=False, columns=["label", "text"]))
    assert [(r.fields["label"], r.fields["text"]) for r in records] == [
        ("ham", '"Hi there'), ("spam", "WIN now"), ("ham", 'ok"')]


def test_columns_rename_a_header(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "a,b\n1,2\n")
    assert [dict(r.fields) for r in read_records(path, "auto", header=True, columns=["x", "y"])] == [{"x": "1", "y": "2"}]


def test_parquet_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), path)
    records = list(read_records(path, "auto"))
    assert [dict(r.fields) for r in records] == [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    assert records[1].where == f"{path}: row 1"
    assert label_field(records[1], "label", "x") == "1"  # class ids become names


def test_damaged_parquet(tmp_path: Path) -> None:
    path = write(tmp_path, "d.parquet", b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        list(read_records(path, "auto"))


def test_bytes_that_are_not_utf8_are_named_with_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '{"text": "ok"}\n'.encode() + b'{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: bytes that are not UTF-8 at column 14.*iconv"):
        list(read_records(path, "auto"))
    with pytest.raises(DataError, match=rf"{path}:2: bytes that are not UTF-8"):
        list(iter_lines(path))


def test_txt_holds_no_records(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "hello")
    with pytest.raises(DataError, match="txt is for the pretraining corpus only"):
        list(read_records(path, "auto"))


@pytest.mark.parametrize("value, message", [(None, r"is None \(a missing value\), expected text"),
                                            (float("nan"), r"is nan \(a missing value\)"), (True, "is True"),
                                            (42, r"is 42, not text; quote it"), (1.5, "is 1.5, not text"),
                                            (["a"], "is a list, expected text"), ("  ", "is empty")])
def test_text_field_rejects_what_is_not_text(value, message: str) -> None:
    with pytest.raises(DataError, match=rf"f.jsonl:7: field 'text' {message}"):
        text_field(Record("f.jsonl:7", {"text": value}), "text", "download.corpus.text_field")


def test_text_field_may_allow_empty() -> None:
    assert text_field(Record("x", {"t": ""}), "t", "p", allow_empty=True) == ""
