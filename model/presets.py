"""Named model architectures: `tiny` for tests, the book's GPT-2 sizes (124M, 355M, 774M, 1558M),
`tiny-llama` and the published shapes of Llama 3.2 1B and 3B.

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
LLAMA3_VOCAB = 128256
"""Token ids of Llama 3's tokenizer (128,000 BPE tokens + 256 special ones): the vocabulary the
published Llama 3.2 parameter counts include. The presets fix no vocabulary (this pipeline has
no Llama 3 tokenizer): a model built from them reads the tokenizer's."""


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
    arch: str = "gpt2"
    """The family (model/config.py's `arch`); the four fields below are llama's, null for gpt2."""
    rope_theta: float | None = None
    ffn_hidden: int | None = None
    n_kv_heads: int | None = None
    norm_eps: float | None = None

    def architecture(self) -> dict[str, int | float | bool | str | None]:
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


def _llama(description: str, context_length: int, emb_dim: int, n_heads: int, n_kv_heads: int, n_layers: int,
           ffn_hidden: int, rope_theta: float) -> Preset:
    # No biases (qkv_bias null: it does not apply), no dropout (Llama trains without), RMSNorm
    # epsilon 1e-5 as Llama 3.
    return Preset(description, context_length=context_length, emb_dim=emb_dim, n_heads=n_heads, n_layers=n_layers,
                  qkv_bias=None, drop_rate=0.0, arch="llama", rope_theta=rope_theta, ffn_hidden=ffn_hidden,
                  n_kv_heads=n_kv_heads, norm_eps=1e-5)


PRESETS: dict[str, Preset] = {
    "tiny": Preset("2 layers of width 64 for tests; any tokenizer", context_length=64, emb_dim=64, n_heads=4,
                   n_layers=2, qkv_bias=False, drop_rate=0.0),
    "gpt2-small": _gpt2("GPT-2 small, the book's GPT_CONFIG_124M", 768, 12, 12, "gpt2"),
    "gpt2-medium": _gpt2("GPT-2 medium (355M)", 1024, 16, 24, "gpt2-medium"),
    "gpt2-large": _gpt2("GPT-2 large (774M)", 1280, 20, 36, "gpt2-large"),
    "gpt2-xl": _gpt2("GPT-2 XL (1558M)", 1600, 25, 48, "gpt2-xl"),
    "tiny-llama": _llama("2 Llama layers of width 64, 4 query / 2 key-value heads, for tests; any tokenizer",
                         context_length=64, emb_dim=64, n_heads=4, n_kv_heads=2, n_layers=2, ffn_hidden=176,
                         rope_theta=10_000.0),
    # Meta's config.json of Llama-3.2-1B / -3B. Their context of 131,072 needs Llama 3's RoPE
    # scaling of the low frequencies, which model/llama.py does not implement: 8,192 is the
    # context their base pretraining used, and a longer one would not be theirs.
    "llama-3.2-1b": _llama("Llama 3.2 1B's shape (1.24 B with tied embeddings and its 128,256-token vocabulary)",
                           context_length=8192, emb_dim=2048, n_heads=32, n_kv_heads=8, n_layers=16,
                           ffn_hidden=8192, rope_theta=500_000.0),
    "llama-3.2-3b": _llama("Llama 3.2 3B's shape (3.21 B with tied embeddings and its 128,256-token vocabulary)",
                           context_length=8192, emb_dim=3072, n_heads=24, n_kv_heads=8, n_layers=28,
                           ffn_hidden=8192, rope_theta=500_000.0),
}


def parameter_count(cfg: GPTConfig, tied: bool = False) -> int:
    """Parameters of the model `cfg` builds, counted from the config (building gpt2-xl would take
    6 GB).

    `tied` counts the output head as sharing the token embedding's matrix, as GPT-2, Llama 3.2
    and Hugging Face's count do.
    """
    if cfg.arch == "llama":
        return _llama_parameter_count(cfg, tied)
    c, ff = cfg.emb_dim, 4 * cfg.emb_dim
    attention = 3 * c * c + (3 * c if cfg.qkv_bias else 0) + c * c + c  # W_query/W_key/W_value + out_proj
    feed_forward = c * ff + ff + ff * c + c
    norms = 2 * 2 * c
    embeddings = cfg.vocab_size * c + cfg.context_length * c
    head = 0 if tied else cfg.vocab_size * c
    return embeddings + cfg.n_layers * (attention + feed_forward + norms) + 2 * c + head


def _llama_parameter_count(cfg: GPTConfig, tied: bool) -> int:
    assert cfg.n_kv_heads is not None and cfg.ffn_hidden is not None
    c = cfg.emb_dim
    kv = cfg.n_kv_heads * (c // cfg.n_heads)  # width of the key and of the value projection
    attention = c * c + 2 * c * kv + c * c  # W_query, W_key + W_value, out_proj; no biases
    feed_forward = 3 * c * cfg.ffn_hidden  # gate_proj, up_proj, down_proj
    norms = 2 * c  # two RMSNorm scales
    head = 0 if tied else cfg.vocab_size * c
    return cfg.vocab_size * c + cfg.n_layers * (attention + feed_forward + norms) + c + head
