"""Train a byte-level BPE tokenizer (HF `tokenizers`) and encode a corpus to token files, in parallel.

Two backends sit behind one `TokenEncoder` interface: a `tokenizers.Tokenizer` (our trained BPE)
and a `tiktoken.Encoding` (GPT-2's BPE). Each call encodes on one core; `encode_to_file` spreads
batches over threads, which run in parallel because both Rust libraries release the GIL.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tiktoken
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tqdm import tqdm

from model.atomic import atomic_path
from steps.tokenization.corpus import EOT, CutRule, Piece, gpt2_clean_cut, spaced_clean_cut

# Characters encoded per call. Measured on the 10 MB benchmark corpus: `tokenizers` runs 15-20 %
# faster on 64 KiB texts than on 1 MiB ones (smaller Encoding objects), tiktoken is indifferent.
BATCH_CHARS = 1 << 16


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """A GPT-2 style byte-level BPE: any UTF-8 text encodes, and decoding gives it back exactly.

    Unlike GPT-2's, a word is one token wherever it stands. GPT-2's pre-tokenizer gives a word after
    a space one token (` Jack`) and the same word at the start of a line or text another split
    (`J` `ack`), which a small corpus seldom shows: an instruction's answer starts a line, so the
    model must answer in a form it has hardly seen. Here the normalizer writes a space after every
    newline that another character follows and one at the start of each text, so both forms are
    ` Jack`; the decoder takes exactly those spaces out again.

    `texts` is consumed once, as a stream: the trainer keeps word counts, not the text.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(r"\n(?=[^\n])"), "\n "), normalizers.Prepend(" ")]
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    # ByteLevel joins the tokens into one string, so the next two see the whole text at once.
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace("\n ", "\n"), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        # Seeding all 256 byte symbols guarantees no input is ever out of vocabulary.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
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


class TokenEncoder(ABC):
    """Text -> token ids, one core per call. The literal `<|endoftext|>` encodes as that token."""

    vocab_size: int
    eot_id: int
    clean_cut: CutRule
    """Where a long document may be cut into pieces without changing its ids (`corpus.CutRule`)."""

    @abstractmethod
    def encode_array(self, text: str, dtype: np.dtype) -> np.ndarray:
        """The ids of `text` as one array: no per-token Python work beyond the library's own."""

    @abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of each text, in order, on the calling thread."""


class HFEncoder(TokenEncoder):
    """A `tokenizers.Tokenizer` (tokenizer.json); its end-of-text token is required.

    `clean_cut` is the rule of its pre-tokenization: `spaced_clean_cut` for a `train_bpe`
    tokenizer, `gpt2_clean_cut` for GPT-2's.
    """

    def __init__(self, tok: Tokenizer, clean_cut: CutRule = spaced_clean_cut) -> None:
        self.tok = tok
        self.clean_cut = clean_cut
        self.vocab_size = tok.get_vocab_size()
        self.eot_id = eot_id(tok)

    def encode_array(self, text: str, dtype: np.dtype) -> np.ndarray:
        ids = self._encode(text)
        return np.fromiter(ids, dtype=dtype, count=len(ids))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._encode(text) for text in texts]

    def _encode(self, text: str) -> list[int]:
        # The batch call with one text: it releases the GIL (plain `encode` holds it), skips
        # offsets, and a one-item batch stays on one core whatever TOKENIZERS_PARALLELISM says.
        return self.tok.encode_batch_fast([text], add_special_tokens=False)[0].ids


class TiktokenEncoder(TokenEncoder):
    """A `tiktoken.Encoding` that has `<|endoftext|>` among its special tokens (GPT-2's has)."""

    def __init__(self, enc: tiktoken.Encoding) -> None:
        if EOT not in enc.special_tokens_set:
            raise ValueError(f"tiktoken encoding {enc.name} has no {EOT} token")
        self.enc = enc
        self.clean_cut = gpt2_clean_cut
        self.vocab_size = enc.n_vocab
        self.eot_id = enc.eot_token
        self._special = {EOT}

    def encode_array(self, text: str, dtype: np.dtype) -> np.ndarray:
        # A uint32 buffer straight from Rust, without building a Python list of ints.
        return self.enc.encode_to_numpy(text, allowed_special=self._special).astype(dtype, copy=False)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.enc.encode(text, allowed_special=self._special) for text in texts]


