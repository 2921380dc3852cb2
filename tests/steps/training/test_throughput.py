"""FLOPs per token, default GPU peaks and MFU (steps/training/throughput.py)."""

from __future__ import annotations

import pytest
import torch

from model.gpt import GPTModel
from steps.training import throughput
from tests.params import gpt_config

GPT2_124M = gpt_config(vocab_size=50257, context_length=1024, emb_dim=768, n_heads=12, n_layers=12)


def test_flops_per_token_by_hand_for_a_small_config():
    cfg = gpt_config(vocab_size=100, context_length=32, emb_dim=8, n_heads=2, n_layers=2)
    # Per block: q, k, v 3*64 (no bias) + out_proj 64 + 8 = 264, feed-forward 8*32 + 32 + 32*8 + 8
    # = 552, two norms 2*16 = 32; blocks 2*848 = 1696, final norm 16, head 100*8 = 800.
    assert throughput.non_embedding_params(cfg) == 1696 + 16 + 800
    # 6N + 12 * layers * emb * seq = 6 * 2512 + 12 * 2 * 8 * 32
    assert throughput.flops_per_token(cfg, 32) == 6 * 2512 + 6144


def test_non_embedding_params_match_the_model():
    for cfg in (gpt_config(vocab_size=100, context_length=32, emb_dim=16, n_heads=2, n_layers=3, qkv_bias=True),
                gpt_config(vocab_size=100, context_length=32, emb_dim=16, n_heads=2, n_layers=1,
                          vocab_multiple=64, tie_embeddings=True)):
        model = GPTModel(cfg)
        lookups = model.pos_emb.weight.numel() + (0 if cfg.tie_embeddings else model.tok_emb.weight.numel())
        assert throughput.non_embedding_params(cfg) == sum(p.numel() for p in model.parameters()) - lookups


def test_gpt2_small_is_about_850_mflops_per_token():
    # 12 blocks of 12 C^2 + 10 C = 85.0 M, plus the final norm and the 38.6 M head, at T = 1024.
    n = throughput.non_embedding_params(GPT2_124M)
    assert n == 12 * (12 * 768**2 + 10 * 768) + 768 * 2 + 50257 * 768
    assert throughput.flops_per_token(GPT2_124M, 1024) == pytest.approx(6 * n + 12 * 12 * 768 * 1024)
    assert 0.85e9 < throughput.flops_per_token(GPT2_124M, 1024) < 0.87e9


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
                                        ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA A10", 125e12),
                                        ("Some Future GPU", None)])
def test_default_peak_by_gpu_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert throughput.default_peak_flops(torch.device("cuda")) == peak


def test_no_default_peak_on_cpu():
    assert throughput.default_peak_flops(torch.device("cpu")) is None


def test_mfu():
    # 10,000 tokens/s x 1e9 FLOPs/token = 1e13 FLOP/s, a tenth of a 1e14 peak.
    assert throughput.mfu(10_000, 1e9, 1e14) == pytest.approx(0.1)
