"""Architecture hyper-parameters of the GPT, as one validated dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class GPTConfig:
    """The book's GPT_CONFIG dictionary as a typed, validated object."""

    vocab_size: int
    """Number of token ids the embedding and the LM head cover."""
    context_length: int
    """Longest sequence the positional embedding supports."""
    emb_dim: int
    """Width of the residual stream (C)."""
    n_heads: int
    """Attention heads per block; emb_dim must be divisible by it."""
    n_layers: int
    """Number of transformer blocks."""
    drop_rate: float = 0.1
    """Dropout after embeddings, attention weights and each residual branch."""
    qkv_bias: bool = False
    """Whether the query/key/value projections carry a bias (GPT-2 weights do)."""
    tie_embeddings: bool = False
    """Share one matrix between the token embedding and the LM head (GPT-2 does; the book unties
    them, which costs vocab_size * emb_dim extra parameters)."""
    vocab_multiple: int = 1
    """Pad the embedding and head rows up to a multiple of this (64 suits GPU matmul tiles); 1 = no
    padding. The padded rows are never read by the loss or by sampling: the model's output is cut
    back to vocab_size scores."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads:
            raise ValueError(
                f"GPTConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.vocab_multiple < 1:
            raise ValueError(f"GPTConfig.vocab_multiple must be >= 1 (1 = no padding), got {self.vocab_multiple}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"GPTConfig.drop_rate must be in [0, 1), got {self.drop_rate}")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the LM head: vocab_size rounded up to vocab_multiple."""
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPTConfig":
        """Fields missing from `data` take their defaults, so config.json files written before a
        field existed still load."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {sorted(unknown)}")
        return cls(**data)
