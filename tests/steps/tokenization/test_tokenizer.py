"""Tests for the byte-level BPE tokenizer, the encoders and the token files (steps/tokenization/tokenizer.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from steps.tokenization.corpus import EOT, Piece, gpt2_clean_cut, iter_pieces, spaced_clean_cut
from steps.tokenization.tokenizer import (
    EncodeStats,
    HFEncoder,
    TokenEncoder,
    document_lengths,
    encode_to_file,
    eot_id,
    load_tokenizer,
    read_tokens,
    resolve_workers,
    token_dtype,
    train_bpe,
)

WORDS = "the cat dog sat on mat and ran to a big red house with green door while singing loudly".split()
VOCAB = 320


def make_documents(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12)))
        docs.append(sentence.capitalize() + rng.choice([".", "!", "?"]))
    return docs


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe(make_documents(), vocab_size=VOCAB)


ROUND_TRIP = [
    "The cat sat on the mat.",
    "Hello, World! 123 + 456 = 579; x_y {z} [w] \"quoted\" 'single'",
    "café naïve résumé Ünïcödé",
    "中文字符测试",
    "emoji 🎉👍🏽 and a family 👨‍👩‍👧",
    "  leading spaces\t\ttabs\n\n\nnewlines   \r\n trailing   ",
    "\n",
    " ",
    "",
    "zzzz qqqq xylophone",  # words the corpus never saw
    "\nstarts with a newline\n x\n\n  y \n",
    "line\n cat\ncat\n\ncat",  # the spaces the normalizer writes are told from the text's own
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_exact(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False).ids
    assert all(0 <= i < tok.get_vocab_size() for i in ids)
    assert tok.decode(ids) == text


def test_training_learns_merges(tok: Tokenizer) -> None:
    # Common corpus words become single tokens; unseen text falls back to bytes.
    assert len(tok.encode("the", add_special_tokens=False).ids) == 1
    seen = tok.encode("the cat sat on the mat", add_special_tokens=False).ids
    assert len(seen) <= 8
    unseen = tok.encode("zqxj", add_special_tokens=False).tokens
    assert unseen == ["Ġ", "z", "q", "x", "j"]  # the space the normalizer writes, then bytes


def test_a_word_is_one_token_wherever_it_stands(tok: Tokenizer) -> None:
    """After a space, at the start of a line and at the start of a text: the same token."""
    cat = tok.encode("cat", add_special_tokens=False).ids
    assert len(cat) == 1
    assert tok.encode("the cat", add_special_tokens=False).ids[-1:] == cat
    assert tok.encode("the cat\ncat", add_special_tokens=False).ids[-2:] == [tok.token_to_id("Ċ")] + cat
    # A response encoded alone starts with the token the model meets after the prompt's newline.
    prompt = tok.encode("### Response:\n", add_special_tokens=False).ids
    assert tok.encode("### Response:\ncat sat", add_special_tokens=False).ids == (
        prompt + tok.encode("cat sat", add_special_tokens=False).ids)


def test_vocab_size_respected(tok: Tokenizer) -> None:
    assert 257 < tok.get_vocab_size() <= VOCAB  # 256 bytes + EOT + some merges
    small = train_bpe(make_documents(50), vocab_size=270)
    assert small.get_vocab_size() <= 270


def test_all_bytes_in_vocab_even_for_a_tiny_corpus() -> None:
    tiny = train_bpe(["aaa bbb"], vocab_size=300)
    text = "Ω≈ç√∫ 😀 \x00\x7f"
    ids = tiny.encode(text, add_special_tokens=False).ids
    assert tiny.decode(ids) == text


def test_eot_token(tok: Tokenizer) -> None:
    eot = eot_id(tok)
    assert tok.token_to_id(EOT) == eot
    assert tok.id_to_token(eot) == EOT
    assert tok.encode(EOT, add_special_tokens=False).ids == [eot]
    # A document's text never produces the EOT id by accident.
    for doc in make_documents(20, seed=1):
        assert eot not in tok.encode(doc, add_special_tokens=False).ids


def test_eot_id_missing_raises() -> None:
    with pytest.raises(ValueError, match="no <\\|endoftext\\|> token"):
        eot_id(Tokenizer(models.BPE()))


def test_training_is_deterministic() -> None:
    a = train_bpe(make_documents(), vocab_size=VOCAB)
    b = train_bpe(make_documents(), vocab_size=VOCAB)
    assert a.get_vocab() == b.get_vocab()


@pytest.mark.parametrize(
    "vocab, dtype", [(1, np.uint16), (50257, np.uint16), (65535, np.uint16), (65536, np.uint16),
                     (65537, np.uint32), (100_000, np.uint32)]
)
def test_token_dtype(vocab: int, dtype: type) -> None:
    assert token_dtype(vocab) == np.dtype(dtype)


def test_save_and_load_tokenizer(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    loaded = load_tokenizer(path)
    text = "café 中文 the cat"
    assert loaded.encode(text).ids == tok.encode(text).ids
    assert eot_id(loaded) == eot_id(tok)


def test_load_tokenizer_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenize"):
        load_tokenizer(tmp_path / "nope.json")


DOCS = ["The cat sat.", "café 中文 🎉", "  spaced  out  ", "a", "two\n\nparagraphs\n"]


def expected_ids(encoder: TokenEncoder, docs: Sequence[str]) -> list[int]:
    return [i for ids in encoder.encode_batch(docs) for i in ids + [encoder.eot_id]]


def write_corpus(path: Path, docs: Sequence[str]) -> Path:
    path.write_text(f"\n{EOT}\n".join(docs) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("batch_chars", [1, 10, 1 << 16])
def test_encode_to_file(tok: Tokenizer, tmp_path: Path, workers: int, batch_chars: int) -> None:
    encoder = HFEncoder(tok)
    path = tmp_path / "tokens" / "train.bin"
    pieces = [Piece(d, True) for d in DOCS]
    stats = encode_to_file(encoder, iter(pieces), path, workers=workers, batch_chars=batch_chars)
    expected = expected_ids(encoder, DOCS)
    assert (stats.documents, stats.tokens) == (len(DOCS), len(expected))
    assert stats.seconds > 0 and stats.tokens_per_s > 0
    assert path.stat().st_size == stats.tokens * np.dtype(np.uint16).itemsize
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.bin"]  # no temp file left

    ids = read_tokens(path, tok.get_vocab_size())
    assert isinstance(ids, np.memmap)
    assert ids.dtype == np.uint16
    assert ids.tolist() == expected
    # Splitting the stream at EOT gives back the documents.
    ends = np.flatnonzero(ids == encoder.eot_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert [tok.decode(ids[a:b].tolist()) for a, b in zip(starts, ends)] == DOCS


def test_workers_do_not_change_the_file(tok: Tokenizer, tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", make_documents(2000, seed=3))
    encoder = HFEncoder(tok)
    one = encode_to_file(encoder, iter_pieces(corpus, chunk_bytes=256), tmp_path / "1.bin", workers=1, batch_chars=300)
    two = encode_to_file(encoder, iter_pieces(corpus, chunk_bytes=256), tmp_path / "2.bin", workers=2, batch_chars=300)
    assert (one.documents, one.tokens) == (two.documents, two.tokens) == (2000, one.tokens)
    assert (tmp_path / "1.bin").read_bytes() == (tmp_path / "2.bin").read_bytes()


def test_pieces_not_ending_a_document_get_no_eot(tok: Tokenizer, tmp_path: Path) -> None:
    encoder = HFEncoder(tok)
    pieces = [Piece("the cat\n", False), Piece("sat on\n", False), Piece("the mat", True), Piece("dog", True)]
    stats = encode_to_file(encoder, pieces, tmp_path / "t.bin", batch_chars=1)
    assert stats.documents == 2
    assert read_tokens(tmp_path / "t.bin", encoder.vocab_size).tolist() == expected_ids(
        encoder, ["the cat\nsat on\nthe mat", "dog"])


def test_chunked_long_document_encodes_like_the_whole(tok: Tokenizer, tmp_path: Path) -> None:
    lines = []
    for i in range(3000):
        lines.append(random.Random(i).choice(["", "  indented", " one space", "trailing  ", "\tTab", "plain text"])
                     + f" {i}")
    doc = "\n".join(lines)
    corpus = write_corpus(tmp_path / "corpus.txt", [doc, "short one"])
    encoder = HFEncoder(tok)
    pieces = list(iter_pieces(corpus, chunk_bytes=500, clean_cut=encoder.clean_cut))
    assert sum(not p.ends_document for p in pieces) > 20  # really chunked
    encode_to_file(encoder, pieces, tmp_path / "t.bin", batch_chars=1)  # one piece per call
    assert read_tokens(tmp_path / "t.bin", encoder.vocab_size).tolist() == expected_ids(encoder, [doc, "short one"])


def gpt2_style(tok: Tokenizer) -> Tokenizer:
    """The same vocabulary without the normalizer: GPT-2's own pre-tokenization."""
    plain = Tokenizer.from_str(tok.to_str())
    plain.normalizer = None
    return plain


