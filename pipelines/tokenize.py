"""Stage `tokenize`: train the BPE tokenizer on the corpus and encode train/val token files."""

from __future__ import annotations

import time

from pipelines.stage import StageContext, run_stage, stage_task
from prefect import flow
from model.atomic import write_json
from steps import layout, plots
from steps.tokenizer import encode_to_file, split_documents, token_dtype, train_bpe

SECTIONS = ["seed", "tokenize", "tracking"]


@stage_task
def train_and_encode(ctx: StageContext) -> dict[str, float]:
    cfg = ctx.params.tokenize
    docs = split_documents(layout.CORPUS.read_text(encoding="utf-8"))
    if len(docs) < 2:
        raise ValueError(f"{layout.CORPUS}: needs at least 2 documents (blank-line separated) to split train/val")
    n_val = max(1, int(len(docs) * cfg.val_fraction))
    train_docs, val_docs = docs[:-n_val], docs[-n_val:]
    start = time.perf_counter()
    tok = train_bpe(train_docs, cfg.vocab_size, cfg.min_frequency)
    train_seconds = time.perf_counter() - start
    layout.TOKENS.mkdir(parents=True, exist_ok=True)
    tok.save(str(layout.TOKENIZER))
    start = time.perf_counter()
    train_stats = encode_to_file(tok, train_docs, layout.TRAIN_BIN)
    val_stats = encode_to_file(tok, val_docs, layout.VAL_BIN)
    encode_seconds = time.perf_counter() - start
    vocab = tok.get_vocab_size()
    chars = sum(len(d) for d in docs)
    write_json(layout.TOKENS_META, {
        "vocab_size": vocab, "dtype": token_dtype(vocab).name,
        "train_tokens": train_stats.tokens, "val_tokens": val_stats.tokens,
    })
    lengths = [len(e.ids) for e in tok.encode_batch(docs[:2000], add_special_tokens=False)]
    plots.grouped_bars(
        ctx.plots / "doc_lengths.png",
        ["min", "median", "max"],
        {"tokens per document": [min(lengths), sorted(lengths)[len(lengths) // 2], max(lengths)]},
        "Document lengths in tokens", "tokens",
    )
    return {
        "vocab_size": vocab,
        "train_documents": train_stats.documents,
        "val_documents": val_stats.documents,
        "train_tokens": train_stats.tokens,
        "val_tokens": val_stats.tokens,
        "chars_per_token": chars / max(1, train_stats.tokens + val_stats.tokens),
        "tokenizer_train_seconds": round(train_seconds, 3),
        "encode_tokens_per_s": (train_stats.tokens + val_stats.tokens) / max(encode_seconds, 1e-9),
    }


def _body(ctx: StageContext) -> dict[str, float]:
    return train_and_encode(ctx)


@flow(name="tokenize")
def tokenize_flow(params_path: str = "params.yaml") -> dict[str, float]:
    return run_stage("tokenize", params_path, SECTIONS, [layout.CORPUS], _body)
