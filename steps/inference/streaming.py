"""Text as it is generated: sampling settings, the next-token loop, and incremental decoding
that only ever emits complete UTF-8 (a byte-level BPE token can hold half a character)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer

from model.generate import iter_tokens
from steps.inference.loading import LoadedModel

REPLACEMENT = "\ufffd"  # what decoding makes of bytes that are not (yet) a whole character


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked; temperature 0 means greedy (then top-k/top-p do nothing)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A seeded generator, so a seed gives the same text every time; None: torch's global one."""
        return None if self.seed is None else torch.Generator(device=device).manual_seed(self.seed)


class TextStream:
    """Token ids in, text out as soon as it is complete.

    Tokens are decoded in groups: a group is held back while its decoding ends in a replacement
    character, i.e. while its last character's bytes have not all arrived. Each group is decoded
    after the one before it (the prompt's last tokens for the first) and only the new text is
    emitted, so the pieces join into the text that decoding prompt and reply together gives: a
    token's text can depend on what precedes it (our BPE's decoder drops the space its normalizer
    wrote after a newline or at a text's start; SentencePiece's drops a text's first space).
    """

    CONTEXT_TOKENS = 8
    """Prompt tokens decoded before the first group: enough to end on a whole character."""

    def __init__(self, tokenizer: Tokenizer, context: Sequence[int] = ()) -> None:
        self.tokenizer = tokenizer
        self.context: list[int] = list(context[-self.CONTEXT_TOKENS:])
        self.pending: list[int] = []

    def push(self, token_id: int) -> str:
        """The text this token completes ("" while a character is still incomplete)."""
        self.pending.append(token_id)
        text = self._new_text()
        if text.endswith(REPLACEMENT):
            return ""
        self.context, self.pending = self.pending, []
        return text

    def flush(self) -> str:
        """Whatever is held back, as it decodes (generation ended inside a character)."""
        text = self._new_text() if self.pending else ""
        self.pending = []
        return text

    def _new_text(self) -> str:
        before = self.tokenizer.decode(self.context) if self.context else ""
        return self.tokenizer.decode(self.context + self.pending)[len(before):]


def next_tokens(loaded: LoadedModel, prompt_ids: list[int], sampling: Sampling) -> Iterator[int]:
    """The ids the model generates after `prompt_ids` (end-of-text when empty), one at a time as
    each is made, ending before end-of-text or after `sampling.max_new_tokens`."""
    idx = torch.tensor([prompt_ids or [loaded.eot_id]], dtype=torch.long, device=loaded.device)  # (1, T)
    steps = iter_tokens(loaded.model, idx, sampling.max_new_tokens, loaded.context_length,
                        temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                        eos_id=loaded.eot_id, generator=sampling.generator(loaded.device))
    with closing(steps):  # stopping early hands the model back in the mode it was in
        for next_id in steps:  # each (1,)
            token = int(next_id[0])
            if token == loaded.eot_id:
                return
            yield token


class Completion:
    """One generation: iterate it for text pieces as tokens are made; afterwards `ids` holds the
    generated tokens (end-of-text left out) and `stopped` says why it ended (`eos` or `length`)."""

    def __init__(self, loaded: LoadedModel, prompt_ids: list[int], sampling: Sampling) -> None:
        self.loaded = loaded
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.ids: list[int] = []
        self.stopped: str | None = None

    def __iter__(self) -> Iterator[str]:
        stream = TextStream(self.loaded.tokenizer, self.prompt_ids or [self.loaded.eot_id])
        for token in next_tokens(self.loaded, self.prompt_ids, self.sampling):
            self.ids.append(token)
            piece = stream.push(token)
            if piece:
                yield piece
        rest = stream.flush()
        if rest:
            yield rest
        self.stopped = "length" if len(self.ids) >= self.sampling.max_new_tokens else "eos"

    def text(self) -> str:
        """Run it to the end; the whole text."""
        return "".join(self)


def encode(loaded: LoadedModel, text: str) -> list[int]:
    """Token ids of `text` as training encoded it (no special tokens added)."""
    return loaded.tokenizer.encode(text, add_special_tokens=False).ids