@pytest.mark.parametrize("style", ["ours", "gpt2"])
def test_clean_cut_rule_matches_the_pre_tokenizer(tok: Tokenizer, style: str) -> None:
    """Wherever the tokenizer's rule allows a cut, encoding the two sides apart gives the whole's ids."""
    tok, clean_cut = (tok, spaced_clean_cut) if style == "ours" else (gpt2_style(tok), gpt2_clean_cut)
    rng = random.Random(0)
    parts = ["word", " word", "  word", "\tx", "", " ", "  ", "x ", "x  ", "x\r", "'s", "12", "!!", "é",
             "\u00a0y", "y\u00a0", "\u2028", "\x1c"]
    allowed = 0
    for _ in range(1500):
        lines = [rng.choice(parts) + rng.choice(["", "x", " "]) + rng.choice(parts) + "\n" for _ in range(4)]
        k = 2
        if clean_cut(lines[k - 1], lines[k], lines[k + 1]):
            allowed += 1
            head, tail = "".join(lines[:k]), "".join(lines[k:])
            ids = [tok.encode(t, add_special_tokens=False).ids for t in (head, tail, head + tail)]
            assert ids[0] + ids[1] == ids[2], (head, tail)
    assert allowed > 300


def test_literal_eot_in_text_is_the_eot_token(tok: Tokenizer) -> None:
    encoder = HFEncoder(tok)
    a, b = (tok.encode(t, add_special_tokens=False).ids for t in "ab")
    assert encoder.encode_batch([f"a{EOT}b"]) == [a + [encoder.eot_id] + b]


