"""Tests for GPT-2's BPE via tiktoken and as a `tokenizers.Tokenizer` (steps/tokenization/gpt2_bpe.py)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
import tiktoken_ext.openai_public
from tokenizers import Tokenizer

from steps.tokenization.corpus import EOT, iter_pieces
from steps.tokenization.gpt2_bpe import ENCODER_JSON, EOT_ID, VOCAB_BPE, VOCAB_SIZE, gpt2_encoding, gpt2_tokenizer
from steps.tokenization.tokenizer import HFEncoder, TiktokenEncoder, encode_to_file, read_tokens

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
GPT2 = SHARED / "gpt2"
VERDICT = SHARED / "book" / "the-verdict.txt"

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done what we'd said; it's John's.  He'S HERE'LL",
    "def f(x):\n    return {'a': [1, 2.5e-3, None]}  # comment\n\n\tif x != 0: pass\n",
    "3.14159 265358979 1,000,000 2024-01-31 0x1F 007 ½ ²",
    "café naïve résumé Ünïcödé — “quotes” … 中文字符测试 日本語 한국어 العربية",
    "emoji 🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷 \u200b zero width",
    "runs of spaces:     five, then tabs\t\t\tand newlines\n\n\n\nend   \n  \r\n trailing   ",
    "   ",
    "\n",
    "",
    "a\u00a0b\u3000c\u2028d",
]


def gpt2_files() -> tuple[Path, Path]:
    if not (GPT2 / "encoder.json").is_file() or not (GPT2 / "vocab.bpe").is_file():
        pytest.skip("shared/data/gpt2 not available")
    return GPT2 / "encoder.json", GPT2 / "vocab.bpe"


@pytest.fixture(scope="module", autouse=True)
def private_tiktoken_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tiktoken copies what it reads into its cache folder: keep that out of the user's /tmp."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("tiktoken-cache")
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    return gpt2_encoding(*gpt2_files())


@pytest.fixture(scope="module")
def hf() -> Tokenizer:
    return gpt2_tokenizer(*gpt2_files())


def test_urls_and_hashes_are_tiktokens(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}
    monkeypatch.setattr(tiktoken_ext.openai_public, "data_gym_to_mergeable_bpe_ranks", lambda **kw: seen.update(kw))
    tiktoken_ext.openai_public.gpt2()
    assert seen == {
        "vocab_bpe_file": VOCAB_BPE.url, "vocab_bpe_hash": VOCAB_BPE.sha256,
        "encoder_json_file": ENCODER_JSON.url, "encoder_json_hash": ENCODER_JSON.sha256,
    }


@pytest.mark.parametrize("text", SAMPLES)
def test_hf_tokenizer_matches_tiktoken(encoding: tiktoken.Encoding, hf: Tokenizer, text: str) -> None:
    ids = hf.encode(text, add_special_tokens=False).ids
    assert ids == encoding.encode_ordinary(text)
    assert hf.decode(ids) == text


def test_the_verdict(encoding: tiktoken.Encoding, hf: Tokenizer) -> None:
    if not VERDICT.is_file():
        pytest.skip("shared/data/book not available")
    text = VERDICT.read_text(encoding="utf-8")
    ids = encoding.encode_ordinary(text)
    assert len(ids) == 5145  # as shared/README.md records
    assert hf.encode(text, add_special_tokens=False).ids == ids
    assert hf.decode(ids) == text


def test_vocabulary_and_eot(encoding: tiktoken.Encoding, hf: Tokenizer, tmp_path: Path) -> None:
    assert encoding.n_vocab == hf.get_vocab_size() == VOCAB_SIZE == 50257
    assert encoding.eot_token == hf.token_to_id(EOT) == EOT_ID == 50256
    assert hf.encode(EOT, add_special_tokens=False).ids == [EOT_ID]
    assert hf.decode([EOT_ID], skip_special_tokens=False) == EOT
    # What downstream stages do: save as tokenizer.json and load it back.
    hf.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert loaded.encode_batch(SAMPLES[:3], add_special_tokens=False)[2].ids == encoding.encode_ordinary(SAMPLES[2])


def test_both_backends_write_the_same_file(encoding: tiktoken.Encoding, hf: Tokenizer, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"\n{EOT}\n".join(s for s in SAMPLES if s.strip()) + f"\ninline {EOT} token\n", encoding="utf-8")
    fast, ref = TiktokenEncoder(encoding), HFEncoder(hf)
    a = encode_to_file(fast, iter_pieces(corpus), tmp_path / "a.bin", workers=2, batch_chars=50)
    b = encode_to_file(ref, iter_pieces(corpus), tmp_path / "b.bin", workers=1)
    assert (a.documents, a.tokens) == (b.documents, b.tokens)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert read_tokens(tmp_path / "a.bin", VOCAB_SIZE).dtype == np.uint16
    # The literal token inside a line is the end-of-text token for both backends.
    assert fast.encode_batch([f"x{EOT}y"]) == ref.encode_batch([f"x{EOT}y"]) == [
        encoding.encode_ordinary("x") + [EOT_ID] + encoding.encode_ordinary("y")]


def test_chunked_verdict_encodes_like_the_whole(encoding: tiktoken.Encoding, tmp_path: Path) -> None:
    if not VERDICT.is_file():
        pytest.skip("shared/data/book not available")
    text = VERDICT.read_text(encoding="utf-8")
    pieces = list(iter_pieces(VERDICT, chunk_bytes=1000))
    assert len(pieces) > 10
    encode_to_file(TiktokenEncoder(encoding), pieces, tmp_path / "t.bin", batch_chars=1)
    whole = encoding.encode_ordinary(text.rstrip("\n")) + [EOT_ID]
    assert read_tokens(tmp_path / "t.bin", VOCAB_SIZE).tolist() == whole


def test_wrong_file_is_named(tmp_path: Path) -> None:
    encoder_json, vocab_bpe = gpt2_files()
    fake_merges = tmp_path / "vocab.bpe"
    fake_merges.write_text("#version: 0.2\nh e\n")
    fake_vocab = tmp_path / "encoder.json"
    fake_vocab.write_text("{}")
    for build in (gpt2_encoding, gpt2_tokenizer):
        with pytest.raises(ValueError, match=rf"{fake_merges}: not GPT-2's vocab.bpe \(sha256"):
            build(encoder_json, fake_merges)
        with pytest.raises(ValueError, match=rf"{fake_vocab}: not GPT-2's encoder.json \(sha256"):
            build(fake_vocab, vocab_bpe)


def test_both_paths_or_neither(tmp_path: Path) -> None:
    for build in (gpt2_encoding, gpt2_tokenizer):
        with pytest.raises(ValueError, match="both encoder.json and vocab.bpe, or neither"):
            build(tmp_path / "encoder.json", None)
        with pytest.raises(FileNotFoundError, match="not found"):
            build(tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_without_paths_tiktoken_cache_is_used_offline(
    encoding: tiktoken.Encoding, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder_json, vocab_bpe = gpt2_files()
    # Pre-populate a cache the way tiktoken names its entries: sha1 of the download address.
    for url, src in ((ENCODER_JSON.url, encoder_json), (VOCAB_BPE.url, vocab_bpe)):
        shutil.copy(src, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # no encoding built earlier in-process

    def no_network(blobpath: str) -> bytes:
        raise AssertionError(f"tried to download {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    cached_enc, cached_hf = gpt2_encoding(None, None), gpt2_tokenizer(None, None)
    for text in SAMPLES:
        ids = encoding.encode_ordinary(text)
        assert cached_enc.encode_ordinary(text) == cached_hf.encode(text, add_special_tokens=False).ids == ids
    assert cached_hf.get_vocab_size() == cached_enc.n_vocab == VOCAB_SIZE
