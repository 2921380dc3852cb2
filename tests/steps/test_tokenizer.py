"""Tests for the byte-level BPE tokenizer and the token files (steps/tokenizer.py)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models

from steps.tokenizer import (
    EOT,
    EncodeStats,
    encode_to_file,
    eot_id,
    load_tokenizer,
    read_tokens,
    split_documents,
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
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_exact(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False).ids
    assert all(0 <= i < tok.get_vocab_size() for i in ids)
    assert tok.decode(ids) == text


def test_training_learns_merges(tok: Tokenizer) -> None:
    # Common corpus words become single tokens; unseen text falls back to bytes.
    assert len(tok.encode(" the", add_special_tokens=False).ids) == 1
    seen = tok.encode("the cat sat on the mat", add_special_tokens=False).ids
    assert len(seen) <= 8
    unseen = tok.encode("zqxj", add_special_tokens=False).ids
    assert len(unseen) == 4


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


@pytest.mark.parametrize("chunk_docs", [1, 2, 2048])
def test_encode_to_file(tok: Tokenizer, tmp_path: Path, chunk_docs: int) -> None:
    docs = ["The cat sat.", "café 中文 🎉", "  spaced  out  ", "a"]
    path = tmp_path / "tokens" / "train.bin"
    stats = encode_to_file(tok, iter(docs), path, chunk_docs=chunk_docs)
    eot = eot_id(tok)
    expected = []
    for d in docs:
        expected += tok.encode(d, add_special_tokens=False).ids + [eot]
    assert stats == EncodeStats(documents=4, tokens=len(expected))
    assert path.stat().st_size == stats.tokens * np.dtype(np.uint16).itemsize
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.bin"]  # no temp file left

    ids = read_tokens(path, tok.get_vocab_size())
    assert isinstance(ids, np.memmap)
    assert ids.dtype == np.uint16
    assert ids.tolist() == expected
    # Splitting the stream at EOT gives back the documents.
    assert int((ids == eot).sum()) == len(docs)
    pieces, current = [], []
    for i in ids.tolist():
        if i == eot:
            pieces.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    assert pieces == docs


def test_encode_to_file_uint32_for_large_vocab(tmp_path: Path) -> None:
    class BigVocab:
        """Stands in for a tokenizer whose vocabulary does not fit uint16."""

        def __init__(self, inner: Tokenizer) -> None:
            self.inner = inner

        def get_vocab_size(self) -> int:
            return 70_000

        def token_to_id(self, token: str) -> int | None:
            return self.inner.token_to_id(token)

        def encode_batch(self, texts, add_special_tokens=False):
            return self.inner.encode_batch(texts, add_special_tokens=add_special_tokens)

    inner = train_bpe(make_documents(30), vocab_size=280)
    stats = encode_to_file(BigVocab(inner), ["the cat", "dog"], tmp_path / "t.bin")  # type: ignore[arg-type]
    assert (tmp_path / "t.bin").stat().st_size == stats.tokens * 4
    back = read_tokens(tmp_path / "t.bin", 70_000)
    assert back.dtype == np.uint32 and back[-1] == eot_id(inner)


def test_encode_to_file_empty_documents_gives_empty_file(tok: Tokenizer, tmp_path: Path) -> None:
    stats = encode_to_file(tok, [], tmp_path / "e.bin")
    assert stats == EncodeStats(0, 0)
    assert (tmp_path / "e.bin").stat().st_size == 0


def test_split_documents() -> None:
    text = "first doc\nstill first\n\nsecond\n\n\n\n  third  \n\n   \n\nfourth\n"
    assert split_documents(text) == ["first doc\nstill first", "second", "third", "fourth"]
    assert split_documents("") == []
    assert split_documents("\n\n\n") == []
    assert split_documents("single") == ["single"]
