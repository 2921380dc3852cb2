"""bench/copying.py counts each name's first mention apart from its repeats, on fresh built-in stories."""

from __future__ import annotations

import json

import torch

from bench.copying import main, mention_losses, stories
from model.checkpoint import save_model
from model.gpt import GPTModel
from steps import layout
from steps.tokenization.tokenizer import train_bpe
from tests.params import gpt_config


def test_first_and_repeated_mentions_of_fresh_stories(tmp_path, capsys) -> None:
    texts = stories(seed=123, n=20)
    assert texts == stories(seed=123, n=20) and texts != stories(seed=124, n=20)
    tok = train_bpe(stories(seed=123, n=300), vocab_size=1200)  # the names become whole tokens
    torch.manual_seed(0)
    save_model(tmp_path, GPTModel(gpt_config(vocab_size=tok.get_vocab_size(), context_length=128, emb_dim=16,
                                             n_heads=2, n_layers=1, drop_rate=0.0)))
    tok.save(str(tmp_path / layout.MODEL_TOKENIZER))
    first, repeated, count = mention_losses(tmp_path, texts)
    # A story names its protagonist several times: an untrained model pays about the same for both.
    assert count >= 40 and abs(first - repeated) < 1.0 and first > 4.0

    assert main([str(tmp_path), "--stories", "20"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["copy_gain_nats"] == result["models"][str(tmp_path)]["copy_gain_nats"]
    assert result["models"][str(tmp_path)]["repeated_mentions"] == count
