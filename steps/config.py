"""params.yaml -> strict typed config: the one place parameters are read and validated."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    """A params.yaml group: unknown keys and wrong types are errors, never silently ignored."""

    # strict: a quoted "0.1" or a YAML 1.1 float written without a dot ("4e-4" parses as a string)
    # is rejected rather than coerced, so what DVC hashes is what the code uses.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


class DownloadConfig(Section):
    source: Literal["builtin"] = "builtin"
    """Where the data comes from; `builtin` generates the offline demo world from `seed`."""
    corpus_bytes: int = Field(1_200_000, ge=10_000)
    """Size of the generated pretraining corpus in bytes."""
    sms_messages: int = Field(3000, ge=50)
    """Number of generated SMS messages (spam and ham)."""
    instructions_train: int = Field(1700, ge=10)
    """Generated instruction records whose inputs may be seen in training."""
    instructions_test: int = Field(200, ge=5)
    """Generated test records, on held-out inputs."""
    instructions_val: int = Field(100, ge=5)
    """Generated validation records, on held-out inputs."""


class TokenizeConfig(Section):
    kind: Literal["bpe", "gpt2"] = "bpe"
    """`bpe`: train our byte-level BPE on the corpus; `gpt2`: OpenAI's GPT-2 BPE (50,257 tokens)
    through tiktoken."""
    vocab_size: int = Field(2048, ge=260, le=2**32 - 1)
    """bpe: vocabulary size, special tokens included (>= 256 bytes + specials)."""
    min_frequency: int = Field(2, ge=1)
    """bpe: a pair must occur this often to be merged."""
    encoder_json: str | None = None
    """gpt2: local path of GPT-2's encoder.json, to work offline (give vocab_bpe too); unset,
    tiktoken downloads both files once into its cache."""
    vocab_bpe: str | None = None
    """gpt2: local path of GPT-2's vocab.bpe (with encoder_json)."""
    val_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    """Share of the corpus bytes kept for validation: its tail, from the next line boundary."""
    workers: int = Field(0, ge=0)
    """Threads encoding the corpus; 0 = all the cores this process may use."""

    @model_validator(mode="after")
    def _gpt2_files(self) -> "TokenizeConfig":
        given = [name for name in ("encoder_json", "vocab_bpe") if getattr(self, name) is not None]
        if given and self.kind != "gpt2":
            raise ValueError(f"tokenize.{given[0]} applies only to kind gpt2 (kind is {self.kind})")
        if len(given) == 1:
            raise ValueError("tokenize.encoder_json and vocab_bpe go together: give both (local GPT-2 files) "
                             "or neither (tiktoken downloads them)")
        return self


class ModelConfig(Section):
    """The GPT's architecture; the vocabulary size comes from the trained tokenizer."""

    context_length: int = Field(128, ge=8)
    """Longest sequence the model reads."""
    emb_dim: int = Field(192, ge=8)
    """Width of the residual stream."""
    n_heads: int = Field(6, ge=1)
    """Attention heads per block (emb_dim must be divisible by it)."""
    n_layers: int = Field(4, ge=1)
    """Transformer blocks."""
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout rate in embeddings, attention and residual branches."""
    qkv_bias: bool = False
    """Bias in the query/key/value projections."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "ModelConfig":
        if self.emb_dim % self.n_heads:
            raise ValueError(f"model.emb_dim ({self.emb_dim}) must be divisible by model.n_heads ({self.n_heads})")
        return self


class OptimConfig(Section):
    """What every training stage shares: AdamW, linear warmup + cosine decay, clipping."""

    batch_size: int = Field(16, ge=1)
    """Sequences per optimizer step."""
    lr: float = Field(1.0e-3, gt=0.0)
    """Peak learning rate, reached after warmup."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int = Field(20, ge=0)
    """Steps of linear warmup from 0 to lr."""
    weight_decay: float = Field(0.1, ge=0.0)
    """AdamW weight decay, applied to matrices only (not to biases, norms)."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    eval_interval: int = Field(50, ge=1)
    """Evaluate (and log validation metrics) every this many steps, and at the end."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where to train; `auto` takes cuda, then mps, then cpu."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 autocast on CUDA and on CPUs with AMX, fp32 elsewhere."""


class PretrainConfig(OptimConfig):
    max_steps: int = Field(600, ge=1)
    """Optimizer steps of pretraining."""
    eval_batches: int = Field(10, ge=1)
    """Validation batches averaged per evaluation."""
    sample_prompt: str = "The market"
    """Prompt of the text sample generated at each evaluation."""
    sample_tokens: int = Field(40, ge=1)
    """Tokens generated for that sample."""
    temperature: float = Field(0.8, ge=0.0)
    """Sampling temperature of the sample (0 = greedy)."""
    top_k: int = Field(40, ge=0)
    """Sample among the k most likely tokens (0 = all)."""


