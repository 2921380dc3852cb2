"""OpenAI's GPT-2 BPE, built twice from the same two files: for tiktoken and for HF `tokenizers`.

tiktoken encodes the corpus fast; the rest of the pipeline loads `tokenizer.json` with
`tokenizers`, so the same vocabulary and merges are also built as a `tokenizers.Tokenizer`.
Both come from `encoder.json` + `vocab.bpe`: local files (offline) or tiktoken's download cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks, read_file_cached
from tiktoken_ext.openai_public import r50k_pat_str
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

EOT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257


@dataclass(frozen=True)
class Gpt2File:
    """One of the two published GPT-2 files: where tiktoken downloads it, and its checksum."""

    name: str
    url: str
    sha256: str


# The addresses and checksums tiktoken_ext.openai_public.gpt2() uses (a test checks they agree).
ENCODER_JSON = Gpt2File(
    "encoder.json",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
)
VOCAB_BPE = Gpt2File(
    "vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
)


def gpt2_encoding(encoder_json: Path | None, vocab_bpe: Path | None) -> tiktoken.Encoding:
    """tiktoken's GPT-2 encoding: from the two local files, or tiktoken's own download and cache."""
    paths = _local_paths(encoder_json, vocab_bpe)
    if paths is None:
        return tiktoken.get_encoding("gpt2")
    encoder_json, vocab_bpe = paths
    # Checked here first so that a wrong file gets a message naming it (tiktoken's names a hash).
    _read_verified(encoder_json, ENCODER_JSON)
    _read_verified(vocab_bpe, VOCAB_BPE)
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE.sha256,
        encoder_json_hash=ENCODER_JSON.sha256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={EOT: EOT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


def gpt2_tokenizer(encoder_json: Path | None, vocab_bpe: Path | None) -> Tokenizer:
    """The same GPT-2 BPE as a `tokenizers.Tokenizer`, whose ids equal tiktoken's."""
    paths = _local_paths(encoder_json, vocab_bpe)
    if paths is None:
        encoder_bytes = read_file_cached(ENCODER_JSON.url, ENCODER_JSON.sha256)
        merges_bytes = read_file_cached(VOCAB_BPE.url, VOCAB_BPE.sha256)
    else:
        encoder_bytes = _read_verified(paths[0], ENCODER_JSON)
        merges_bytes = _read_verified(paths[1], VOCAB_BPE)
    return _byte_level_bpe(json.loads(encoder_bytes), _parse_merges(merges_bytes.decode("utf-8")))


def _local_paths(encoder_json: Path | None, vocab_bpe: Path | None) -> tuple[Path, Path] | None:
    if encoder_json is None and vocab_bpe is None:
        return None
    if encoder_json is None or vocab_bpe is None:
        raise ValueError("GPT-2 BPE needs both encoder.json and vocab.bpe, or neither (tiktoken downloads them)")
    return Path(encoder_json), Path(vocab_bpe)


def _read_verified(path: Path, expected: Gpt2File) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (GPT-2's {expected.name}, published at {expected.url})")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.sha256:
        raise ValueError(
            f"{path}: not GPT-2's {expected.name} (sha256 {actual}, expected {expected.sha256}); "
            f"download it from {expected.url}"
        )
    return data


def _parse_merges(vocab_bpe: str) -> list[tuple[str, str]]:
    # As tiktoken reads it: a "#version" line first, one "left right" merge per line, rank order.
    return [tuple(line.split()) for line in vocab_bpe.split("\n")[1:] if line]  # type: ignore[misc]


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    # GPT-2 maps bytes to printable characters and splits with its regex; no leading space is added.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # encoder.json already holds <|endoftext|> as 50256; registering it makes it one special token.
    tok.add_special_tokens([AddedToken(EOT, special=True)])
    return tok
