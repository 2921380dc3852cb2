"""Stream the pretraining corpus (data/raw/corpus.txt) as pieces of text, and split it train/val.

The format: UTF-8 text whose documents are separated by a line that is exactly `<|endoftext|>`
("\\n<|endoftext|>\\n" between documents; a final separator line is optional). Documents may
contain blank lines. The file can be larger than memory and one document can be huge, so the file
is read line by line and a long document is handed on in pieces of about `chunk_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

EOT = "<|endoftext|>"
CHUNK_BYTES = 1 << 20
_SEPARATOR_LINES = frozenset((EOT + eol).encode() for eol in ("", "\n", "\r\n"))
_LONGEST_SEPARATOR = max(map(len, _SEPARATOR_LINES))
# Without a token-preserving boundary (see `CutRule`), a document is still cut at this many
# chunks, so memory stays bounded whatever the text looks like.
_FORCED_CUT_CHUNKS = 4


@dataclass(frozen=True)
class Piece:
    """A run of one document's text; `ends_document` says an end-of-text token follows it."""

    text: str
    ends_document: bool
    nbytes: int = field(default=0, compare=False)
    """Bytes of the file this piece stands for (separator line included), for progress bars."""


CutRule = Callable[[str, str, str], bool]
"""Whether a long document may be cut before `line` (`before` precedes it, `after` follows it):
encoding `...before` and `line after...` apart must give the ids of encoding them whole. Which
cuts keep the ids depends on the tokenizer's pre-tokenization, so each encoder names its rule."""


def gpt2_clean_cut(before: str, line: str, after: str) -> bool:
    """GPT-2's pre-tokenizer splits between `before` and `line`.

    Its pattern splits a whitespace run W followed by a visible character into W[:-1] and W[-1]
    (or keeps W whole when it is one character), while a run that ends the text stays whole. So a
    cut inside a run keeps the ids only if the run continues past the cut by exactly one
    character, or if the run is only the newline itself. Python's isspace() is a superset of the
    regex's \\s, which errs on the safe side.
    """
    if line[0].isspace():
        if len(line) > 1 and not line[1].isspace():
            return True
        return line == "\n" and not after[0].isspace()
    return len(before) > 1 and not before[-2].isspace()


def spaced_clean_cut(before: str, line: str, after: str) -> bool:
    """Our trained BPE's pre-tokenization (`tokenizer.train_bpe`) splits between `before` and `line`.

    Its normalizer writes a space after every newline another character follows and one at the
    start of every text, so a line that starts with a visible character starts, whole or cut off,
    with that space, which GPT-2's pattern always splits from the newline run before it. A line
    that starts with whitespace would gain a space a cut text does not have.
    """
    return not line[0].isspace()


@dataclass(frozen=True)
class CorpusPart:
    """The bytes [start, end) of a corpus file, both at line boundaries: a train or val split."""

    path: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    def pieces(self, chunk_bytes: int = CHUNK_BYTES, clean_cut: CutRule = gpt2_clean_cut) -> Iterator[Piece]:
        return iter_pieces(self.path, chunk_bytes, self.start, self.end, clean_cut)

    def texts(self, chunk_bytes: int = CHUNK_BYTES, clean_cut: CutRule = gpt2_clean_cut) -> Iterator[str]:
        return (piece.text for piece in self.pieces(chunk_bytes, clean_cut))


def iter_pieces(
    path: str | Path, chunk_bytes: int = CHUNK_BYTES, start: int = 0, end: int | None = None,
    clean_cut: CutRule = gpt2_clean_cut,
) -> Iterator[Piece]:
    """Yield the documents of `path[start:end]` as pieces, streaming line by line.

    A piece ends at a separator line (`ends_document=True`), or inside a long document at a line
    boundary once about `chunk_bytes` have accumulated (`ends_document=False`). The range's end
    also ends a document, so a split never runs into the next one. A document's text excludes the
    newline before its separator; whitespace-only documents are skipped. Invalid UTF-8 raises
    ValueError naming the file and the line.

    Long documents are cut where the tokenizer splits anyway (`clean_cut`, the encoder's rule), so
    encoding the pieces gives the same ids as encoding the document whole. Only when no such
    boundary comes within `_FORCED_CUT_CHUNKS` chunks (CRLF text, every line indented) is a
    document cut at any line boundary, where the whitespace run at the cut may tokenize differently.
    """
    path = Path(path)
    lines: list[str] = []
    size = 0  # bytes of `lines`, plus those of skipped empty documents (for progress)
    has_text = False
    with open(path, "rb") as f:
        f.seek(start)
        for index, raw in enumerate(_raw_lines(f, start, end)):
            if _is_separator(raw):
                if has_text:
                    yield Piece(_strip_eol("".join(lines)), True, size + len(raw))
                    size = 0
                else:
                    size += len(raw)
                lines, has_text = [], False
                continue
            lines.append(_decode(raw, path, start, index))
            size += len(raw)
            has_text = has_text or not lines[-1].isspace()
            if has_text and size >= chunk_bytes and len(lines) >= 3:
                cut = _cut_index(lines, clean_cut, forced=size >= _FORCED_CUT_CHUNKS * chunk_bytes)
                if cut:
                    head = "".join(lines[:cut])
                    tail_bytes = sum(len(line.encode("utf-8")) for line in lines[cut:])
                    yield Piece(head, False, size - tail_bytes)
                    lines, size = lines[cut:], tail_bytes
    if has_text:
        yield Piece(_strip_eol("".join(lines)), True, size)


