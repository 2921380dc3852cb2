"""Tokenization speed: the bare library call against our streaming path, on one and two workers.

    python bench/tokenization.py [--mb 10] [--repeats 3] [--seed 123]

Generates about 10 MB of corpus (steps/builtin_data.generate_corpus, deterministic), one document
per paragraph, written in the corpus.txt format to a temporary folder. For each backend (our BPE,
vocabulary 2048 trained on that text, through `tokenizers`; GPT-2 through tiktoken, when its files
are in ../shared/data/gpt2) it times, best of `--repeats`:

    raw    the library's batch call on the documents already in memory, one core, ids as lists:
           `Tokenizer.encode_batch` with TOKENIZERS_PARALLELISM=false; `encode_ordinary_batch(num_threads=1)`
    ours   iter_pieces -> encode_to_file with workers=1: reading and decoding the file, encoding,
           writing the .bin
    ours   the same with workers=2

and checks that all three give the same ids. Prints a table, then as its last line one JSON object:
`ratio` (ours on 1 worker / raw on 1 core, tokens/s, BPE), `ratio_gpt2`, `scaling_2_workers`
(ours 2 workers / 1 worker, BPE) and `scaling_2_workers_gpt2`.
"""

from __future__ import annotations

import os
import sys

# Before `tokenizers` is imported: the raw baseline must stay on one core.
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from steps.data.builtin_data import generate_corpus
from steps.tokenization.corpus import EOT, iter_pieces
from steps.tokenization.gpt2_bpe import gpt2_encoding
from steps.tokenization.tokenizer import (
    HFEncoder,
    TiktokenEncoder,
    TokenEncoder,
    cpu_count,
    encode_to_file,
    read_tokens,
    train_bpe,
)

SHARED_GPT2 = ROOT / ".." / "shared" / "data" / "gpt2"


@dataclass(frozen=True)
class Row:
    backend: str
    variant: str
    seconds: float
    tokens: int


def best_of(repeats: int, run: Callable[[], int]) -> tuple[float, int]:
    best, tokens = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = run()
        best = min(best, time.perf_counter() - start)
    return best, tokens


def write_corpus(folder: Path, seed: int, target_bytes: int) -> tuple[Path, list[str]]:
    paragraphs = generate_corpus(seed, target_bytes=target_bytes).split("\n\n")
    docs = [p.strip("\n") for p in paragraphs if p.strip()]
    path = folder / "corpus.txt"
    path.write_text(f"\n{EOT}\n".join(docs) + "\n", encoding="utf-8")
    return path, docs


def gpt2_encoder() -> tuple[TiktokenEncoder | None, str]:
    """GPT-2 from its two files in ../shared/data/gpt2; never from the network (a benchmark must
    not wait on a download), so without them the GPT-2 rows are skipped."""
    if (SHARED_GPT2 / "encoder.json").is_file() and (SHARED_GPT2 / "vocab.bpe").is_file():
        return TiktokenEncoder(gpt2_encoding(SHARED_GPT2 / "encoder.json", SHARED_GPT2 / "vocab.bpe")), "shared"
    return None, f"no GPT-2 files (encoder.json, vocab.bpe) in {SHARED_GPT2}"


def bench_backend(
    name: str, encoder: TokenEncoder, raw: Callable[[], list[list[int]]], corpus: Path, repeats: int
) -> list[Row]:
    out = corpus.with_suffix(".bin")
    size = corpus.stat().st_size
    raw_ids: list[list[int]] = []

    def run_raw() -> int:
        nonlocal raw_ids
        raw_ids = raw()
        return sum(len(ids) for ids in raw_ids) + len(raw_ids)  # + one end-of-text per document

    def run_ours(workers: int) -> Callable[[], int]:
        return lambda: encode_to_file(encoder, iter_pieces(corpus, clean_cut=encoder.clean_cut), out, workers,
                                      total_bytes=size).tokens

    timings = {"raw, 1 core": best_of(repeats, run_raw)}
    expected = np.fromiter((i for ids in raw_ids for i in ids + [encoder.eot_id]), dtype=np.int64)
    for workers in (1, 2):
        variant = f"ours, {workers} worker{'s' if workers > 1 else ''}"
        timings[variant] = best_of(repeats, run_ours(workers))
        if not np.array_equal(read_tokens(out, encoder.vocab_size), expected):
            raise SystemExit(f"{name} {variant}: ids differ from the library's: the benchmark is void")
    return [Row(name, variant, seconds, tokens) for variant, (seconds, tokens) in timings.items()]


def print_table(rows: list[Row], corpus_bytes: int) -> None:
    print(f"{'backend':<26}{'variant':<18}{'seconds':>9}{'MB/s':>8}{'tokens/s':>12}{'ratio':>8}")
    for row in rows:
        raw = next(r for r in rows if r.backend == row.backend and r.variant.startswith("raw"))
        ratio = raw.seconds / row.seconds
        print(f"{row.backend:<26}{row.variant:<18}{row.seconds:>9.3f}{corpus_bytes / row.seconds / 1e6:>8.2f}"
              f"{row.tokens / row.seconds:>12,.0f}{ratio:>8.2f}")


def ratio(rows: list[Row], backend: str, variant: str, base: str) -> float | None:
    found = {r.variant: r.seconds for r in rows if r.backend == backend}
    return round(found[base] / found[variant], 3) if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=10.0, help="corpus size in MB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--vocab", type=int, default=2048)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        corpus, docs = write_corpus(Path(tmp), args.seed, int(args.mb * 1e6))
        size = corpus.stat().st_size
        tok = train_bpe(docs, args.vocab)
        rows = bench_backend(
            f"BPE {tok.get_vocab_size()} (tokenizers)", HFEncoder(tok),
            lambda: [e.ids for e in tok.encode_batch(docs, add_special_tokens=False)], corpus, args.repeats)
        gpt2, source = gpt2_encoder()
        if gpt2 is not None:
            rows += bench_backend(
                "GPT-2 (tiktoken)", gpt2, lambda: gpt2.enc.encode_ordinary_batch(docs, num_threads=1),
                corpus, args.repeats)

    print(f"{size / 1e6:.1f} MB corpus, {len(docs)} documents; {cpu_count()} cores; best of {args.repeats}; "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    if gpt2 is None:
        print(f"GPT-2 row skipped: {source}")
    print_table(rows, size)
    bpe = rows[0].backend
    print(json.dumps({
        "ratio": ratio(rows, bpe, "ours, 1 worker", "raw, 1 core"),
        "ratio_gpt2": ratio(rows, "GPT-2 (tiktoken)", "ours, 1 worker", "raw, 1 core"),
        "scaling_2_workers": ratio(rows, bpe, "ours, 2 workers", "ours, 1 worker"),
        "scaling_2_workers_gpt2": ratio(rows, "GPT-2 (tiktoken)", "ours, 2 workers", "ours, 1 worker"),
        "mb_per_s_ours_1_worker": round(size / next(r.seconds for r in rows if r.variant == "ours, 1 worker") / 1e6, 2),
        "corpus_mb": round(size / 1e6, 2),
        "cores": cpu_count(),
    }))


if __name__ == "__main__":
    main()
