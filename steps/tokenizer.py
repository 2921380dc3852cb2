"""Train a byte-level BPE tokenizer (HF `tokenizers`) and encode a corpus to token memmaps."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model.atomic import atomic_path

EOT = "<|endoftext|>"
log = logging.getLogger("gptpipe.tokenizer")


def split_documents(text: str) -> list[str]:
    """Documents are blocks separated by blank lines; empty blocks are dropped."""
    return [doc.strip() for doc in text.split("\n\n") if doc.strip()]


def train_bpe(documents: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """A GPT-2 style byte-level BPE: any UTF-8 text encodes, and decoding gives it back exactly."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        # Seeding all 256 byte symbols guarantees no input is ever out of vocabulary.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the tokenize stage first (dvc repro tokenize)")
    return Tokenizer.from_file(str(path))


def eot_id(tok: Tokenizer) -> int:
    token_id = tok.token_to_id(EOT)
    if token_id is None:
        raise ValueError(f"tokenizer has no {EOT} token")
    return token_id


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves the file size whenever every id fits in it."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class EncodeStats:
    documents: int
    tokens: int


def encode_to_file(
    tok: Tokenizer, documents: Iterable[str], path: str | Path, chunk_docs: int = 2048
) -> EncodeStats:
    """Encode documents chunk by chunk, each followed by end-of-text, into a flat binary file.

    Chunking bounds memory by `chunk_docs` documents, and `encode_batch` runs each chunk on all
    cores in Rust. The file appears only when complete (atomic rename).
    """
    dtype = token_dtype(tok.get_vocab_size())
    eot = eot_id(tok)
    n_docs = n_tokens = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        for chunk in _chunks(documents, chunk_docs):
            for enc in tok.encode_batch(chunk, add_special_tokens=False):
                ids = np.asarray(enc.ids + [eot], dtype=dtype)
                ids.tofile(out)
                n_tokens += ids.size
            n_docs += len(chunk)
    return EncodeStats(documents=n_docs, tokens=n_tokens)


def read_tokens(path: str | Path, vocab_size: int) -> np.memmap:
    """Memory-map a token file without loading it."""
    return np.memmap(path, dtype=token_dtype(vocab_size), mode="r")


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
