"""The pieces of bench/book_ch05.py's re-implementation of the book's chapter 5: the model's size,
its causal mask, its LayerNorm and GELU, the data loaders on the-verdict.txt and the loop's
evaluation and sample cadence. Fast: the 124M model is built on the meta device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.book_ch05 import GELU as BookGELU
from bench.book_ch05 import (
    GPT2_FILES,
    VERDICT,
    BookConfig,
    BookGPT,
    LayerNorm,
    WindowDataset,
    book_loaders,
    in_band,
    train_simple,
)

# Chapter 4 prints "Total number of parameters: 163,009,536" for GPT_CONFIG_124M (untied head).
BOOK_124M_PARAMS = 163_009_536
TINY = BookConfig(vocab_size=40, context_length=16, emb_dim=16, n_heads=2, n_layers=2, drop_rate=0.0)


def test_gpt_config_124m_has_the_books_parameter_count() -> None:
    with torch.device("meta"):
        model = BookGPT(BookConfig())
    assert sum(p.numel() for p in model.parameters()) == BOOK_124M_PARAMS
    assert model.out_head.weight is not model.tok_emb.weight


def test_a_token_sees_no_later_token() -> None:
    torch.manual_seed(0)
    model = BookGPT(TINY).eval()
    ids = torch.randint(0, TINY.vocab_size, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)  # (1, 10, V)
    assert torch.allclose(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_layer_norm_and_gelu_match_torchs() -> None:
    x = torch.randn(3, 5, 16)
    assert torch.allclose(LayerNorm(16)(x), nn.LayerNorm(16)(x), atol=1e-5)
    assert torch.allclose(BookGELU()(x), nn.GELU(approximate="tanh")(x), atol=1e-6)


def test_windows_are_disjoint_with_targets_shifted_by_one() -> None:
    data = WindowDataset(list(range(20)), max_length=4, stride=4)
    assert len(data) == 4  # starts 0, 4, 8, 12: a window needs one more token for its target
    inputs, targets = data[1]
    assert inputs.tolist() == [4, 5, 6, 7] and targets.tolist() == [5, 6, 7, 8]


def test_the_verdict_gives_the_books_nine_training_batches() -> None:
    if not VERDICT.is_file() or not (GPT2_FILES / "vocab.bpe").is_file():
        pytest.skip(f"{VERDICT.parent.parent} is absent (the book's data lives beside the checkout)")
    from steps.tokenization.gpt2_bpe import gpt2_encoding

    enc = gpt2_encoding(GPT2_FILES / "encoder.json", GPT2_FILES / "vocab.bpe")
    train, val = book_loaders(VERDICT.read_text(encoding="utf-8"), enc.encode, 0.9, batch_size=2, max_length=256)
    shapes = [tuple(x.shape) for x, _ in train]
    assert shapes == [(2, 256)] * 9  # the book: 9 training batches, 4,608 tokens
    assert [tuple(x.shape) for x, _ in val] == [(2, 256)]  # and one validation batch of 512 tokens


class CharTokenizer:
    """Ids are characters' codes modulo the tiny vocabulary: enough to prompt and decode."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) % TINY.vocab_size for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_the_loop_evaluates_every_eval_freq_steps_from_the_first_and_samples_each_epoch() -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, TINY.vocab_size, (200,)).tolist()
    data = WindowDataset(ids, max_length=16, stride=16)  # 12 windows
    train = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, drop_last=True)  # 3 batches
    val = torch.utils.data.DataLoader(data, batch_size=4)
    model = BookGPT(TINY)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    run = train_simple(model, train, val, optimizer, torch.device("cpu"), epochs=3, eval_freq=5, prompt="ab",
                       tokenizer=CharTokenizer())
    assert run.steps == 9 and run.tokens == 9 * 4 * 16
    assert [e["step"] for e in run.evals] == [1, 6]  # the book's global steps 0 and 5
    assert len(run.samples) == 3 and all(len(s) == 2 + 50 for s in run.samples)
    assert run.evals[-1]["train_loss"] < run.evals[0]["train_loss"]

    other = BookGPT(TINY)
    stopped = train_simple(other, train, val, torch.optim.AdamW(other.parameters()), torch.device("cpu"), epochs=3, eval_freq=5, prompt="ab", tokenizer=CharTokenizer(), max_steps=4)
    assert stopped.steps == 4 and len(stopped.samples) == 2  # epoch 1's end, then the stop inside epoch 2


def test_the_book_side_reads_its_workload_from_the_profiles_params(tmp_path) -> None:
    import shutil

    from bench.book_ch05 import ROOT, differences, workload
    from steps.config import load_params
    from steps.profiles import apply_profile

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_profile("book", tmp_path / "params.yaml")
    params = load_params(tmp_path / "params.yaml")
    w = workload(params)
    m = params.model
    assert (w.model.emb_dim, w.model.n_heads, w.model.n_layers) == (m.emb_dim, m.n_heads, m.n_layers) == (768, 12, 12)
    assert (w.model.drop_rate, w.model.qkv_bias) == (m.drop_rate, m.qkv_bias)
    assert w.model.context_length == w.seq_len == params.pretrain_seq_len  # chapter 5's shortened context
    cfg = params.pretrain
    assert (w.lr, w.weight_decay, w.batch_size, w.eval_interval) == (cfg.lr, cfg.weight_decay, cfg.batch_size,
                                                                     cfg.eval_interval)
    assert w.val_fraction == params.tokenize.val_fraction


    def with_precision(precision: str):
        return params.model_copy(update={"pretrain": cfg.model_copy(update={"precision": precision})})

    assert not any(line.startswith("pretrain.precision") for line in differences(with_precision("fp32")))
    assert "pretrain.precision: 'bf16' (the book: 'fp32')" in differences(with_precision("bf16"))


def test_the_band_is_around_the_books_printed_final_losses() -> None:
    assert in_band({"train_loss": 0.391, "val_loss": 6.452}) == {"train_loss": True, "val_loss": True}
    assert in_band({"train_loss": 0.95, "val_loss": 6.11}) == {"train_loss": True, "val_loss": True}
    assert in_band({"train_loss": 1.0, "val_loss": 6.0}) == {"train_loss": False, "val_loss": False}
    assert in_band({"train_loss": 5.8, "val_loss": 6.59}) == {"train_loss": False, "val_loss": True}  # the old gap