class LoraConfig(Section):
    rank: int = Field(8, ge=1)
    """Rank r of the adapter matrices."""
    alpha: float = Field(16.0, gt=0.0)
    """Scaling numerator: the update is scaled by alpha / rank."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapter's input."""
    target_modules: list[str] = ["W_query", "W_key", "W_value", "out_proj"]
    """Names of the Linear layers that get adapters."""


class ClassifierConfig(OptimConfig):
    init: Literal["pretrained", "random"] = "pretrained"
    """Start from the pretrained model, or from random weights (to measure what pretraining buys)."""
    trainable: Literal["head", "last_block", "last_two_blocks", "all", "lora"] = "last_block"
    """What trains: the head; the last block (or two) + final norm + head (the book's is one);
    everything; LoRA adapters + head."""
    pooling: Literal["last", "last_non_pad", "mean"] = "last_non_pad"
    """Which positions classify a message: the final one (the book), the last real token, or
    the mean over real tokens."""
    class_balanced: bool = False
    """Draw training batches with every label equally likely (sampling with replacement)."""
    epochs: int = Field(3, ge=1)
    """Passes over the training split."""
    max_length: int = Field(64, ge=4)
    """Messages are truncated to this many tokens (at most the model's context)."""
    balance: bool = False
    """Downsample the majority class to the minority's size before splitting (the book does)."""
    train_fraction: float = Field(0.7, gt=0.0, lt=1.0)
    """Share of messages for training."""
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Share for validation; the rest is the test split."""
    lora: LoraConfig = LoraConfig()
    """Adapter settings when trainable is `lora`."""

    @model_validator(mode="after")
    def _split_leaves_test(self) -> "ClassifierConfig":
        if self.train_fraction + self.val_fraction >= 1.0:
            raise ValueError("finetune_classifier.train_fraction + val_fraction must leave a test split (< 1.0)")
        return self


class InstructConfig(OptimConfig):
    method: Literal["full", "lora"] = "full"
    """Finetune every weight, or LoRA adapters only."""
    epochs: int = Field(3, ge=1)
    """Passes over the training split."""
    prompt_style: Literal["alpaca", "phi3"] = "alpaca"
    """Prompt layout: the book's Alpaca prompt, or the shorter Phi-3 chat layout."""
    mask_prompt: bool = False
    """Leave the instruction and input out of the loss, so only response tokens are learned
    (the book trains on the whole text; with a tiny model the mask helps)."""
    allowed_max_length: int = Field(128, ge=8)
    """Prompt + response are truncated to this many tokens (at most the model's context)."""
    max_new_tokens: int = Field(16, ge=1)
    """Tokens generated per test response."""
    lora: LoraConfig = LoraConfig()
    """Adapter settings when method is `lora`."""


class EvaluateConfig(Section):
    val_batches: int = Field(50, ge=1)
    """Validation batches used for the pretrained model's perplexity."""
    batch_size: int = Field(16, ge=1)
    """Sequences per evaluation batch."""


class TrackingConfig(Section):
    experiment: str = "gptpipe"
    """MLflow experiment the stage runs are recorded in."""
    log_models: bool = True
    """Upload each stage's model folder as an MLflow artifact."""


class Params(Section):
    """Everything params.yaml holds, one group per stage plus shared groups."""

    seed: int = 123
    """Seed of data generation, splits, initialisation and sampling."""
    download: DownloadConfig = DownloadConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune_classifier: ClassifierConfig = ClassifierConfig()
    finetune_instruct: InstructConfig = InstructConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names file and key."""


def parse_params(data: Any, source: str = PARAMS_FILE) -> Params:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                problems.append(f"  {key}: unknown key (check its spelling against params.yaml's documented keys)")
            else:
                problems.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError(f"{source}: invalid parameters\n" + "\n".join(problems)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; every error names the file and the dotted key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run from the repository root, or pass --params)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_params(data or {}, str(path))


def params_hash(params: Params, sections: list[str]) -> str:
    """Short stable hash of the sections a stage depends on (tags its MLflow run)."""
    payload = {name: _dump(getattr(params, name)) for name in sections}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def flat_params(params: Params, sections: list[str]) -> dict[str, Any]:
    """`{"pretrain.lr": 0.001, ...}` for the given sections, for logging."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for name in sections:
        walk(name, _dump(getattr(params, name)))
    return flat


def _dump(value: Any) -> Any:
    return value.model_dump() if isinstance(value, BaseModel) else value
