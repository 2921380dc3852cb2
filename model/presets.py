"""Named model architectures: `tiny` for tests, the book's GPT-2 sizes (124M, 355M, 774M, 1558M).

To add one, append an entry to `PRESETS` (the name is what `model.preset` in params.yaml takes),
add a row to README.md's presets table, and add its expected parameter count to
tests/model/test_presets.py. A preset with `vocab_size` set fixes the tokenizer's vocabulary too
(GPT-2's BPE has 50,257 tokens); `vocab_size=None` fits any tokenizer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from model.config import GPTConfig

GPT2_VOCAB = 50257
"""Token ids in OpenAI's GPT-2 BPE (50,000 merges + 256 bytes + <|endoftext|>)."""


@dataclass(frozen=True)
class Preset:
    """One architecture: the `GPTConfig` fields it fixes, plus a one-line description."""

    description: str
    context_length: int
    emb_dim: int
    n_heads: int
    n_layers: int
    qkv_bias: bool
    drop_rate: float
    """A default only: dropout is a training choice, so params.yaml may override it."""
    vocab_size: int | None = None
    """Vocabulary the preset needs; None = whatever the tokenizer has."""
    hf_name: str | None = None
    """Hugging Face hub name of OpenAI's weights of this size (for `pretrain.init_from`)."""

    def architecture(self) -> dict[str, int | bool]:
        """The fields params.yaml may not contradict (everything but the description and dropout)."""
        fields = asdict(self)
        for name in ("description", "drop_rate", "vocab_size", "hf_name"):
            fields.pop(name)
        return fields

    def gpt_config(self, vocab_size: int | None = None) -> GPTConfig:
        """The model config; `vocab_size` is needed when the preset does not fix one."""
        vocab = self.vocab_size if self.vocab_size is not None else vocab_size
        if vocab is None:
            raise ValueError(f"preset {self.description!r} fixes no vocabulary: pass the tokenizer's vocab_size")
        if vocab_size is not None and vocab_size != vocab:
            raise ValueError(f"this preset needs a vocabulary of {vocab:,} tokens, got {vocab_size:,}")
        # A preset fixes neither tying nor padding: the book's plain model (untied, unpadded).
        return GPTConfig(vocab_size=vocab, drop_rate=self.drop_rate, tie_embeddings=False, vocab_multiple=1,
                         **self.architecture())  # type: ignore[arg-type]


def _gpt2(description: str, emb_dim: int, n_heads: int, n_layers: int, hf_name: str) -> Preset:
    # OpenAI's GPT-2 family: context 1,024, GPT-2's BPE, biased q/k/v projections (their weights
    # have them; the book also sets qkv_bias=True when it loads them), dropout 0.1 as the book.
    return Preset(description, context_length=1024, emb_dim=emb_dim, n_heads=n_heads, n_layers=n_layers,
                  qkv_bias=True, drop_rate=0.1, vocab_size=GPT2_VOCAB, hf_name=hf_name)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("2 layers of width 64 for tests; any tokenizer", context_length=64, emb_dim=64, n_heads=4,
                   n_layers=2, qkv_bias=False, drop_rate=0.0),
    "gpt2-small": _gpt2("GPT-2 small, the book's GPT_CONFIG_124M", 768, 12, 12, "gpt2"),
    "gpt2-medium": _gpt2("GPT-2 medium (355M)", 1024, 16, 24, "gpt2-medium"),
    "gpt2-large": _gpt2("GPT-2 large (774M)", 1280, 20, 36, "gpt2-large"),
    "gpt2-xl": _gpt2("GPT-2 XL (1558M)", 1600, 25, 48, "gpt2-xl"),
}


def parameter_count(cfg: GPTConfig, tied: bool = False) -> int:
    """Parameters of `GPTModel(cfg)`, counted from the config (building gpt2-xl would take 6 GB).

    `tied` counts the output head as sharing the token embedding's matrix, as GPT-2 and Hugging
    Face's count do.
    """
    c, ff = cfg.emb_dim, 4 * cfg.emb_dim
    attention = 3 * c * c + (3 * c if cfg.qkv_bias else 0) + c * c + c  # W_query/W_key/W_value + out_proj
    feed_forward = c * ff + ff + ff * c + c
    norms = 2 * 2 * c
    embeddings = cfg.vocab_size * c + cfg.context_length * c
    head = 0 if tied else cfg.vocab_size * c
    return embeddings + cfg.n_layers * (attention + feed_forward + norms) + 2 * c + head
