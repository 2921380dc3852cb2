"""The tokenize stage's body on a small corpus, both kinds, without Prefect or MLflow around it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from pipelines.stage import StageContext
from pipelines.tokenize import train_and_encode
from steps import layout
from steps.tokenization.corpus import EOT
from steps.tokenization.tokenizer import read_tokens
from tests.params import shipped_params

GPT2 = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gpt2"
DOCS = [f"Document {i}: the cat sat on the mat.\n\nA second paragraph, number {i * 7}." + " More." * (i % 5)
        for i in range(60)]


def run_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenize: dict) -> dict[str, float]:
    monkeypatch.chdir(tmp_path)
    layout.CORPUS.parent.mkdir(parents=True)
    layout.CORPUS.write_text(f"\n{EOT}\n".join(DOCS) + "\n", encoding="utf-8")
    ctx = StageContext("tokenize", shipped_params({"tokenize": tokenize}), run=None)  # type: ignore[arg-type]
    return train_and_encode.fn(ctx)


def decoded_documents(tok: Tokenizer, ids: np.ndarray) -> list[str]:
    # Each document is decoded alone: our BPE writes a space at a text's start, which its decoder
    # drops only at the start of what it decodes.
    eot = tok.token_to_id(EOT)
    assert ids[-1] == eot
    ends = np.flatnonzero(ids == eot)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tok.decode(ids[a:b].tolist()) for a, b in zip(starts, ends)]


def check_outputs(metrics: dict[str, float], kind: str) -> Tokenizer:
    tok = Tokenizer.from_file(str(layout.TOKENIZER))
    meta = json.loads(layout.TOKENS_META.read_text())
    assert meta == {"kind": kind, "vocab_size": tok.get_vocab_size(), "dtype": "uint16",
                    "train_tokens": metrics["train_tokens"], "val_tokens": metrics["val_tokens"]}
    train = read_tokens(layout.TRAIN_BIN, meta["vocab_size"])
    val = read_tokens(layout.VAL_BIN, meta["vocab_size"])
    assert (train.size, val.size) == (metrics["train_tokens"], metrics["val_tokens"])
    # The tail ~10 % of the bytes is validation, cut at a line boundary, maybe inside a document.
    train_docs, val_docs = decoded_documents(tok, train), decoded_documents(tok, val)
    assert (len(train_docs), len(val_docs)) == (metrics["train_documents"], metrics["val_documents"])
    if len(train_docs) + len(val_docs) > len(DOCS):
        train_docs[-1] += "\n" + val_docs.pop(0)
    assert train_docs + val_docs == DOCS
    assert 0.05 < val.size / (train.size + val.size) < 0.15
    assert metrics["encode_tokens_per_s"] > 0 and metrics["encode_workers"] >= 1
    assert (layout.plots_dir("tokenize") / "doc_lengths.png").is_file()
    return tok


def test_bpe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = run_body(tmp_path, monkeypatch, {"vocab_size": 300, "workers": 2})
    tok = check_outputs(metrics, "bpe")
    assert tok.get_vocab_size() == metrics["vocab_size"] <= 300


def test_gpt2_from_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not GPT2.is_dir():
        pytest.skip("shared/data/gpt2 not available")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken-cache"))
    metrics = run_body(tmp_path, monkeypatch, {
        "kind": "gpt2", "encoder_json": str(GPT2 / "encoder.json"), "vocab_bpe": str(GPT2 / "vocab.bpe")})
    tok = check_outputs(metrics, "gpt2")
    assert metrics["vocab_size"] == 50257
    assert read_tokens(layout.TRAIN_BIN, 50257)[: 3].tolist() == tok.encode(DOCS[0], add_special_tokens=False).ids[:3]
