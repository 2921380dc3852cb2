"""Architecture hyper-parameters of the GPT, declared once: params.yaml's `model:` section is
validated into `Architecture` (steps/config.py), the tokenizer adds the vocabulary (`GPTConfig`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# Fields added after the first models were saved, with the value that reproduces those models:
# a config.json written before a field existed loads with it.
FIELDS_ADDED_LATER: dict[str, Any] = {"tie_embeddings": False, "vocab_multiple": 1}


@dataclass(frozen=True)
class Architecture:
    """The GPT's shape: everything but the vocabulary, which the tokenizer fixes. No field has a
    default: params.yaml's `model:` section gives each one."""

    context_length: int
    """Longest sequence the model reads (the positional embedding's rows)."""
    emb_dim: int
    """Width of the residual stream (C)."""
    n_heads: int
    """Attention heads per block; emb_dim must be divisible by it."""
    n_layers: int
    """Number of transformer blocks."""
    drop_rate: float
    """Dropout after embeddings, attention weights and each residual branch (a training choice:
    a preset only gives its default)."""
    qkv_bias: bool
    """Whether the query/key/value projections carry a bias (GPT-2's weights do)."""
    tie_embeddings: bool
    """Share one matrix between the token embedding and the LM head (GPT-2 does; the book unties
    them, which costs vocab_size * emb_dim extra parameters)."""
    vocab_multiple: int
    """Pad the embedding and head rows up to a multiple of this (64 suits GPU matmul tiles:
    GPT-2's 50,257 becomes 50,304); 1 = no padding. The padded rows are never read by the loss or
    by sampling: the model's output is cut back to vocab_size scores."""

    def __post_init__(self) -> None:
        for name in ("context_length", "emb_dim", "n_heads", "n_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})")
        if self.vocab_multiple < 1:
            raise ValueError(f"vocab_multiple must be >= 1 (1 = no padding), got {self.vocab_multiple}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")


@dataclass(frozen=True)
class GPTConfig(Architecture):
    """The book's GPT_CONFIG dictionary as a typed, validated object: an architecture and the
    vocabulary size of its tokenizer."""

    vocab_size: int
    """Number of token ids the embedding and the LM head cover."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {self.vocab_size}")

    @classmethod
    def of(cls, architecture: Architecture, vocab_size: int) -> GPTConfig:
        """`architecture` (or a subclass of it, such as params.yaml's model section) with a vocabulary."""
        return cls(vocab_size=vocab_size, **architecture_fields(architecture))

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the LM head: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GPTConfig:
        """The fields of FIELDS_ADDED_LATER may be missing (config.json files written before they
        existed); any other missing or unknown field is an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {sorted(unknown)}")
        return cls(**{**FIELDS_ADDED_LATER, **data})


def architecture_fields(architecture: Architecture) -> dict[str, Any]:
    """The Architecture fields of `architecture`, by name (a subclass's own fields left out)."""
    return {f.name: getattr(architecture, f.name) for f in fields(Architecture)}
