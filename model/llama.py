"""A Llama-family model beside the book's GPT: what changed since GPT-2, one small piece each.

- Positions: rotary embeddings (RoPE) turn each query and key by angles that grow with its
  position, so attention scores depend on relative distance; there is no learned position table.
- Normalisation: RMSNorm (scale only, no mean subtraction and no shift).
- Feed-forward: SwiGLU, down(silu(gate(x)) * up(x)), three matrices of width `ffn_hidden`.
- Attention: grouped-query, `n_kv_heads` key/value heads shared by groups of query heads (the KV
  cache holds only those), computed by PyTorch's SDPA.
- No biases anywhere; the token embedding and the head may share one matrix.

The layout follows Hugging Face's `LlamaForCausalLM` (RoPE rotates the two halves of each head,
`rotate_half`), so model/hf_llama.py maps weights one to one, without permutations. The module
names of the attention are the book's (`W_query`, `W_key`, `W_value`, `out_proj`), so LoRA targets
written for the GPT apply unchanged; the SwiGLU projections are `gate_proj`, `up_proj`, `down_proj`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import GPTConfig
from model.gpt import Cache, CausalLM, _dropout, _init_weights

LORA_TARGETS = ("W_query", "W_key", "W_value", "out_proj", "gate_proj", "up_proj", "down_proj")
"""The Linear layers of a block, by the names LoRA's `target_modules` takes."""


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, over the last dimension; computed in float32 (as
    Hugging Face's LlamaRMSNorm) so bf16 activations do not lose the small mean squares."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., C)
        return self.weight * x.to(dtype)


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles of `positions` ((T,) or (B, T)): (T, D) or (B, 1, T, D),
    ready to broadcast over (B, H, T, D) queries and keys.

    Feature pair (i, i + D/2) turns at frequency theta^(-2i/D): the first pairs fast (fine
    position), the last slowly (coarse). Computed in float32 from the positions each time: a few
    thousand numbers, and exact at any position a cache reaches.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # (..., T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (..., T, D): pair i and i + D/2 share an angle
    if angles.dim() == 3:
        angles = angles.unsqueeze(1)  # (B, 1, T, D): one angle per row and position, every head
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair of (B, H, T, D) `x` by its angle."""
    half = x.size(-1) // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # (-x2, x1): x turned by 90 degrees
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class GroupedQueryAttention(nn.Module):
    """Causal attention with `n_kv_heads` key/value heads, each shared by n_heads / n_kv_heads
    query heads; RoPE on queries and keys, no biases."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.n_kv_heads is not None  # the config checks arch llama sets it
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.emb_dim // cfg.n_heads
        self.drop_rate = cfg.drop_rate
        kv_width = self.n_kv_heads * self.head_dim
        self.W_query = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=False)
        self.W_key = nn.Linear(cfg.emb_dim, kv_width, bias=False)  # fewer heads: a narrower projection
        self.W_value = nn.Linear(cfg.emb_dim, kv_width, bias=False)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=False)

    def _split_heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.head_dim).transpose(1, 2)  # (B, heads, T, D)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: Cache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C)
        q = apply_rope(self._split_heads(self.W_query(x), self.n_heads), cos, sin)  # (B, H, T, D)
        k = apply_rope(self._split_heads(self.W_key(x), self.n_kv_heads), cos, sin)  # (B, Hkv, T, D)
        v = self._split_heads(self.W_value(x), self.n_kv_heads)  # (B, Hkv, T, D)
        mask, causal = None, t > 1
        if kv_cache is not None:
            # Keys are cached already rotated: a key's angle depends on its own position only.
            mask, causal = kv_cache.attention_mask(layer, t, x.device)
            k, v = kv_cache.extend(layer, k, v)  # (B, Hkv, P+T, D): the cache holds the Hkv heads only
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.drop_rate if self.training else 0.0,
            # Query head h reads key/value head h // (H / Hkv), inside the kernel: no copies.
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
        return self.out_proj(y)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the gate decides, per hidden unit, how much of `up` passes."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.ffn_hidden is not None
        self.gate_proj = nn.Linear(cfg.emb_dim, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.emb_dim, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.emb_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, F) inside, (B, T, C) out


class LlamaBlock(nn.Module):
    """Pre-RMSNorm block: x + attn(norm(x)), then x + swiglu(norm(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        assert cfg.norm_eps is not None
        self.norm1 = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.att = GroupedQueryAttention(cfg)
        self.norm2 = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.ff = SwiGLU(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_cache: Cache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + _dropout(self.drop_shortcut, self.att(self.norm1(x), cos, sin, kv_cache, layer))
        x = x + _dropout(self.drop_shortcut, self.ff(self.norm2(x)))
        return x


class LlamaModel(CausalLM):
    """Token ids (B, T) in, one score per output unit per position (B, T, out) out."""

    def __init__(self, cfg: GPTConfig) -> None:
        if cfg.arch != "llama":
            raise ValueError(f"LlamaModel builds arch llama, not {cfg.arch}")
        assert cfg.norm_eps is not None
        super().__init__(cfg)
        rows = cfg.padded_vocab_size
        self.tok_emb = nn.Embedding(rows, cfg.emb_dim)  # no position table: RoPE places the tokens
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[LlamaBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.emb_dim, cfg.norm_eps)
        self.out_head = nn.Linear(cfg.emb_dim, rows, bias=False)
        self.apply(_init_weights)  # N(0, 0.02), Llama's initializer_range too; RMSNorm scales stay 1
        self.tie_head()

    def forward(self, in_idx: torch.Tensor, kv_cache: Cache | None = None) -> torch.Tensor:
        """With `kv_cache`, `in_idx` holds only the tokens after those already cached."""
        pos = self.positions(in_idx, kv_cache)  # (T,), or (B, T) when rows have their own lengths
        assert self.cfg.rope_theta is not None
        cos, sin = rope_angles(pos, self.cfg.emb_dim // self.cfg.n_heads, self.cfg.rope_theta)
        x = _dropout(self.drop_emb, self.tok_emb(in_idx))  # (B, T, C)
        x = self.run_blocks(x, kv_cache, cos, sin)
        return self.head_logits(x)
