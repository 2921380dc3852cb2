"""The book's GPT: token + position embeddings, pre-LayerNorm transformer blocks, a linear head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import GPTConfig


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so generation feeds one new
    token per step instead of re-reading the whole sequence.

    Each layer's keys and values live in one (B, H, max_len, D) buffer, allocated at the layer's
    first write with the dtype and device of what is written, then filled in place: a token costs
    a copy of its own keys and values, not a re-allocation of everything cached (torch.cat).
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.max_len = max_len
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers

    @classmethod
    def for_model(cls, model: GPTModel) -> KVCache:
        return cls(model.cfg.n_layers, model.cfg.context_length)

    @property
    def length(self) -> int:
        """Tokens cached (read from the last layer, which is updated last in a forward pass)."""
        return self.lengths[-1]

    def layer_length(self, layer: int) -> int:
        return self.lengths[layer]

    def reset(self) -> None:
        """Forget the tokens; the buffers stay allocated for the next sequence."""
        self.lengths = [0] * len(self.lengths)

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's (B, H, T, D) keys/values after the cached ones; return views of all
        of them so far, (B, H, P+T, D)."""
        start = self.lengths[layer]
        end = start + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache holds at most {self.max_len} tokens; {end} were given")
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or buf_v is None or not _fits(buf_k, k):
            if start:
                raise ValueError("the cached tokens had another batch size, width, dtype or device: reset() first")
            b, h, _, d = k.shape
            buf_k = k.new_empty(b, h, self.max_len, d)  # (B, H, max_len, D)
            buf_v = v.new_empty(b, h, self.max_len, d)
            self.keys[layer], self.values[layer] = buf_k, buf_v
        # narrow() rather than buf[:, :, start:end]: the same view through one call instead of
        # Python's indexing machinery, which a decode step would go through 24 times.
        buf_k.narrow(2, start, end - start).copy_(k)
        buf_v.narrow(2, start, end - start).copy_(v)
        self.lengths[layer] = end
        return buf_k.narrow(2, 0, end), buf_v.narrow(2, 0, end)


def _fits(buffer: torch.Tensor, new: torch.Tensor) -> bool:
    return (buffer.shape[:2] == new.shape[:2] and buffer.size(3) == new.size(3)
            and buffer.dtype == new.dtype and buffer.device == new.device)


class MultiHeadAttention(nn.Module):
    """Causal multi-head self-attention computed by PyTorch's fused SDPA kernel."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.emb_dim // cfg.n_heads
        self.drop_rate = cfg.drop_rate
        # Separate projections (not one fused qkv) keep the book's names, which LoRA targets by name.
        self.W_query = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(cfg.emb_dim, cfg.emb_dim, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(cfg.emb_dim, cfg.emb_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C)
        past = 0 if kv_cache is None else kv_cache.layer_length(layer)
        q = self._split_heads(self.W_query(x))  # (B, H, T, D)
        k = self._split_heads(self.W_key(x))
        v = self._split_heads(self.W_value(x))
        if kv_cache is not None:
            k, v = kv_cache.extend(layer, k, v)  # (B, H, P+T, D)
        mask = None
        if past and t > 1:
            # New queries sit at positions past..past+T-1: each sees every cached key and the new
            # keys up to itself.
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
        # is_causal builds the mask inside the kernel: no (T, T) buffer, and flash attention on GPUs.
        # One new token after a cache (past > 0, T == 1) may see everything: no mask at all.
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=past == 0 and t > 1,
            dropout_p=self.drop_rate if self.training else 0.0,
        )  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(b, t, c)  # (B, T, C); copies only if T > 1
        return self.out_proj(y)


class FeedForward(nn.Module):
    """Position-wise MLP: expand 4x, GELU (tanh approximation, as GPT-2), project back."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(cfg.emb_dim, 4 * cfg.emb_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * cfg.emb_dim, cfg.emb_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(norm(x)), then x + ff(norm(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.emb_dim)
        self.att = MultiHeadAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.emb_dim)
        self.ff = FeedForward(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + _dropout(self.drop_shortcut, self.att(self.norm1(x), kv_cache, layer))
        x = x + _dropout(self.drop_shortcut, self.ff(self.norm2(x)))
        return x


def _dropout(drop: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """`drop(x)`, skipping the module call where dropout is the identity (eval, as in all of
    generation, or p = 0): a decode step would make 13 such calls for nothing."""
    return drop(x) if drop.training and drop.p > 0 else x


class GPTModel(nn.Module):
    """Token ids (B, T) in, one score per output unit per position (B, T, out) out."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        rows = cfg.padded_vocab_size
        self.tok_emb = nn.Embedding(rows, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = nn.LayerNorm(cfg.emb_dim)
        # The head is a plain attribute so task heads can replace it (see model/heads.py).
        self.out_head = nn.Linear(cfg.emb_dim, rows, bias=False)
        self.apply(_init_weights)
        if cfg.tie_embeddings:
            # One Parameter under two names: parameters() lists it once, state_dict() under both.
            self.out_head.weight = self.tok_emb.weight
        self.activation_checkpointing = False
        """Recompute each block's activations in the backward pass instead of keeping them: less
        memory for about a third more compute. A training switch, not architecture: not saved."""

    def forward(self, in_idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        """With `kv_cache`, `in_idx` holds only the tokens after those already cached."""
        _, t = in_idx.shape  # (B, T)
        past = kv_cache.length if kv_cache is not None else 0
        if past + t > self.cfg.context_length:
            raise ValueError(
                f"sequence of {past + t} tokens is longer than context_length={self.cfg.context_length}"
            )
        pos = torch.arange(past, past + t, device=in_idx.device)
        x = self.tok_emb(in_idx) + self.pos_emb(pos)  # (B, T, C)
        x = _dropout(self.drop_emb, x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for layer, block in enumerate(self.trf_blocks):
            if recompute:
                # Non-reentrant checkpointing restores the RNG state, so dropout masks are redrawn
                # identically in the recomputation and the gradients match the plain path.
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, kv_cache, layer)
        x = self.final_norm(x)
        logits = self.out_head(x)  # (B, T, out); out = padded vocab for the LM head
        if logits.size(-1) == self.cfg.padded_vocab_size != self.cfg.vocab_size:
            # Cut the padding rows off rather than masking them with -inf: every caller (loss,
            # sampling, evaluation, export) then sees exactly vocab_size scores, and no padded id
            # can be sampled or take probability mass. The matmul itself ran at the padded width.
            logits = logits[..., : self.cfg.vocab_size]  # (B, T, V)
        return logits


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation: N(0, 0.02) weights, zero biases. PyTorch's default (Kaiming-uniform)
    # makes the initial loss far above ln(vocab) and slows the first hundred steps.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Distinct parameters: a tied embedding/head matrix counts once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