class WideVocab(TokenEncoder):
    """Stands in for a tokenizer whose vocabulary does not fit uint16: one id per character."""

    vocab_size = 70_000
    eot_id = 69_999

    def encode_array(self, text: str, dtype: np.dtype) -> np.ndarray:
        return np.array(self.encode_batch([text])[0], dtype=dtype)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [[self.eot_id if part == EOT else 65_536 + ord(part[0]) % 4000 for part in _chars_and_eots(t)]
                for t in texts]


def _chars_and_eots(text: str) -> list[str]:
    out: list[str] = []
    for i, chunk in enumerate(text.split(EOT)):
        out += ([EOT] if i else []) + list(chunk)
    return out


def test_encode_to_file_uint32_for_large_vocab(tmp_path: Path) -> None:
    stats = encode_to_file(WideVocab(), [Piece("the cat", True), Piece("dog", True)], tmp_path / "t.bin", workers=2)
    assert stats == EncodeStats(2, 12, stats.seconds)
    assert (tmp_path / "t.bin").stat().st_size == 12 * 4
    back = read_tokens(tmp_path / "t.bin", 70_000)
    assert back.dtype == np.uint32 and back[-1] == 69_999 and back[0] == 65_536 + ord("t")


def test_encode_to_file_no_pieces_gives_empty_file(tok: Tokenizer, tmp_path: Path) -> None:
    stats = encode_to_file(HFEncoder(tok), [], tmp_path / "e.bin", workers=2)
    assert (stats.documents, stats.tokens) == (0, 0)
    assert (tmp_path / "e.bin").stat().st_size == 0


def test_encoder_needs_eot() -> None:
    with pytest.raises(ValueError, match="no <\\|endoftext\\|> token"):
        HFEncoder(Tokenizer(models.BPE()))


def test_document_lengths() -> None:
    assert document_lengths(np.array([5, 6, 0, 7, 0, 0, 8]), eot=0).tolist() == [2, 1, 0]
    assert document_lengths(np.array([], dtype=np.uint16), eot=0).tolist() == []


def test_resolve_workers() -> None:
    assert resolve_workers(3) == 3
    assert resolve_workers(0) >= 1
    with pytest.raises(ValueError, match="0 = all cores"):
        resolve_workers(-1)
