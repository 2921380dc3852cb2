"""The book's GPT: token + position embeddings, pre-LayerNorm transformer blocks, a linear head;
the KV caches and the `CausalLM` base that model/llama.py's LlamaModel shares."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import GPTConfig


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so generation feeds one new
    token per step instead of re-reading the whole sequence.

    Each layer's keys and values live in one (B, H, max_len, D) buffer (H: the key/value heads,
    fewer than the query heads under Llama's grouped-query attention), allocated at the layer's
    first write with the dtype and device of what is written, then filled in place: a token costs
    a copy of its own keys and values, not a re-allocation of everything cached (torch.cat).
    """

    def __init__(self, n_layers: int, max_len: int) -> None:
        self.max_len = max_len
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers

    @classmethod
    def for_model(cls, model: CausalLM) -> KVCache:
        return cls(model.cfg.n_layers, model.cfg.context_length)

    @property
    def length(self) -> int:
        """Tokens cached (read from the last layer, which is updated last in a forward pass)."""
        return self.lengths[-1]

    def layer_length(self, layer: int) -> int:
        return self.lengths[layer]

    def positions(self, t: int, device: torch.device) -> torch.Tensor:
        """Positions of `t` new tokens, (T,): right after the cached ones, the same for every row."""
        past = self.length
        if past + t > self.max_len:
            raise ValueError(f"sequence of {past + t} tokens is longer than context_length={self.max_len}")
        return torch.arange(past, past + t, device=device)

    def attention_mask(self, layer: int, t: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """(mask, is_causal) for SDPA when `t` new queries meet this layer's cached keys and their own."""
        past = self.lengths[layer]
        if past == 0:
            return None, t > 1  # a plain causal prefill: the kernel builds the mask itself
        if t == 1:
            return None, False  # one new token after the cache may see everything
        # New queries sit at positions past..past+T-1: each sees every cached key and the new keys
        # up to itself.
        return torch.ones(t, past + t, dtype=torch.bool, device=device).tril(diagonal=past), False

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


class BatchKVCache:
    """A KV cache whose rows are independent sequences of different lengths: what batched serving
    needs, where prompts differ in length and requests join and leave between decode steps.

    Before each forward pass the caller says which rows it feeds and how many real tokens each
    row gets (`feed`); the (B, T) input is right-padded to the longest. Each row then has its own
    positions (its cached length onwards) and its own causal mask over its own keys, so a row's
    tokens are exactly those it would get alone. Padding is never written to the cache; stale
    keys past a row's length are hidden by the mask.

    Rows are a contiguous range of a (rows, H, max_len, D) buffer per layer, read as views: the
    caller keeps live sequences packed at the front (`move` fills a hole left by one that ended).
    """

    def __init__(self, n_layers: int, max_len: int, rows: int, device: torch.device | str = "cpu") -> None:
        self.n_layers = n_layers
        self.max_len = max_len
        self.rows = rows
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)  # (rows,) tokens cached per row
        # Set by feed() for the next forward pass.
        self._first, self._counts, self._width = 0, self.lengths[:0], 0
        self._positions = self.lengths[:0].unsqueeze(1)  # (B, T)
        self._write: tuple[torch.Tensor, ...] = ()
        self._mask: torch.Tensor | None = None

    @classmethod
    def for_model(cls, model: CausalLM, rows: int) -> BatchKVCache:
        return cls(model.cfg.n_layers, model.cfg.context_length, rows, next(model.parameters()).device)

    def reset(self, first: int = 0, count: int | None = None) -> None:
        """Forget the tokens of rows first..first+count-1 (default: all); the buffers stay allocated."""
        self.lengths[first : None if count is None else first + count] = 0

    def feed(self, first: int, counts: torch.Tensor) -> None:
        """Declare the next forward pass: rows first..first+B-1 get counts[b] real tokens each, (B,).

        What every layer of that pass shares is worked out here, once: where each real token's
        keys go, each row's positions, the attention mask and how far to read.
        """
        b = counts.size(0)
        if first < 0 or first + b > self.rows:
            raise ValueError(f"rows {first}..{first + b - 1} are outside this cache's {self.rows} rows")
        starts = self.lengths[first : first + b].clone()  # (B,)
        ends = starts + counts
        width = int(ends.max()) if b else 0
        if width > self.max_len:
            raise ValueError(f"sequence of {width} tokens is longer than context_length={self.max_len}")
        t = int(counts.max()) if b else 0
        device = counts.device
        self._first, self._counts, self._width = first, counts, width
        self._positions = starts.unsqueeze(1) + torch.arange(t, device=device)  # (B, T)
        real = torch.arange(t, device=device) < counts.unsqueeze(1)  # (B, T): not padding
        row, step = real.nonzero(as_tuple=True)  # (N,) each: one entry per real token
        self._write = (row, step, first + row, starts[row] + step)
        if t == 1 and bool((starts == starts[0]).all()):
            # One new token per row, rows of one length: every query sees every key read.
            self._mask = None
        else:
            # Query j of row b sees the keys at positions up to its own, start_b + j.
            keys = torch.arange(width, device=device)  # (W,)
            self._mask = (keys <= self._positions.unsqueeze(-1)).unsqueeze(1)  # (B, 1, T, W)

    def positions(self, t: int, device: torch.device) -> torch.Tensor:
        """Each row's positions for its new tokens, (B, T), from its own cached length on.
        Padding past a row's real tokens gets a valid but meaningless position (the last one)."""
        return self._positions.clamp(max=self.max_len - 1)

    def attention_mask(self, layer: int, t: int, device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """The (B, 1, T, W) mask of this pass (W: the longest row after it), the same in every
        layer; None where every query may see every key read."""
        return self._mask, False

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the real ones of this pass's (B, H, T, D) keys/values after each row's cached ones;
        return views of the rows' keys/values up to the longest, (B, H, W, D)."""
        b, h, _, d = k.shape
        if self.keys[layer] is None:
            # Zeros, not new_empty: masked keys get weight 0, but 0 * NaN from uninitialised memory
            # would still be NaN. Later the columns past a row's length hold finite stale values.
            self.keys[layer] = k.new_zeros(self.rows, h, self.max_len, d)  # (rows, H, max_len, D)
            self.values[layer] = v.new_zeros(self.rows, h, self.max_len, d)
        buf_k, buf_v = self.keys[layer], self.values[layer]
        row, step, buf_row, col = self._write
        # Two advanced indices around a slice put their dimension first: both sides are (N, H, D).
        buf_k[buf_row, :, col] = k[row, :, step]
        buf_v[buf_row, :, col] = v[row, :, step]
        if layer == self.n_layers - 1:
            # The last layer writes last: only now do the rows' lengths move on (feed read them).
            self.lengths[self._first : self._first + b] += self._counts
        rows = slice(self._first, self._first + b)
        return buf_k[rows, :, : self._width], buf_v[rows, :, : self._width]

    def move(self, src: int, dst: int) -> None:
        """Copy row `src`'s keys, values and length into row `dst` (to keep live rows packed)."""
        n = int(self.lengths[src])
        for buf in (*self.keys, *self.values):
            if buf is not None:
                buf[dst, :, :n] = buf[src, :, :n]
        self.lengths[dst] = n


def _fits(buffer: torch.Tensor, new: torch.Tensor) -> bool:
    return (buffer.shape[:2] == new.shape[:2] and buffer.size(3) == new.size(3)
            and buffer.dtype == new.dtype and buffer.device == new.device)


Cache = KVCache | BatchKVCache
"""Either cache: the model asks it for the new tokens' positions and attention mask, and hands it
each layer's keys and values."""


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

    def forward(self, x: torch.Tensor, kv_cache: Cache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C)
        q = self._split_heads(self.W_query(x))  # (B, H, T, D)
        k = self._split_heads(self.W_key(x))
        v = self._split_heads(self.W_value(x))
        # is_causal builds the mask inside the kernel: no (T, T) buffer, and flash attention on GPUs.
        mask, causal = None, t > 1
        if kv_cache is not None:
            # The cache knows what the new queries may see (before this layer's keys are added).
            mask, causal = kv_cache.attention_mask(layer, t, x.device)
            k, v = kv_cache.extend(layer, k, v)  # (B, H, P+T, D)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
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

    def forward(self, x: torch.Tensor, kv_cache: Cache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + _dropout(self.drop_shortcut, self.att(self.norm1(x), kv_cache, layer))
        x = x + _dropout(self.drop_shortcut, self.ff(self.norm2(x)))
        return x


def _dropout(drop: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """`drop(x)`, skipping the module call where dropout is the identity (eval, as in all of
    generation, or p = 0): a decode step would make 13 such calls for nothing."""
    return drop(x) if drop.training and drop.p > 0 else x


class CausalLM(nn.Module):
    """What every network here shares, whatever its family: token ids (B, T) in, one score per
    output unit per position (B, T, out) out, an optional KV cache, and the same attribute names
    (`cfg`, `tok_emb`, `trf_blocks`, `final_norm`, `out_head`) that task heads (model/heads.py),
    the choice of what trains, generation and checkpoints rely on. GPTModel (here) and LlamaModel
    (model/llama.py) differ only in how positions enter and in their blocks."""

    cfg: GPTConfig
    tok_emb: nn.Embedding
    trf_blocks: nn.Sequential
    final_norm: nn.Module
    out_head: nn.Module

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.activation_checkpointing = False
        """Recompute each block's activations in the backward pass instead of keeping them: less
        memory for about a third more compute. A training switch, not architecture: not saved."""

    def positions(self, in_idx: torch.Tensor, kv_cache: Cache | None) -> torch.Tensor:
        """Positions of the tokens of `in_idx` (B, T): (T,), or (B, T) when the cache's rows have
        their own lengths. With `kv_cache`, `in_idx` holds only the tokens after the cached ones."""
        t = in_idx.size(1)
        if kv_cache is None:
            if t > self.cfg.context_length:
                raise ValueError(f"sequence of {t} tokens is longer than context_length={self.cfg.context_length}")
            return torch.arange(t, device=in_idx.device)  # (T,)
        return kv_cache.positions(t, in_idx.device)

    def run_blocks(self, x: torch.Tensor, kv_cache: Cache | None, *extra: torch.Tensor) -> torch.Tensor:
        """Every block in turn on (B, T, C); `extra` is what each block reads besides x (Llama's
        rotary angles), passed as block(x, *extra, kv_cache, layer)."""
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled() and kv_cache is None
        for layer, block in enumerate(self.trf_blocks):
            if recompute:
                # Non-reentrant checkpointing restores the RNG state, so dropout masks are redrawn
                # identically in the recomputation and the gradients match the plain path.
                x = checkpoint(block, x, *extra, use_reentrant=False)
            else:
                x = block(x, *extra, kv_cache, layer)
        return x

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and head on the last block's (B, T, C): (B, T, out)."""
        x = self.final_norm(x)
        logits = self.out_head(x)  # (B, T, out); out = padded vocab for the LM head
        if logits.size(-1) == self.cfg.padded_vocab_size != self.cfg.vocab_size:
            # Cut the padding rows off rather than masking them with -inf: every caller (loss,
            # sampling, evaluation, export) then sees exactly vocab_size scores, and no padded id
            # can be sampled or take probability mass. The matmul itself ran at the padded width.
            logits = logits[..., : self.cfg.vocab_size]  # (B, T, V)
        return logits

    def tie_head(self) -> None:
        """Make the head share the token embedding's matrix when the config asks for it."""
        if self.cfg.tie_embeddings:
            # One Parameter under two names: parameters() lists it once, state_dict() under both.
            self.out_head.weight = self.tok_emb.weight


class GPTModel(CausalLM):
    """The book's GPT: token + learned position embeddings, pre-LayerNorm blocks, a linear head."""

    def __init__(self, cfg: GPTConfig) -> None:
        if cfg.arch != "gpt2":
            raise ValueError(f"GPTModel builds arch gpt2, not {cfg.arch}: build models with "
                             "model.checkpoint.new_model(cfg), which picks the class")
        super().__init__(cfg)
        rows = cfg.padded_vocab_size
        self.tok_emb = nn.Embedding(rows, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = nn.LayerNorm(cfg.emb_dim)
        # The head is a plain attribute so task heads can replace it (see model/heads.py).
        self.out_head = nn.Linear(cfg.emb_dim, rows, bias=False)
        self.apply(_init_weights)
        self.tie_head()

    def forward(self, in_idx: torch.Tensor, kv_cache: Cache | None = None) -> torch.Tensor:
        """With `kv_cache`, `in_idx` holds only the tokens after those already cached."""
        pos = self.positions(in_idx, kv_cache)  # (T,), or (B, T) when rows have their own lengths
        x = self.tok_emb(in_idx) + self.pos_emb(pos)  # (B, T, C)
        x = _dropout(self.drop_emb, x)
        x = self.run_blocks(x, kv_cache)
        return self.head_logits(x)


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation: N(0, 0.02) weights, zero biases. PyTorch's default (Kaiming-uniform)
    # makes the initial loss far above ln(vocab) and slows the first hundred steps.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def reset_to_pytorch_defaults(model: nn.Module) -> None:
    """Re-draw every layer's weights with PyTorch's own initialisation (nn.Embedding N(0, 1),
    nn.Linear Kaiming-uniform with uniform biases, norms 1 and 0): the book's GPTModel keeps these,
    as it defines no initialisation. Its embeddings then outweigh the blocks' first outputs by far in
    the residual stream. A tied head and embedding share the matrix the head's Linear draws last."""
    for module in model.modules():
        if module is not model and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Distinct parameters: a tied embedding/head matrix counts once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