@dataclass(frozen=True)
class EncodeStats:
    documents: int
    tokens: int
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


class _Batch(NamedTuple):
    """Pieces joined into one text, end-of-text tokens written in, so one call encodes them."""

    text: str
    documents: int
    nbytes: int


class _Encoded(NamedTuple):
    documents: int
    nbytes: int
    ids: np.ndarray


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_workers(workers: int) -> int:
    """0 means all the cores this process may use."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0 = all cores), got {workers}")
    return workers or cpu_count()


def encode_to_file(
    encoder: TokenEncoder,
    pieces: Iterable[Piece],
    path: str | Path,
    workers: int = 1,
    batch_chars: int = BATCH_CHARS,
    total_bytes: int | None = None,
) -> EncodeStats:
    """Encode pieces into a flat binary token file, end-of-text after each piece ending a document.

    Pieces stream in batches of about `batch_chars` characters, at most two batches per worker in
    flight, so memory is bounded whatever the corpus size; output order is input order. Ids are
    uint16 when the vocabulary fits, else uint32. The file appears only when complete (atomic
    rename). `total_bytes` (the pieces' file bytes) sizes the progress bar shown on long runs.
    """
    workers = resolve_workers(workers)
    dtype = token_dtype(encoder.vocab_size)
    documents = tokens = 0
    start = time.perf_counter()
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as out,
        tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"encode {Path(path).name}", delay=2.0) as bar,
    ):
        for encoded in _encode_batches(encoder, _batches(pieces, batch_chars), workers, dtype):
            encoded.ids.tofile(out)
            tokens += encoded.ids.size
            documents += encoded.documents
            bar.update(encoded.nbytes)
    return EncodeStats(documents=documents, tokens=tokens, seconds=time.perf_counter() - start)


def read_tokens(path: str | Path, vocab_size: int) -> np.memmap:
    """Memory-map a token file without loading it."""
    return np.memmap(path, dtype=token_dtype(vocab_size), mode="r")


def document_lengths(ids: np.ndarray, eot: int) -> np.ndarray:
    """Tokens of each complete document in a token stream (end-of-text not counted)."""
    ends = np.flatnonzero(ids == eot)
    return np.diff(ends, prepend=-1) - 1


def _batches(pieces: Iterable[Piece], batch_chars: int) -> Iterator[_Batch]:
    parts: list[str] = []
    size = documents = nbytes = 0
    for piece in pieces:
        parts.append(piece.text)
        if piece.ends_document:
            parts.append(EOT)
            documents += 1
        size += len(piece.text)
        nbytes += piece.nbytes
        if size >= batch_chars:
            yield _Batch("".join(parts), documents, nbytes)
            parts, size, documents, nbytes = [], 0, 0, 0
    if parts:
        yield _Batch("".join(parts), documents, nbytes)


def _encode_batches(
    encoder: TokenEncoder, batches: Iterator[_Batch], workers: int, dtype: np.dtype
) -> Iterator[_Encoded]:
    # One worker waits for each batch before reading the next, so it really uses one core. It
    # still encodes on a pool thread, which measured faster than the main thread in most runs
    # (3.3-3.5 vs 2.9-3.2 MB/s with `tokenizers`); the cause is not pinned down (allocator arenas?).
    in_flight = 1 if workers == 1 else 2 * workers
    # Only counts wait in the queue; each batch's text is dropped once it is handed to a worker.
    pending: deque[tuple[int, int, Future[np.ndarray]]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="encode") as pool:
        try:
            for batch in batches:
                pending.append((batch.documents, batch.nbytes, pool.submit(encoder.encode_array, batch.text, dtype)))
                # Read ahead enough to keep every worker busy, no further: that bounds memory.
                if len(pending) >= in_flight:
                    documents, nbytes, future = pending.popleft()
                    yield _Encoded(documents, nbytes, future.result())
            while pending:
                documents, nbytes, future = pending.popleft()
                yield _Encoded(documents, nbytes, future.result())
        finally:
            for *_, future in pending:
                future.cancel()
