"""Architecture hyper-parameters, declared once: params.yaml's `model:` section is validated into
`Architecture` (steps/config.py), the tokenizer adds the vocabulary (`GPTConfig`).

Two families share the one config: `gpt2` (the book's GPTModel, model/gpt.py) and `llama`
(model/llama.py). A field that only one family reads is null for the other, and a value given
where it does not apply is an error naming it (`ARCH_FIELDS`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

# Fields added after the first models were saved, with the value that reproduces those models:
# a config.json written before a field existed loads with it.
FIELDS_ADDED_LATER: dict[str, Any] = {
    "tie_embeddings": False, "vocab_multiple": 1,
    "arch": "gpt2", "rope_theta": None, "ffn_hidden": None, "n_kv_heads": None, "norm_eps": None,
}

Arch = Literal["gpt2", "llama"]

# The fields only one family reads; every other field applies to both.
ARCH_FIELDS: dict[str, tuple[str, ...]] = {
    "gpt2": ("qkv_bias",),
    "llama": ("rope_theta", "ffn_hidden", "n_kv_heads", "norm_eps"),
}


@dataclass(frozen=True)
class Architecture:
    """The network's shape: everything but the vocabulary, which the tokenizer fixes. params.yaml's
    `model:` section gives every field; the defaults of the fields added with the llama family
    (keyword-only) are the GPT-2 values that FIELDS_ADDED_LATER gives old config.json files."""

    context_length: int
    """Longest sequence the model reads (gpt2: the positional embedding's rows; llama: the
    KV cache's length, RoPE itself has no limit)."""
    emb_dim: int
    """Width of the residual stream (C)."""
    n_heads: int
    """Attention (query) heads per block; emb_dim must be divisible by it."""
    n_layers: int
    """Number of transformer blocks."""
    drop_rate: float
    """Dropout after embeddings, attention weights and each residual branch (a training choice:
    a preset only gives its default)."""
    qkv_bias: bool | None
    """gpt2 only (null for llama, which has no biases): whether the query/key/value projections
    carry a bias (GPT-2's weights do)."""
    tie_embeddings: bool
    """Share one matrix between the token embedding and the LM head (GPT-2 does; the book unties
    them, which costs vocab_size * emb_dim extra parameters)."""
    vocab_multiple: int
    """Pad the embedding and head rows up to a multiple of this (64 suits GPU matmul tiles:
    GPT-2's 50,257 becomes 50,304); 1 = no padding. The padded rows are never read by the loss or
    by sampling: the model's output is cut back to vocab_size scores."""
    arch: Arch = field(default="gpt2", kw_only=True)
    """The family: `gpt2` (learned positions, LayerNorm, GELU MLP, multi-head attention: the book)
    or `llama` (rotary positions, RMSNorm, SwiGLU, grouped-query attention, no biases)."""
    rope_theta: float | None = field(default=None, kw_only=True)
    """llama only: base of the rotary position embedding's frequencies (Llama 2: 10,000;
    Llama 3: 500,000). Larger bases rotate slower, for longer contexts."""
    ffn_hidden: int | None = field(default=None, kw_only=True)
    """llama only: width of the SwiGLU feed-forward's hidden layer (Llama 3.2 1B: 8,192 for
    emb_dim 2,048). Three matrices instead of GPT-2's two, so about 8/3 emb_dim matches 4x's cost."""
    n_kv_heads: int | None = field(default=None, kw_only=True)
    """llama only: key/value heads (grouped-query attention); n_heads must be divisible by it.
    n_heads = ordinary multi-head attention, 1 = multi-query. The KV cache shrinks by
    n_heads / n_kv_heads."""
    norm_eps: float | None = field(default=None, kw_only=True)
    """llama only: epsilon of RMSNorm (Llama 3: 1e-5; Llama 2: 1e-6)."""

    def __post_init__(self) -> None:
        self._check_applicable()
        for name in ("context_length", "emb_dim", "n_heads", "n_layers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads})")
        if self.vocab_multiple < 1:
            raise ValueError(f"vocab_multiple must be >= 1 (1 = no padding), got {self.vocab_multiple}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.arch == "llama":
            self._check_llama()

    def _check_applicable(self) -> None:
        """A field of the other family must be null; a field of this family must be set."""
        if self.arch not in ARCH_FIELDS:
            raise ValueError(f"arch must be one of {sorted(ARCH_FIELDS)}, got {self.arch!r}")
        for arch, names in ARCH_FIELDS.items():
            for name in names:
                value = getattr(self, name)
                if arch != self.arch and value is not None:
                    raise ValueError(f"{name} does not apply to arch {self.arch} (only to {arch}): "
                                     f"set {name} to null, or arch to {arch}")
                if arch == self.arch and value is None:
                    raise ValueError(f"arch {arch} needs {name}: set it (null only for the other arch)")

    def _check_llama(self) -> None:
        assert self.n_kv_heads is not None and self.ffn_hidden is not None
        assert self.rope_theta is not None and self.norm_eps is not None
        if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must be positive and divide n_heads ({self.n_heads}) "
                             "(n_heads = multi-head, 1 = multi-query attention)")
        if (self.emb_dim // self.n_heads) % 2:
            raise ValueError(f"head width emb_dim / n_heads = {self.emb_dim // self.n_heads} must be even: "
                             "RoPE rotates pairs of features")
        if self.ffn_hidden <= 0:
            raise ValueError(f"ffn_hidden must be positive, got {self.ffn_hidden}")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError(f"rope_theta and norm_eps must be positive, got {self.rope_theta} and {self.norm_eps}")


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


def applicable_fields(arch: str) -> tuple[str, ...]:
    """Names of the Architecture fields that `arch` reads (the others must be null)."""
    other = {name for a, names in ARCH_FIELDS.items() if a != arch for name in names}
    return tuple(f.name for f in fields(Architecture) if f.name not in other)


def architecture_fields(architecture: Architecture) -> dict[str, Any]:
    """The Architecture fields of `architecture`, by name (a subclass's own fields left out)."""
    return {f.name: getattr(architecture, f.name) for f in fields(Architecture)}
