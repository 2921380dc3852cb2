"""Tests for streaming the corpus file as pieces and its train/val split (steps/tokenization/corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps.tokenization.corpus import EOT, CorpusPart, Piece, iter_pieces, split_corpus

SEP = f"\n{EOT}\n"
VERDICT = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "book" / "the-verdict.txt"


def write(tmp_path: Path, text: str | bytes, name: str = "corpus.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def texts(pieces) -> list[tuple[str, bool]]:
    return [(p.text, p.ends_document) for p in pieces]


@pytest.mark.parametrize("ending", ["", "\n", SEP.rstrip("\n"), SEP])
def test_documents_split_at_separator_lines(tmp_path: Path, ending: str) -> None:
    path = write(tmp_path, "first doc\nline two" + SEP + "second\n\nhas a paragraph" + ending)
    assert texts(iter_pieces(path)) == [("first doc\nline two", True), ("second\n\nhas a paragraph", True)]


def test_separator_must_be_the_whole_line(tmp_path: Path) -> None:
    text = f"a {EOT} inside a line\n {EOT}\n{EOT} \nend"
    assert texts(iter_pieces(write(tmp_path, text))) == [(text, True)]


def test_empty_and_whitespace_documents_are_skipped(tmp_path: Path) -> None:
    text = f"{EOT}\n\n  \n{EOT}\n{EOT}\nreal\n{EOT}\n\t\n"
    assert texts(iter_pieces(write(tmp_path, text))) == [("real", True)]


def test_crlf_text(tmp_path: Path) -> None:
    path = write(tmp_path, f"one\r\ntwo\r\n{EOT}\r\nthree\r\n")
    assert texts(iter_pieces(path)) == [("one\r\ntwo", True), ("three", True)]


def test_piece_bytes_add_up_to_the_file(tmp_path: Path) -> None:
    text = f"{EOT}\n  \n{EOT}\ncafé 中文\n" + "x " * 3000 + "\nmore\n" * 50 + SEP + "tail\n"
    path = write(tmp_path, text)
    assert sum(p.nbytes for p in iter_pieces(path, chunk_bytes=512)) == path.stat().st_size


def long_document(lines: int = 400) -> str:
    # Wrapped prose, paragraphs, indented lines and lines with trailing blanks: every case of
    # the whitespace run at a line boundary.
    out = []
    for i in range(lines):
        kind = i % 7
        if kind == 3:
            out.append("")
        elif kind == 5:
            out.append(f"    indented code line {i} = value({i})")
        elif kind == 6:
            out.append(f" one leading space, trailing blanks {i}  ")
        else:
            out.append(f"Line {i} of a very long document, café and 中文 and emoji 🎉 too.")
    return "\n".join(out)


def test_a_long_document_comes_in_pieces_at_line_boundaries(tmp_path: Path) -> None:
    doc = long_document()
    pieces = list(iter_pieces(write(tmp_path, doc + SEP + "next"), chunk_bytes=1000))
    assert pieces[-1] == Piece("next", True)
    parts = pieces[:-1]
    assert len(parts) > 10
    assert [p.ends_document for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.text for p in parts) == doc
    for p in parts[:-1]:
        assert p.text.endswith("\n")
        assert len(p.text.encode()) < 4 * 1000 + 200  # about chunk_bytes: never past the forced cut


def test_without_clean_boundaries_a_document_is_still_cut(tmp_path: Path) -> None:
    # CRLF line ends leave no boundary where the pre-tokenizer splits anyway.
    doc = "\r\n".join(f"line {i} with windows line ends" for i in range(500))
    pieces = list(iter_pieces(write(tmp_path, doc), chunk_bytes=1000))
    assert len(pieces) > 3
    assert "".join(p.text for p in pieces) == doc
    assert all(len(p.text.encode()) < 4 * 1000 + 100 for p in pieces)


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"fine\nstill fine\nbad \xff byte\n")
    with pytest.raises(ValueError, match=r"corpus\.txt: line 3 is not valid UTF-8"):
        list(iter_pieces(path))


def test_invalid_utf8_in_the_val_part_counts_lines_from_the_file_start(tmp_path: Path) -> None:
    path = write(tmp_path, b"line\n" * 90 + b"ok\n" * 5 + b"bad \xc3\x28\n" + b"end\n" * 4)
    _, val = split_corpus(path, 0.1)
    assert val.start > 0
    with pytest.raises(ValueError, match="line 96 is not valid UTF-8"):
        list(val.pieces())


def test_split_is_the_byte_tail_cut_at_a_line_boundary(tmp_path: Path) -> None:
    text = "aaaa\nbbbb" + SEP + "cccc\ndddd\neeee" + SEP + "ffff\n"
    path = write(tmp_path, text)
    size = len(text)
    train, val = split_corpus(path, 0.45)
    offset = int(size * 0.55)  # inside the line "dddd"
    assert train == CorpusPart(path, 0, val.start) and val.end == size
    assert val.start >= offset and text[val.start - 1] == "\n"
    assert "\n" not in text[offset:val.start - 1]  # the first line boundary after the offset
    assert texts(train.pieces()) == [("aaaa\nbbbb", True), ("cccc\ndddd", True)]
    assert texts(val.pieces()) == [("eeee", True), ("ffff", True)]


def test_split_at_an_exact_line_boundary(tmp_path: Path) -> None:
    path = write(tmp_path, "0123456789\n" * 10)
    train, val = split_corpus(path, 0.2)
    assert (train.end, val.start) == (88, 88)
    assert texts(val.pieces()) == [("0123456789\n0123456789", True)]


def test_a_one_document_corpus_splits_90_10(tmp_path: Path) -> None:
    doc = "\n".join(f"sentence number {i} of the only document." for i in range(200))
    train, val = split_corpus(write(tmp_path, doc), 0.1)
    train_text = "".join(train.texts())
    val_text = "".join(val.texts())
    assert train_text + "\n" + val_text == doc
    assert 0.88 < len(train_text) / len(doc) < 0.92


def test_the_verdict_splits_like_the_book(tmp_path: Path) -> None:
    if not VERDICT.is_file():
        pytest.skip("shared/ data not available")
    text = VERDICT.read_text(encoding="utf-8")
    train, val = split_corpus(VERDICT, 0.1)
    train_text, val_text = "".join(train.texts()), "".join(val.texts())
    assert text.startswith(train_text) and text.rstrip("\n").endswith(val_text)
    # The book cuts at 90 % of the characters; the line boundary moves the cut by under a paragraph.
    assert abs(len(train_text) - int(0.9 * len(text))) < 1500
    assert [p.ends_document for p in train.pieces()] == [True]


@pytest.mark.parametrize("text", ["", "\n\n  \n", f"{EOT}\n{EOT}\n", f"\n{EOT}\n \t\n"])
def test_empty_corpus_is_an_error_that_says_what_to_do(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match=r"corpus\.txt: the corpus has no text .*dvc repro download"):
        split_corpus(write(tmp_path, text), 0.1)


def test_missing_corpus(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="download"):
        split_corpus(tmp_path / "corpus.txt", 0.1)


def test_a_split_without_text_is_an_error(tmp_path: Path) -> None:
    # One line: no line boundary after the cut, so validation would be empty.
    with pytest.raises(ValueError, match="validation split .* has no text.*val_fraction"):
        split_corpus(write(tmp_path, "one single long line " * 50), 0.1)
    with pytest.raises(ValueError, match="train split .* has no text"):
        split_corpus(write(tmp_path, "\n" * 200 + "text at the very end\n"), 0.1)