def split_corpus(path: str | Path, val_fraction: float) -> tuple[CorpusPart, CorpusPart]:
    """Train and val parts: val is the tail `val_fraction` of the bytes, from a line boundary.

    The cut is the first line boundary at or after byte `size * (1 - val_fraction)`, so even a
    one-document corpus (the book's the-verdict.txt) splits about 90/10 like the book does.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the download stage first (dvc repro download)")
    size = path.stat().st_size
    if not _has_text(path, 0, size):
        raise ValueError(
            f"{path}: the corpus has no text (it is empty or holds only whitespace and {EOT} lines): "
            f"rerun the download stage (dvc repro download) or check the corpus source in params.yaml"
        )
    offset = int(size * (1.0 - val_fraction))
    boundary = _line_start_at_or_after(path, offset)
    train, val = CorpusPart(path, 0, boundary), CorpusPart(path, boundary, size)
    for name, part in (("train", train), ("validation", val)):
        if not _has_text(path, part.start, part.end):
            raise ValueError(
                f"{path}: the {name} split (bytes {part.start}-{part.end}, cut at the first line break "
                f"after byte {offset}) has no text: the corpus needs line breaks in its last "
                f"{val_fraction:.0%}, or change tokenize.val_fraction"
            )
    return train, val


def _raw_lines(f: BinaryIO, start: int, end: int | None) -> Iterator[bytes]:
    position = start
    for raw in f:
        if end is not None and position + len(raw) >= end:
            if position < end:
                yield raw[: end - position]
            return
        position += len(raw)
        yield raw


def _is_separator(raw: bytes) -> bool:
    # The length test first: hashing every (possibly huge) line for the set lookup would not be free.
    return len(raw) <= _LONGEST_SEPARATOR and raw in _SEPARATOR_LINES


def _decode(raw: bytes, path: Path, start: int, index: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = _lines_before(path, start) + index + 1
        raise ValueError(
            f"{path}: line {line} is not valid UTF-8 ({err.reason} at byte {err.start} of the line): "
            f"re-encode the corpus as UTF-8"
        ) from None


def _lines_before(path: Path, offset: int) -> int:
    # Counted only when reporting an error: a clean read never pays for it.
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(offset, CHUNK_BYTES))
            if not block:
                break
            count += block.count(b"\n")
            offset -= len(block)
    return count


def _strip_eol(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def _cut_index(lines: list[str], clean_cut: CutRule, forced: bool) -> int:
    """Where to cut `lines` (0: not yet); the last line is only look-ahead and never cut before."""
    if forced:
        return len(lines) - 1
    k = len(lines) - 2
    return k if clean_cut(lines[k - 1], lines[k], lines[k + 1]) else 0


def _line_start_at_or_after(path: Path, offset: int) -> int:
    if offset <= 0:
        return 0
    with open(path, "rb") as f:
        f.seek(offset - 1)
        rest_of_line = f.readline()
    return offset - 1 + len(rest_of_line)


def _has_text(path: Path, start: int, end: int) -> bool:
    # Stops at the first line with visible text, which is near `start` in any real corpus.
    with open(path, "rb") as f:
        f.seek(start)
        return any(_is_text_line(raw) for raw in _raw_lines(f, start, end))


def _is_text_line(raw: bytes) -> bool:
    return not _is_separator(raw) and not raw.decode("utf-8", errors="replace").isspace()
