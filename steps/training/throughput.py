"""Training throughput in model FLOPs: FLOPs per token, default peak FLOP/s per GPU, and MFU.

MFU (model FLOPs utilisation, PaLM appendix B) = achieved model FLOP/s / the hardware's peak.
"Model" FLOPs count what the architecture needs, not what the kernels do: recomputation
(activation checkpointing) and the masked half of causal attention are not credited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from model.config import GPTConfig

if TYPE_CHECKING:  # torch is imported where a device is queried: planning a run needs no torch
    import torch

# Dense bf16/fp16 tensor-core peaks (no sparsity), from the vendors' data sheets. MFU is quoted
# against these whatever the run's precision (an fp32/TF32 run then reads low, as it should).
# Matched as substrings of torch.cuda.get_device_name(), most specific first.
PEAK_FLOPS: dict[str, float] = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM
    "H200": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def non_embedding_params(cfg: GPTConfig) -> int:
    """Parameters that take part in matmuls per token: every block, the final norm and the LM head
    (at its padded width, which is what the matmul computes). The token and position embeddings
    are lookups, not matmuls, so they are left out; a tied head still counts, since the head's
    matmul runs either way."""
    c = cfg.emb_dim
    if cfg.arch == "llama":
        assert cfg.n_kv_heads is not None and cfg.ffn_hidden is not None
        kv = cfg.n_kv_heads * (c // cfg.n_heads)  # grouped-query: narrower key/value projections
        attention = 2 * c * c + 2 * c * kv  # W_query, out_proj, W_key, W_value; no biases
        feed_forward = 3 * c * cfg.ffn_hidden  # SwiGLU: gate_proj, up_proj, down_proj
        norms = 2 * c  # two RMSNorms (scale only)
        final_norm = c
    else:
        attention = 4 * c * c + c + (3 * c if cfg.qkv_bias else 0)  # W_query/key/value, out_proj (+bias)
        feed_forward = 2 * 4 * c * c + 4 * c + c  # two Linear layers with biases
        norms = 2 * 2 * c  # two LayerNorms (scale, shift)
        final_norm = 2 * c
    block = attention + feed_forward + norms
    return cfg.n_layers * block + final_norm + cfg.padded_vocab_size * c


def flops_per_token(cfg: GPTConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 N (forward 2 N + backward 4 N, N = `non_embedding_params`) plus
    attention's scores and weighted sum, 12 * n_layers * emb_dim * seq_len (2 matmuls of 2 T C
    FLOPs each per token forward, times 3 for forward + backward; the causal mask is ignored).
    Grouped-query attention shares keys and values, not scores: every query head still computes
    its own, so that term is the same for llama; RoPE and RMSNorm are elementwise, not counted."""
    return 6.0 * non_embedding_params(cfg) + 12.0 * cfg.n_layers * cfg.emb_dim * seq_len


def default_peak_flops(device: torch.device) -> float | None:
    """The bf16 dense peak FLOP/s of this CUDA GPU, if it is in PEAK_FLOPS; None on CPU/MPS or
    for an unknown GPU (set pretrain.peak_flops then)."""
    if device.type != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


def mfu(tokens_per_s: float, flops_token: float, peak_flops: float) -> float:
    """Fraction (0..1) of the peak that the model's FLOPs reached."""
    return tokens_per_s * flops_token / peak_flops
