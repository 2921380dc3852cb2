"""Tiny model folders for the inference tests: a BPE tokenizer trained in the test, untrained
GPTs saved as the stages save them (plain, instruction, classifier, LoRA) and an HF export."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from model.checkpoint import save_model
from model.gpt import GPTModel
from model.heads import attach_classifier_head
from steps.tasks.instruction import format_prompt
from steps.tokenization.tokenizer import train_bpe
from tests.params import gpt_config

LABELS = ["ham", "spam"]
CLASSIFIER_MAX_LENGTH = 12
TEXTS = [
    "Win a free prize now, call to claim your cash reward",
    "Are we still meeting for lunch tomorrow?",
    "Café au lait, crème brûlée et 日本語 の テキスト",
    "URGENT! Your account has been selected for a bonus",
    "ok see you later",
]


def tokenizer() -> Tokenizer:
    """A byte-level BPE that knows the prompt layouts and some multi-byte characters."""
    prompt = format_prompt({"instruction": "Say hello.", "input": ""}, "alpaca")
    phi3 = format_prompt({"instruction": "Say hello.", "input": ""}, "phi3")
    return train_bpe([prompt, phi3, *TEXTS] * 20, vocab_size=400)


def continuation(tok: Tokenizer, prompt: list[int], ids: list[int]) -> str:
    """The text `ids` add after `prompt`: what a user reads appended to the prompt's text."""
    return tok.decode(prompt + ids)[len(tok.decode(prompt)):]


def lm(vocab_size: int, context_length: int = 96, seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    cfg = gpt_config(vocab_size=vocab_size, context_length=context_length, emb_dim=32, n_heads=2, n_layers=2,
                     drop_rate=0.0)
    return GPTModel(cfg).eval()


def save_folder(folder: Path, model: GPTModel, tok: Tokenizer, head: dict | None = None) -> Path:
    save_model(folder, model, head)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def lm_folder(root: Path, tok: Tokenizer) -> Path:
    return save_folder(root / "pretrain", lm(tok.get_vocab_size()), tok)


def instruct_folder(root: Path, tok: Tokenizer, style: str = "alpaca", context_length: int = 96) -> Path:
    head = {"kind": "lm", "prompt_style": style}
    return save_folder(root / "instruct", lm(tok.get_vocab_size(), context_length, seed=1), tok, head)


def classifier_model(vocab_size: int) -> GPTModel:
    model = lm(vocab_size, seed=2)
    torch.manual_seed(3)
    return attach_classifier_head(model, len(LABELS)).eval()


def classifier_folder(root: Path, tok: Tokenizer, pooling: str = "last_non_pad") -> Path:
    head = {"kind": "classifier", "labels": LABELS, "pooling": pooling, "max_length": CLASSIFIER_MAX_LENGTH}
    return save_folder(root / "classifier", classifier_model(tok.get_vocab_size()), tok, head)
