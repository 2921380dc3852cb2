"""Autoregressive sampling: greedy, temperature, top-k and top-p (nucleus), stopping at end-of-text."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from model.gpt import BatchKVCache, CausalLM, KVCache


@torch.inference_mode()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Append up to `max_new_tokens` tokens to `idx` (B, T); temperature 0 means greedy.

    The tokens are those `iter_tokens` yields (see there for sampling, end-of-text and the cache),
    appended as columns: (B, T + steps).
    """
    steps = iter_tokens(model, idx, max_new_tokens, context_length, temperature=temperature, top_k=top_k,
                        top_p=top_p, eos_id=eos_id, generator=generator, use_cache=use_cache)
    new = [next_id.unsqueeze(1) for next_id in steps]  # each (B, 1)
    return torch.cat([idx, *new], dim=1)


def iter_tokens(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row of `idx` (B, T), one (B,) tensor per step, as it is made:
    what a caller streams to a terminal or a client. Temperature 0 means greedy.

    Sampling divides the logits by `temperature`, keeps the `top_k` most likely tokens, then the
    fewest of those whose probabilities add up to `top_p` (None or 1.0: all), and draws from what
    is left, renormalised.

    Generation for a batch stops early once every row has produced `eos_id`; rows that finished
    earlier yield `eos_id` from then on. With `use_cache` (for a CausalLM: GPT or Llama), the prompt is read once
    (prefill) and then one token per step; the tokens are the same as without it. The model is in
    eval mode while the iterator runs and gets its training flag back when it ends or is closed.
    """
    check_sampling(top_p)  # here, not at the first step: a bad value fails where it is passed
    return _token_steps(model, idx, max_new_tokens, context_length, temperature, top_k, top_p, eos_id,
                        generator, use_cache)


def _token_steps(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_length: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_id: int | None,
    generator: torch.Generator | None,
    use_cache: bool,
) -> Iterator[torch.Tensor]:
    """The sampling loop behind iter_tokens."""
    was_training = model.training
    model.eval()
    cache = KVCache.for_model(model) if use_cache and isinstance(model, CausalLM) else None
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    try:
        for _ in range(max_new_tokens):
            # inference_mode per step, not around the generator: a decorator on a generator
            # function would only cover its creation, not the steps a caller pulls.
            with torch.inference_mode():
                logits = _next_logits(model, idx, context_length, cache)  # (B, V)
                next_id = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
                if eos_id is not None:
                    next_id = next_id.masked_fill(finished, eos_id)
                    finished |= next_id == eos_id
                idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
            yield next_id
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)


def check_sampling(top_p: float | None) -> None:
    """Refuse a top_p outside (0, 1] before any work is done."""
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One token id per row of (B, V) `logits`, (B,): argmax at temperature 0, else a draw from
    the tempered, top-k then top-p filtered distribution."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k > 0:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)  # (B,)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) logits with all but the k largest of each row set to -inf."""
    kth = torch.topk(logits, min(k, logits.size(-1))).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """(B, V) logits keeping, per row, the smallest set of most likely tokens whose probabilities
    add up to at least `p` (always at least the most likely one); the rest set to -inf."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    # A token is dropped when the tokens ranked before it already reach p; the first never is.
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def _next_logits(model: nn.Module, idx: torch.Tensor, context_length: int, cache: KVCache | None) -> torch.Tensor:
    """Logits for the token after `idx`, reading at most the last `context_length` tokens."""
    if cache is None:
        return model(idx[:, -context_length:])[:, -1, :]
    if cache.length == 0 or cache.length >= context_length:
        # Prefill, or the window is full and slides: positions shift, so the cache is rebuilt from
        # the last context_length tokens (exactly what the uncached path reads).
        cache.reset()
        return model(idx[:, -context_length:], kv_cache=cache)[:, -1, :]
    return model(idx[:, -1:], kv_cache=cache)[:, -1, :]  # only the newest token


# --- batched generation -------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """How one sequence picks its tokens (see `sample_next`); `seed` makes its draws reproducible."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Token:
    """One token made for sequence `seq`; `finish` is set on its last one: "stop" (it is the
    end-of-text token) or "length" (max_new_tokens reached, or the context is full)."""

    seq: int
    token: int
    finish: str | None = None


@dataclass
class _Sequence:
    id: int
    tokens: list[int]  # prompt, then the tokens made so far
    max_new_tokens: int
    sampling: Sampling
    eos_id: int | None
    generator: torch.Generator | None
    made: int = 0
    finish: str | None = None


class BatchGenerator:
    """Continuous batching: many sequences share each forward pass, joining between decode steps
    and leaving when they finish, each with its own prompt length, sampling and stopping.

    Each `step()` makes one token for every live sequence: one decode pass over all of them (one
    new token per row, in a BatchKVCache where each row has its own positions and mask), then one
    prefill pass over the sequences that join (prompts right-padded to the longest), which gives
    their first token. Greedy tokens are the ones `generate` makes for each prompt alone.

    Without `use_cache`, every pass re-reads each sequence from its first token (the same tokens,
    more compute). Not thread-safe: one thread drives it (the server's generation worker).
    """

    def __init__(self, model: CausalLM, max_batch: int, use_cache: bool = True) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.model = model.eval()
        self.context_length = model.cfg.context_length
        self.max_batch = max_batch
        self.use_cache = use_cache
        self.cache = BatchKVCache.for_model(model, max_batch)
        self.device = next(model.parameters()).device
        self.waiting: deque[_Sequence] = deque()
        self.live: list[_Sequence] = []  # live[i] is in row i of the cache: rows stay packed
        self.decode_batch_sizes: Counter[int] = Counter()
        """How many decode passes ran with how many sequences: shows requests sharing passes."""
        self._next_id = 0

    @property
    def has_work(self) -> bool:
        return bool(self.live or self.waiting)

    def add(self, prompt: list[int], max_new_tokens: int, sampling: Sampling = Sampling(),
            eos_id: int | None = None) -> int:
        """Queue a sequence; it joins at the next step. Returns its id (the `seq` of its tokens)."""
        if not 1 <= len(prompt) <= self.context_length:
            raise ValueError(f"a prompt must have 1 to {self.context_length} tokens, got {len(prompt)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        check_sampling(sampling.top_p)
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(self.device).manual_seed(sampling.seed)
        seq = _Sequence(self._next_id, list(prompt), max_new_tokens, sampling, eos_id, generator)
        self._next_id += 1
        self.waiting.append(seq)
        return seq.id

    def cancel(self, seq_id: int) -> None:
        """Drop a sequence (its client went away); it makes no more tokens. Its row is freed at
        the start of the next step."""
        self.waiting = deque(s for s in self.waiting if s.id != seq_id)
        for seq in self.live:
            if seq.id == seq_id:
                seq.finish = "cancelled"

    @torch.inference_mode()
    def step(self) -> list[Token]:
        """One token for every live sequence, then the first token of each sequence that joins."""
        made: list[Token] = []
        self._retire()  # the cancelled
        if self.live:
            self.decode_batch_sizes[len(self.live)] += 1
            made += self._advance(0, self.live, prefill=not self.use_cache)
            self._retire()
        joining = [self.waiting.popleft() for _ in range(min(len(self.waiting), self.max_batch - len(self.live)))]
        if joining:
            first = len(self.live)
            self.live += joining
            made += self._advance(first, joining, prefill=True)
            self._retire()
        return made

    def _advance(self, first: int, seqs: list[_Sequence], prefill: bool) -> list[Token]:
        """Run rows first.. (holding `seqs`) through the model and append a token to each: from
        their whole token lists (prefill, their rows forgotten first) or their newest token."""
        if prefill:
            self.cache.reset(first, len(seqs))
        chunks = [s.tokens if prefill else s.tokens[-1:] for s in seqs]
        counts = torch.tensor([len(c) for c in chunks], device=self.device)  # (B,)
        ids = torch.zeros(len(chunks), int(counts.max()), dtype=torch.long)  # (B, T), right-padded
        for row, chunk in enumerate(chunks):
            ids[row, : len(chunk)] = torch.tensor(chunk)
        self.cache.feed(first, counts)
        logits = self.model(ids.to(self.device), kv_cache=self.cache)  # (B, T, V)
        last = logits[torch.arange(len(seqs), device=self.device), counts - 1]  # (B, V): each row's last real token
        return [self._append(seq, token) for seq, token in zip(seqs, self._sample(seqs, last))]

    def _sample(self, seqs: list[_Sequence], logits: torch.Tensor) -> list[int]:
        """A token per row of (B, V) logits, with each sequence's own sampling."""
        greedy = logits.argmax(dim=-1).tolist()  # one batched argmax covers every greedy row
        return [
            greedy[row] if s.sampling.temperature <= 0.0 else int(sample_next(
                logits[row : row + 1], s.sampling.temperature, s.sampling.top_k, s.sampling.top_p, s.generator,
            ))
            for row, s in enumerate(seqs)
        ]

    def _append(self, seq: _Sequence, token: int) -> Token:
        seq.tokens.append(token)
        seq.made += 1
        if seq.eos_id is not None and token == seq.eos_id:
            seq.finish = "stop"
        elif seq.made >= seq.max_new_tokens or len(seq.tokens) > self.context_length:
            # More than context_length tokens: the newest one has no position left to be read at.
            seq.finish = "length"
        return Token(seq.id, token, seq.finish)

    def _retire(self) -> None:
        """Remove finished sequences, moving the last live row into each hole to keep rows packed."""
        row = 0
        while row < len(self.live):
            if self.live[row].finish is None:
                row += 1
                continue
            last = len(self.live) - 1
            if row != last and self.use_cache:
                self.cache.move(last, row)
            self.live[row] = self.live[last]
            self.live.pop()
            self.cache.reset(last, 1)
