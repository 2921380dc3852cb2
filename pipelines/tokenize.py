"""Stage `tokenize`: get the tokenizer (train our BPE, or GPT-2's) and encode train/val token files."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tokenizers import Tokenizer

from model.atomic import write_json
from pipelines.stage import StageContext, run_stage, stage_flow, stage_task
from steps import layout
from steps.config import TokenizeConfig
from steps.evaluation import plots
from steps.tokenization.corpus import CorpusPart, spaced_clean_cut, split_corpus
from steps.tokenization.gpt2_bpe import gpt2_encoding, gpt2_tokenizer
from steps.tokenization.tokenizer import (
    EncodeStats,
    HFEncoder,
    TiktokenEncoder,
    TokenEncoder,
    document_lengths,
    encode_to_file,
    read_tokens,
    resolve_workers,
    token_dtype,
    train_bpe,
)

SECTIONS = ["seed", "tokenize", "tracking"]
# Document lengths for the plot come from the start of train.bin: enough for the statistics,
# bounded whatever the corpus size.
PLOT_TOKENS = 4_000_000
log = logging.getLogger("gptpipe.tokenize")


def build_tokenizer(cfg: TokenizeConfig, train: CorpusPart) -> tuple[Tokenizer, TokenEncoder]:
    """tokenizer.json's tokenizer, and the encoder that writes the token files with the same ids."""
    if cfg.kind == "gpt2":
        encoder_json = Path(cfg.encoder_json) if cfg.encoder_json else None
        vocab_bpe = Path(cfg.vocab_bpe) if cfg.vocab_bpe else None
        # tiktoken encodes faster than `tokenizers` with the same vocabulary (tests check the ids agree).
        return gpt2_tokenizer(encoder_json, vocab_bpe), TiktokenEncoder(gpt2_encoding(encoder_json, vocab_bpe))
    tok = train_bpe(train.texts(clean_cut=spaced_clean_cut), cfg.vocab_size, cfg.min_frequency)
    return tok, HFEncoder(tok)


@stage_task
def train_and_encode(ctx: StageContext) -> dict[str, float]:
    cfg = ctx.params.tokenize
    train, val = split_corpus(layout.CORPUS, cfg.val_fraction)
    start = time.perf_counter()
    tok, encoder = build_tokenizer(cfg, train)
    tokenizer_seconds = time.perf_counter() - start
    layout.TOKENS.mkdir(parents=True, exist_ok=True)
    tok.save(str(layout.TOKENIZER))
    workers = resolve_workers(cfg.workers)
    train_stats = encode_part(encoder, train, layout.TRAIN_BIN, workers)
    val_stats = encode_part(encoder, val, layout.VAL_BIN, workers)
    tokens = train_stats.tokens + val_stats.tokens
    encode_seconds = train_stats.seconds + val_stats.seconds
    write_json(layout.TOKENS_META, {
        "kind": cfg.kind, "vocab_size": encoder.vocab_size, "dtype": token_dtype(encoder.vocab_size).name,
        "train_tokens": train_stats.tokens, "val_tokens": val_stats.tokens,
    })
    plot_document_lengths(ctx, encoder)
    return {
        "vocab_size": encoder.vocab_size,
        "train_documents": train_stats.documents,
        "val_documents": val_stats.documents,
        "train_tokens": train_stats.tokens,
        "val_tokens": val_stats.tokens,
        "bytes_per_token": (train.nbytes + val.nbytes) / max(1, tokens),
        "tokenizer_seconds": round(tokenizer_seconds, 3),
        "encode_seconds": round(encode_seconds, 3),
        "encode_tokens_per_s": tokens / max(encode_seconds, 1e-9),
        "encode_workers": workers,
    }


def encode_part(encoder: TokenEncoder, part: CorpusPart, path: Path, workers: int) -> EncodeStats:
    stats = encode_to_file(encoder, part.pieces(clean_cut=encoder.clean_cut), path, workers=workers, total_bytes=part.nbytes)
    log.info("%s: %d documents, %d tokens, %.0f tokens/s on %d workers",
             path, stats.documents, stats.tokens, stats.tokens_per_s, workers)
    return stats


def plot_document_lengths(ctx: StageContext, encoder: TokenEncoder) -> None:
    ids = read_tokens(layout.TRAIN_BIN, encoder.vocab_size)[:PLOT_TOKENS]
    lengths = sorted(document_lengths(ids, encoder.eot_id).tolist()) or [len(ids)]
    plots.grouped_bars(
        ctx.plots / "doc_lengths.png",
        ["min", "median", "max"],
        {"tokens per document": [lengths[0], lengths[len(lengths) // 2], lengths[-1]]},
        "Document lengths in tokens (train split)", "tokens",
    )


def _body(ctx: StageContext) -> dict[str, float]:
    return train_and_encode(ctx)


@stage_flow("tokenize")
def tokenize_flow(params_path: str = "params.yaml") -> dict[str, float]:
    return run_stage("tokenize", params_path, SECTIONS, [layout.CORPUS], _body)
