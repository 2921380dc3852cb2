"""Tests for reading dataset files into records (steps/data/readers.py): formats and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps.data.readers import (
    DataError,
    Record,
    detect_format,
    iter_lines,
    label_field,
    read_records,
    text_field,
)


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
    path = write(tmp_path, "d.jsonl", b'{"text": "ok"}\n' + b'{"text": "caf\xe9"}\n')
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


# --- encodings, compression, record lines ------------------------------------------------------

def test_a_utf8_byte_order_mark_is_no_part_of_the_header(tmp_path: Path) -> None:
    # What spreadsheet programs write: the header read `\ufefftext` and `text` was "missing".
    path = write(tmp_path, "d.csv", "\ufefftext,label\nhi,ham\n".encode("utf-8"))
    assert [dict(r.fields) for r in read_records(path, "auto")] == [{"text": "hi", "label": "ham"}]
    jsonl = write(tmp_path, "d.jsonl", '\ufeff{"text": "a"}\n'.encode("utf-8"))
    assert [r.fields["text"] for r in read_records(jsonl, "auto")] == ["a"]


def test_a_utf8_byte_order_mark_is_no_text_of_a_corpus(tmp_path: Path) -> None:
    path = write(tmp_path, "a.txt", "\ufeffFirst line\nsecond\n".encode("utf-8"))
    assert [line for _, line in iter_lines(path)] == ["First line\n", "second\n"]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_utf16_and_utf32_files_with_a_byte_order_mark_are_decoded(tmp_path: Path, encoding: str) -> None:
    text = "text,label\r\ncafé ☕,ham\r\n\"two\nlines\",spam\r\n"
    raw = text.encode(encoding)
    if encoding.endswith("-be"):  # the -be codecs write no mark: add the one an editor would
        raw = ("\ufeff" + text).encode(encoding)
    path = write(tmp_path, "d.csv", raw)
    records = list(read_records(path, "auto"))
    assert [dict(r.fields) for r in records] == [{"text": "café ☕", "label": "ham"},
                                                {"text": "two\nlines", "label": "spam"}]
    assert [r.where for r in records] == [f"{path}:2", f"{path}:3"]


def test_utf16_without_a_byte_order_mark_is_refused_with_the_conversion(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "text,label\nhi,ham\n".encode("utf-16-le"))
    with pytest.raises(DataError, match=rf"{path}:1: NUL bytes .* UTF-16 or UTF-32 without a byte-order mark; "
                                        rf"convert it: `iconv -f UTF-16LE -t UTF-8 {path} > converted`"):
        list(read_records(path, "auto"))


def test_damaged_utf16_after_its_mark_names_the_conversion(tmp_path: Path) -> None:
    path = write(tmp_path, "d.txt", "ok\nline\n".encode("utf-16") + b"\x00\xd8")  # a lone high surrogate
    with pytest.raises(DataError, match=rf"{path}:3: not valid UTF-16 although it starts with a UTF-16 "
                                        rf"byte-order mark .*`iconv -f UTF-16 -t UTF-8 {path} > converted`"):
        list(iter_lines(path))


@pytest.mark.parametrize("suffix, compress", [(".gz", "gzip"), (".bz2", "bz2"), (".xz", "lzma")])
def test_compressed_files_are_read(tmp_path: Path, suffix: str, compress: str) -> None:
    import importlib

    module = importlib.import_module(compress)
    table = write(tmp_path, f"d.csv{suffix}", module.compress("\ufefftext,label\nhi,ham\n".encode()))
    assert detect_format(table, "auto") == "csv"
    assert [dict(r.fields) for r in read_records(table, "auto")] == [{"text": "hi", "label": "ham"}]
    text = write(tmp_path, f"a.txt{suffix}", module.compress(b"one\ntwo\n"))
    assert [line for _, line in iter_lines(text)] == ["one\n", "two\n"]


@pytest.mark.parametrize("suffix, compress", [(".gz", "gzip"), (".bz2", "bz2"), (".xz", "lzma")])
def test_a_truncated_compressed_file_says_so(tmp_path: Path, suffix: str, compress: str) -> None:
    import importlib

    whole = importlib.import_module(compress).compress("".join(f"{i},ham\n" for i in range(5000)).encode())
    path = write(tmp_path, f"d.csv{suffix}", whole[: len(whole) // 2])
    with pytest.raises(DataError, match=rf"{path}: truncated or corrupt {suffix[1:]} file"):
        list(read_records(path, "csv", header=False, columns=["text", "label"]))


def test_a_compressed_parquet_file_is_refused() -> None:
    with pytest.raises(DataError, match="Parquet compresses its own columns"):
        list(read_records(Path("d.parquet.gz"), "auto"))


def test_errors_name_the_first_line_of_a_multiline_record(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'text,label\nhi,ham\n"three\nline\nmessage",spam,extra\n')
    with pytest.raises(DataError, match=rf"{path}:3: row has 3 fields"):
        list(read_records(path, "auto"))
    ok = write(tmp_path, "ok.csv", 'text,label\n\n"two\nlines",ham\nnext\n')
    records = list(read_records(ok, "auto"))
    assert [r.where for r in records] == [f"{ok}:3", f"{ok}:5"]
    with pytest.raises(DataError, match=rf"{ok}:5: missing field 'label'"):
        text_field(records[1], "label", "download.classification.label_field")


@pytest.mark.parametrize("value, label", [("spam", "spam"), (" ham ", "ham"), (3, "3"), ("", None), ("NaN", None),
                                          ("nan", None), (None, None), (float("nan"), None), ("NA", None)])
def test_label_field_reads_names_and_ids_and_sees_missing_values(value, label) -> None:
    assert label_field(Record("f:2", {"label": value}), "label", "p") == label


@pytest.mark.parametrize("value", [1.5, True, ["a"]])
def test_label_field_refuses_other_values(value) -> None:
    with pytest.raises(DataError, match=r"f:2: field 'label' is .*, expected a label name"):
        label_field(Record("f:2", {"label": value}), "label", "p")
