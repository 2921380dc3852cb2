"""params.yaml -> strict typed config: the one place parameters are read and validated."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import itertools
import json
import re
import textwrap
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from model.config import Architecture, GPTConfig
from model.presets import PRESETS

PARAMS_FILE = "params.yaml"
# Keys whose invalid values an error message does not repeat: a misplaced API key must not reach a log.
SECRET_KEYS = ("api_key_env",)


class Section(BaseModel):
    """A params.yaml group: unknown keys and wrong types are errors, never silently ignored."""

    # strict: a quoted "0.1" or a YAML 1.1 float written without a dot ("4e-4" parses as a string)
    # is rejected rather than coerced, so what DVC hashes is what the code uses.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)


class BuiltinSource(Section):
    """The offline demo world generated from `seed` (steps/data/builtin_data.py)."""

    kind: Literal["builtin"] = "builtin"
    """Generate the data instead of reading it."""


class UrlSource(Section):
    """An http(s) download, pinned by checksum and fetched once into a content cache."""

    kind: Literal["url"] = "url"
    """Download the file at `url`."""
    url: str
    """http(s) address of the file (or of an archive holding it)."""
    sha256: str | None = None
    """Checksum of the downloaded file; a mismatch is an error and nothing is kept."""
    member: str | None = None
    """For a zip or tar archive: the member to read (a .gz holds one file and needs none)."""
    member_sha256: str | None = None
    """Checksum of the extracted member (pins sources whose archive bytes change, like UCI's zip)."""
    timeout_s: float = Field(60.0, gt=0.0)
    """Seconds without data before a request counts as failed (then retried)."""
    retries: int = Field(3, ge=0)
    """Retries on transient errors (refused connection, timeout, HTTP 5xx/429), with backoff."""
    retry_delay_s: float = Field(2.0, ge=0.0)
    """Delay before the first retry; it doubles at each further retry."""

    @model_validator(mode="after")
    def _pinned(self) -> "UrlSource":
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        if self.sha256 is None and self.member_sha256 is None:
            raise ValueError("a url source needs `sha256` (of the file) or `member_sha256` (of the archive "
                             "member): run `sha256sum` on a trusted copy and pin it")
        if self.member_sha256 is not None and self.member is None:
            raise ValueError("`member_sha256` needs `member` (the archive member it checks)")
        return self


class HfSource(Section):
    """A dataset from the Hugging Face hub (or a local dataset folder) via `datasets.load_dataset`."""

    kind: Literal["hf"] = "hf"
    """Load with `datasets.load_dataset(name, config, split=split, revision=revision)`."""
    name: str
    """Hub id (`owner/name`) or a local folder of data files."""
    config: str | None = None
    """Dataset configuration (subset) name, if it has several."""
    split: str = "train"
    """Split to read, e.g. `train` or `train[:10%]`."""
    revision: str | None = None
    """Branch, tag or commit to pin; the revision actually resolved is recorded either way."""


class LocalSource(Section):
    """Files on this machine: one file, a folder (read recursively) or a glob pattern."""

    kind: Literal["local"] = "local"
    """Read local files."""
    path: str
    """A file, a folder or a glob (`**` recurses); relative paths are from the repository root.
    Keep them under data/local/ so that DVC notices when their content changes."""


Source = Annotated[BuiltinSource | UrlSource | HfSource | LocalSource, Field(discriminator="kind")]
Format = Literal["auto", "txt", "jsonl", "json", "csv", "tsv", "parquet"]


class DatasetSource(Section):
    """Where one dataset comes from and how to read its files."""

    source: Source
    """`builtin`, `url`, `hf` or `local` (see each kind's fields)."""
    format: Format = "auto"
    """File format; `auto` goes by the extension (.txt .jsonl .json .csv .tsv .parquet)."""
    header: bool = True
    """csv/tsv: the first row names the columns."""
    columns: list[str] | None = None
    """csv/tsv: column names, for files without a header row (set header: false)."""

    @model_validator(mode="after")
    def _columns_named(self) -> "DatasetSource":
        if not self.header and not self.columns:
            raise ValueError("header: false needs `columns` (the names of the file's columns, in order)")
        return self


class CorpusSource(DatasetSource):
    text_field: str = "text"
    """Field (jsonl/json/parquet/hf) or column (csv/tsv) holding a document; a .txt file is one
    document."""


class ClassificationSource(DatasetSource):
    text_field: str = "text"
    """Field or column holding the text to classify."""
    label_field: str = "label"
    """Field or column holding the label name."""
    labels: list[str] | None = None
    """Label names in id order (a record with any other label is an error, or dropped: see
    unlisted_labels); unset = the sorted names found in the data (ham = 0, spam = 1)."""
    unlisted_labels: Literal["error", "drop"] = "error"
    """A record whose label is not in `labels`, or that has no label (empty, NaN, null): stop
    with an error naming it, or `drop` it (the count is logged and reported as
    classification_records_dropped). `drop` needs `labels`."""

    @model_validator(mode="after")
    def _drop_needs_labels(self) -> "ClassificationSource":
        if self.unlisted_labels == "drop" and self.labels is None:
            raise ValueError("unlisted_labels: drop needs `labels` (the label names to keep, in id order)")
        return self


class InstructionFields(Section):
    """Which source field fills each part of an instruction record."""

    instruction: str = "instruction"
    """Field holding the task."""
    input: str | None = "input"
    """Field holding the optional input; null when the data has none."""
    output: str = "output"
    """Field holding the desired response."""


class InstructionSource(DatasetSource):
    fields: InstructionFields = InstructionFields()
    """Source fields mapped to instruction / input / output."""


class PreferenceFields(Section):
    """Which source field fills each part of a preference record."""

    instruction: str = "instruction"
    """Field holding the task."""
    input: str | None = "input"
    """Field holding the optional input; null when the data has none."""
    chosen: str = "chosen"
    """Field holding the preferred response."""
    rejected: str = "rejected"
    """Field holding the dispreferred response (must differ from the chosen one)."""


class PreferenceSource(DatasetSource):
    fields: PreferenceFields = PreferenceFields()
    """Source fields mapped to instruction / input / chosen / rejected (other fields, like the
    book's `output`, are not read)."""
    identical_pairs: Literal["error", "drop", "keep"] = "error"
    """A record whose chosen and rejected responses are the same text (spaces aside): stop with an
    error naming it, `drop` it, or `keep` it as the book does (6 of its 1,100 records; such a pair
    teaches nothing: its DPO loss is ln 2 whatever the model). Dropped and kept pairs are counted
    (preference_identical_pairs)."""


class BuiltinSizes(Section):
    """Sizes of the generated offline world (used by datasets whose source is `builtin`)."""

    corpus_bytes: int = Field(ge=10_000)
    """Size of the generated pretraining corpus in bytes."""
    sms_messages: int = Field(ge=50)
    """Number of generated SMS messages (spam and ham)."""
    instructions_train: int = Field(ge=10)
    """Generated instruction records whose inputs may be seen in training."""
    instructions_test: int = Field(ge=5)
    """Generated test records, on held-out inputs."""
    instructions_val: int = Field(ge=5)
    """Generated validation records, on held-out inputs."""
    preferences: int = Field(ge=20)
    """Generated preference records in all, split in file order like any preference set (85 %
    train, 10 % test, the rest validation); the test and validation records ask about held-out
    subjects."""


class DownloadConfig(Section):
    """The four datasets the pipeline starts from, each from its own source."""

    corpus: CorpusSource
    """Pretraining text."""
    classification: ClassificationSource
    """Labelled texts for the classifier."""
    instructions: InstructionSource
    """Instruction / input / output records."""
    preferences: PreferenceSource
    """Instruction / input / chosen / rejected records for preference tuning."""
    builtin: BuiltinSizes
    """Sizes of the generated data."""


class TokenizeConfig(Section):
    kind: Literal["bpe", "gpt2"]
    """`bpe`: train our byte-level BPE on the corpus; `gpt2`: OpenAI's GPT-2 BPE (50,257 tokens)
    through tiktoken."""
    vocab_size: int = Field(ge=260, le=2**32 - 1)
    """bpe: vocabulary size, special tokens included (>= 256 bytes + specials)."""
    min_frequency: int = Field(ge=1)
    """bpe: a pair must occur this often to be merged."""
    encoder_json: str | None
    """gpt2: local path of GPT-2's encoder.json, to work offline (give vocab_bpe too); unset,
    tiktoken downloads both files once into its cache."""
    vocab_bpe: str | None
    """gpt2: local path of GPT-2's vocab.bpe (with encoder_json)."""
    val_fraction: float = Field(gt=0.0, lt=0.5)
    """Share of the corpus bytes kept for validation: its tail, from the next line boundary."""
    workers: int = Field(ge=0)
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


class _ModelSection(Section):
    """The GPT's architecture: the fields of model/config.py's `Architecture` (declared and
    documented there, added below), plus `preset`. The vocabulary size comes from the trained
    tokenizer.

    With a `preset`, the architecture fields left out or null take the preset's values, and one
    that contradicts the preset is an error (a silently ignored `emb_dim: 128` would train another
    model than the file says). `drop_rate` is a training choice: the preset only gives its default.
    """

    preset: Literal[tuple(PRESETS)] | None  # type: ignore[valid-type]
    """A named architecture from model/presets.py (tiny, gpt2-small, gpt2-medium, gpt2-large,
    gpt2-xl, tiny-llama, llama-3.2-1b, llama-3.2-3b) whose values the fields left null take;
    null = every field written out."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("preset")
        if name is None or name not in PRESETS:
            return data  # no preset (fields as written), or an unknown name the field check reports
        preset = PRESETS[name]
        filled = dict(data)
        for key, value in preset.architecture().items():
            given = data.get(key)
            if given is None:
                filled[key] = value
            elif given != value or type(given) is not type(value):
                raise ValueError(
                    f"model.{key} is {given!r} but preset {name} has {value!r}: set model.{key} to null "
                    f"(or remove it) to take the preset's value, or set model.preset to null"
                )
        if data.get("drop_rate") is None:
            filled["drop_rate"] = preset.drop_rate
        return filled

    @model_validator(mode="after")
    def _valid_architecture(self) -> _ModelSection:
        Architecture(**self._architecture())  # its own checks (positive sizes, heads divide the width, ...)
        return self

    def _architecture(self) -> dict[str, Any]:
        return self.model_dump(exclude={"preset"})

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model's config: this architecture with the tokenizer's vocabulary."""
        return GPTConfig(vocab_size=vocab_size, **self._architecture())


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """The docstring under each attribute of a plain class (what pydantic reads from its own
    models with `use_attribute_docstrings`), so that a field is documented once, where declared."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    return {
        node.target.id: inspect.cleandoc(doc.value.value)
        for node, doc in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)
    }


def _architecture_fields() -> dict[str, Any]:
    """Architecture's fields as required pydantic fields, with their docstrings."""
    hints = typing.get_type_hints(Architecture)
    docs = _attribute_docstrings(Architecture)
    return {f.name: (hints[f.name], Field(description=docs[f.name])) for f in dataclasses.fields(Architecture)}


ModelConfig = create_model("ModelConfig", __base__=_ModelSection, __module__=__name__, **_architecture_fields())


class OptimConfig(Section):
    """What every training stage shares: AdamW, linear warmup + cosine decay, clipping."""

    batch_size: int = Field(ge=1)
    """Sequences per optimizer step."""
    lr: float = Field(gt=0.0)
    """Peak learning rate, reached after warmup."""
    min_lr_ratio: float = Field(ge=0.0, le=1.0)
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int = Field(ge=0)
    """Steps of linear warmup from 0 to lr."""
    weight_decay: float = Field(ge=0.0)
    """AdamW weight decay, applied to the parameters `decay` names."""
    decay: Literal["matrices", "all"]
    """Which parameters weight decay shrinks: `matrices` (GPT-2, nanoGPT: not biases, norms or
    other vectors) or `all` (the book, which passes every parameter to AdamW)."""
    betas: list[float] = Field(min_length=2, max_length=2)
    """AdamW's decay rates of its gradient mean and variance estimates, [beta1, beta2]: the
    book keeps PyTorch's [0.9, 0.999]; GPT-3 and most LLM recipes take [0.9, 0.95]."""

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: list[float]) -> list[float]:
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"each of betas must be at least 0 and below 1, got {list(betas)}")
        return betas
    grad_clip: float = Field(ge=0.0)
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    eval_interval: int = Field(ge=1)
    """Evaluate (and log validation metrics) every this many steps, and at the end."""
    device: Literal["auto", "cpu", "cuda", "mps"]
    """Where to train; `auto` takes cuda, then mps, then cpu."""
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    """`auto`: bf16 autocast on CUDA GPUs that support it (fp16 + gradient scaler on older ones)
    and on CPUs with AMX, fp32 elsewhere. `fp16` (with a gradient scaler) needs cuda or mps."""


class PretrainConfig(OptimConfig):
    max_steps: int | None = Field(ge=0)
    """Optimizer steps of pretraining, each on batch_size windows at random offsets of the
    training split (0 with `init_from`: import, evaluate and save the weights); null when
    `epochs` is set instead."""
    epochs: int | None = Field(ge=1)
    """Train for this many passes over the training split cut into fixed windows of seq_len
    tokens (stride seq_len), in a new order every epoch and the last partial batch dropped: the
    book's chapter-5 data loader. null = `max_steps` random windows. Set exactly one of the two."""
    init: Literal["gpt2", "pytorch"]
    """How random weights are drawn (init_from null): `gpt2` = N(0, 0.02) weights and zero biases
    (GPT-2, nanoGPT, Llama); `pytorch` = each layer's PyTorch default (embeddings N(0, 1), linear
    layers Kaiming-uniform with small random biases), which the book's model keeps as it sets none."""
    init_from: str | None
    """Start from GPT-2 weights in Hugging Face's format instead of random ones: a local folder
    holding `config.json` and `model.safetensors` (or `pytorch_model.bin`), or a hub name (`gpt2`,
    `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `owner/name`) downloaded once into the download cache;
    an existing folder wins over a hub name. Needs tokenize.kind gpt2 and the checkpoint's
    architecture (e.g. model.preset gpt2-small). null = random initialisation."""
    init_url: str
    """Address of one file of a hub name in `init_from`, with `{repo}`, `{revision}` and `{file}`
    filled in; point it at a mirror to download from elsewhere."""
    init_revision: str
    """Branch, tag or commit of the hub repository; a commit hash pins what `main` may change."""
    init_sha256: str | None
    """sha256 of the downloaded weights file; null = not pinned: the hash got is logged and kept
    in models/pretrain/init_from.json (provenance)."""
    init_timeout_s: float = Field(gt=0.0)
    """Seconds without data before a weights download request fails (then retried)."""
    seq_len: int | None = Field(ge=2)
    """Tokens per training window; null = model.context_length. The book trains GPT_CONFIG_124M
    (context 1,024) on 256-token windows, since the-verdict.txt's validation split is ~500 tokens."""
    eval_batches: int = Field(ge=1)
    """Validation batches averaged per evaluation."""
    sample_prompt: str
    """Prompt of the text sample generated at each evaluation."""
    sample_tokens: int = Field(ge=1)
    """Tokens generated for that sample."""
    temperature: float = Field(ge=0.0)
    """Sampling temperature of the sample (0 = greedy)."""
    top_k: int = Field(ge=0)
    """Sample among the k most likely tokens (0 = all)."""
    top_p: float = Field(gt=0.0, le=1.0)
    """Nucleus sampling: sample among the fewest most likely tokens whose probabilities add up to
    at least top_p (1.0 = off)."""
    checkpoint_interval: int = Field(ge=0)
    """Save a crash-recovery checkpoint (weights, optimizer, schedule, RNG states, step) to
    models/pretrain-checkpoints/ every this many steps and at the end; 0 = none, so a crash
    restarts from step 0. They are deleted once the stage has finished."""
    keep_checkpoints: int = Field(ge=1)
    """Newest checkpoints kept; older ones are deleted once a newer one is complete. Two survive
    a corrupt latest one."""
    resume: bool
    """Rerunning after a crash continues from the newest valid checkpoint of the same run (same
    seed, model, pretrain params and tokens); false always starts from step 0."""
    nproc: int = Field(ge=1)
    """Training processes `gptpipe pretrain` (and so the DVC stage) starts on this machine through
    torchrun, one per GPU (or CPU processes talking over gloo); 1 = one plain process. batch_size
    stays the global batch: each process trains on batch_size / nproc sequences of every step.
    Under a torchrun launch of your own (several machines) torchrun's world size counts instead."""
    distributed: Literal["ddp", "fsdp"]
    """How several processes share the model: ddp keeps a full copy per process and averages the
    gradients; fsdp (FSDP2 `fully_shard`, one unit per transformer block) shards weights, gradients
    and optimizer state across processes, for a model too large for one device. Unused with one
    process."""

    @model_validator(mode="after")
    def _one_length(self) -> "PretrainConfig":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of pretrain.max_steps (steps of random windows) and pretrain.epochs "
                             f"(passes over fixed windows, the book's way); got max_steps {self.max_steps} and "
                             f"epochs {self.epochs}: make the other null")
        return self

    @model_validator(mode="after")
    def _batch_splits_across_processes(self) -> "PretrainConfig":
        if self.batch_size % self.nproc:
            raise ValueError(f"pretrain.batch_size ({self.batch_size}) must be a multiple of pretrain.nproc "
                             f"({self.nproc}): it is the global batch, split evenly across the processes")
        return self

    global_batch_tokens: int | None = Field(ge=1)
    """Tokens per optimizer step; null = batch_size * seq_len (no accumulation). Otherwise a
    multiple of batch_size * seq_len: the gradients of that many micro-batches are summed per step
    (gradient accumulation), e.g. the 0.5 M tokens of GPT-2 on a GPU that fits 16 x 1,024."""
    compile: bool
    """Train through torch.compile: faster steps on GPUs after a compile of a minute or more; an
    error names what is missing where it cannot work (no C++ compiler, no Triton, MPS)."""
    activation_checkpointing: bool
    """Recompute each block's activations in the backward pass instead of storing them: fits a
    larger batch or model for about 30% more compute."""
    peak_flops: float | None = Field(gt=0.0)
    """One device's peak FLOP/s for the MFU figure (with nproc processes MFU is against nproc
    times it); null = the bf16 dense peak of known GPUs
    (H100, H200, A100, L4, ...; steps/training/throughput.py), and no MFU on CPU or an unknown GPU."""

    def accumulation_steps(self, seq_len: int) -> int:
        """Micro-batches per optimizer step for windows of `seq_len` tokens."""
        micro = self.batch_size * seq_len
        if self.global_batch_tokens is None:
            return 1
        if self.global_batch_tokens % micro:
            raise ValueError(
                f"pretrain.global_batch_tokens ({self.global_batch_tokens}) must be a multiple of "
                f"batch_size * seq_len = {self.batch_size} * {seq_len} = {micro} tokens per micro-batch; "
                f"e.g. {max(1, round(self.global_batch_tokens / micro)) * micro}")
        return self.global_batch_tokens // micro

    @model_validator(mode="after")
    def _init_download(self) -> "PretrainConfig":
        if not self.init_url.startswith(("http://", "https://")) or "{file}" not in self.init_url:
            raise ValueError(f"pretrain.init_url must be an http(s) address containing {{file}} (and "
                             f"usually {{repo}} and {{revision}}), got {self.init_url!r}")
        if self.init_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.init_sha256):
            raise ValueError("pretrain.init_sha256 must be 64 hex digits (`sha256sum` of a trusted copy of "
                             "the weights file)")
        return self


class LoraConfig(Section):
    rank: int = Field(ge=1)
    """Rank r of the adapter matrices."""
    alpha: float = Field(gt=0.0)
    """Scaling numerator: the update is scaled by alpha / rank."""
    dropout: float = Field(ge=0.0, lt=1.0)
    """Dropout on the adapter's input."""
    target_modules: list[str]
    """Names of the Linear layers that get adapters."""


class ClassifierConfig(OptimConfig):
    init: Literal["pretrained", "random"]
    """Start from the pretrained model, or from random weights (to measure what pretraining buys)."""
    trainable: Literal["head", "last_block", "last_two_blocks", "all", "lora"]
    """What trains: the head; the last block (or two) + final norm + head (the book's is one);
    everything; LoRA adapters + head."""
    pooling: Literal["last", "last_non_pad", "mean"]
    """Which positions classify a message: the final one (the book), the last real token, or
    the mean over real tokens."""
    class_balanced: bool
    """Draw training batches with every label equally likely (sampling with replacement)."""
    epochs: int = Field(ge=1)
    """Passes over the training split."""
    max_length: int = Field(ge=4)
    """Messages are truncated to this many tokens; at most model.context_length (checked)."""
    long_records: Literal["truncate", "error"] = "truncate"
    """Messages longer than max_length: truncate them (the count is reported) or stop with an
    error naming the first one."""
    balance: bool
    """Downsample the majority class to the minority's size before splitting (the book does)."""
    train_fraction: float = Field(gt=0.0, lt=1.0)
    """Share of messages for training."""
    val_fraction: float = Field(gt=0.0, lt=1.0)
    """Share for validation; the rest is the test split."""
    lora: LoraConfig
    """Adapter settings when trainable is `lora`."""

    @model_validator(mode="after")
    def _split_leaves_test(self) -> "ClassifierConfig":
        if self.train_fraction + self.val_fraction >= 1.0:
            raise ValueError("finetune_classifier.train_fraction + val_fraction must leave a test split (< 1.0)")
        return self


class LabelEfficiencyConfig(Section):
    """The label-efficiency curve (stage `label_efficiency`): the classifier finetuned on growing
    subsets of finetune_classifier's training split, from the pretrained model and from random
    weights, beside TF-IDF + logistic regression on the same subsets; test accuracy of each. Every
    other setting (trainable, pooling, optimizer, batch size, max_length, splits, seed, LoRA) is
    finetune_classifier's."""

    enabled: bool
    """Measure the curve; false writes a report without points and trains nothing (the book
    profiles: ten finetunings of a 124M GPT would take hours on a CPU)."""
    fractions: list[float] = Field(min_length=1)
    """Shares of the training split's messages per point, each in (0, 1], strictly increasing.
    Stratified and nested: every label keeps max(1, round(fraction x its count)) messages, and a
    larger fraction's subset holds every smaller one's."""
    min_steps: int = Field(ge=1)
    """Fewest optimizer steps per point: a point trains max(min_steps, finetune_classifier.epochs x
    ceil(subset / batch_size)) steps, since a subset of a few dozen messages would otherwise get a
    handful of updates."""

    @field_validator("fractions")
    @classmethod
    def _fractions_increase_within_one(cls, fractions: list[float]) -> list[float]:
        outside = [f for f in fractions if not 0.0 < f <= 1.0]
        if outside:
            raise ValueError(f"each fraction must be above 0 and at most 1 (a share of the training split), "
                             f"got {outside[0]} in {list(fractions)}")
        if any(b <= a for a, b in zip(fractions, fractions[1:])):
            raise ValueError(f"fractions must be strictly increasing (each point a larger subset), got {list(fractions)}")
        return fractions


class InstructConfig(OptimConfig):
    method: Literal["full", "lora"]
    """Finetune every weight, or LoRA adapters only."""
    epochs: int = Field(ge=1)
    """Passes over the training split."""
    prompt_style: Literal["alpaca", "phi3"]
    """Prompt layout: the book's Alpaca prompt, or the shorter Phi-3 chat layout."""
    mask_prompt: bool
    """Leave the instruction and input out of the loss, so only response tokens are learned
    (the book trains on the whole text; with a tiny model the mask helps)."""
    allowed_max_length: int = Field(ge=8)
    """Most tokens of prompt + response per record; at most model.context_length (checked)."""
    long_records: Literal["truncate", "error"] = "truncate"
    """Records longer than allowed_max_length: cut them so the response keeps its tokens (the input
    first, then the instruction, then the response's end; the count is reported as cut_records), or
    stop with an error naming the first one."""
    max_new_tokens: int = Field(ge=1)
    """Tokens generated per test response."""
    random_init_baseline: bool
    """Also finetune the same architecture from random weights (every weight, the same settings and
    batches) and write its test responses beside the model's, so evaluate shows what pretraining
    bought; doubles the stage's training time."""
    lora: LoraConfig
    """Adapter settings when method is `lora`."""


class PreferenceConfig(OptimConfig):
    method: Literal["full", "lora"]
    """Finetune every weight (the reference is then a frozen copy of models/instruct), or LoRA
    adapters only (the reference is the same network with its adapters disabled: no second copy)."""
    beta: float = Field(gt=0.0)
    """DPO's beta: how strongly the policy is held near the reference (the book uses 0.1); rewards
    are beta times a response's log-probability change from the reference."""
    logprob: Literal["mean", "sum"]
    """A response's log-probability: the mean over its tokens (the book) or their sum (the DPO paper)."""
    epochs: int = Field(ge=1)
    """Passes over the training split of preference pairs."""
    allowed_max_length: int = Field(ge=8)
    """Most tokens of prompt + response (each of chosen and rejected); at most model.context_length
    (checked). The prompt layout is the one models/instruct was finetuned with."""
    long_records: Literal["truncate", "error"]
    """Responses longer than allowed_max_length with their prompt: cut the prompt (input first, then
    instruction, then the response's end) and count them as cut_records, or stop with an error."""
    max_new_tokens: int = Field(ge=1)
    """Tokens generated per test response (the instruction model's and the preference-tuned one's)."""
    checkpoint_interval: int = Field(ge=0)
    """Save a crash-recovery checkpoint to models/preference-checkpoints/ every this many steps and at
    the end; 0 = none. Deleted once the stage has finished."""
    keep_checkpoints: int = Field(ge=1)
    """Newest checkpoints kept."""
    resume: bool
    """Rerunning after a crash continues from the newest valid checkpoint of the same run (same seed,
    params, preference data and instruction model); false always starts from step 0."""
    lora: LoraConfig
    """Adapter settings when method is `lora`."""


class JudgeConfig(Section):
    """An LLM that scores the instruction test responses 0-100 (the book's chapter 7), reached
    through an OpenAI-compatible chat endpoint: Ollama's, OpenAI's or any server speaking it."""

    enabled: bool
    """Score the responses; off by default, since it needs a running model server."""
    endpoint: str
    """Base URL of the API; `/chat/completions` is appended (Ollama: http://localhost:11434/v1,
    OpenAI: https://api.openai.com/v1)."""
    model: str
    """Model the endpoint serves, e.g. `llama3` (pull it first: `ollama pull llama3`)."""
    api_key_env: str | None
    """NAME of the environment variable holding the API key, sent as `Authorization: Bearer`;
    null sends none (Ollama needs none). Never put the key itself in params.yaml."""
    timeout_s: float = Field(gt=0.0)
    """Seconds to wait for one reply (a model loading on first use can take a while)."""
    max_records: int | None = Field(ge=1)
    """Judge only the first N test records, to bound time and cost; null = all of them."""

    @field_validator("endpoint")
    @classmethod
    def _http(cls, endpoint: str) -> str:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError("endpoint must start with http:// or https://")
        return endpoint

    @field_validator("api_key_env")
    @classmethod
    def _a_name_not_a_key(cls, name: str | None) -> str | None:
        # A key pasted here would end up in git, DVC and MLflow; a variable name cannot hold "-".
        if name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError("api_key_env names an environment variable (e.g. OPENAI_API_KEY), not the key itself")
        return name


class EvaluateConfig(Section):
    val_batches: int = Field(ge=1)
    """Validation batches used for the pretrained model's perplexity."""
    batch_size: int = Field(ge=1)
    """Sequences per evaluation batch."""
    judge: JudgeConfig
    """Optional LLM-as-judge scoring of the instruction responses."""


class TrackingConfig(Section):
    experiment: str
    """MLflow experiment the stage runs are recorded in."""
    log_models: bool
    """Upload each stage's model folder as an MLflow artifact."""


class Params(Section):
    """Everything params.yaml holds, one group per stage plus shared groups."""

    seed: int
    """Seed of data generation, splits, initialisation and sampling."""
    download: DownloadConfig
    tokenize: TokenizeConfig
    model: ModelConfig
    pretrain: PretrainConfig
    finetune_classifier: ClassifierConfig
    label_efficiency: LabelEfficiencyConfig
    finetune_instruct: InstructConfig
    finetune_preference: PreferenceConfig
    evaluate: EvaluateConfig
    tracking: TrackingConfig


    @model_validator(mode="after")
    def _windows_fit(self) -> "Params":
        # A length past the model's context cannot be trained on: refused here rather than
        # silently clamped to the context by the stage.
        context = self.model.context_length
        for key, length in (("pretrain.seq_len", self.pretrain.seq_len),
                            ("finetune_classifier.max_length", self.finetune_classifier.max_length),
                            ("finetune_instruct.allowed_max_length", self.finetune_instruct.allowed_max_length),
                            ("finetune_preference.allowed_max_length", self.finetune_preference.allowed_max_length)):
            if length is not None and length > context:
                raise ValueError(f"{key} ({length}) exceeds model.context_length ({context}), the most tokens the "
                                 f"model reads: set {key} to at most {context}, or raise model.context_length")
        self.pretrain.accumulation_steps(self.pretrain_seq_len)
        return self

    @property
    def pretrain_seq_len(self) -> int:
        """Tokens per pretraining window: pretrain.seq_len, or the model's context."""
        return self.pretrain.seq_len or self.model.context_length

    @model_validator(mode="after")
    def _gpt2_needs_its_tokenizer(self) -> "Params":
        preset = self.model.preset
        if preset is not None and PRESETS[preset].vocab_size is not None and self.tokenize.kind != "gpt2":
            raise ValueError(f"model.preset {preset} is a GPT-2 architecture with GPT-2's vocabulary: set "
                             f"tokenize.kind to gpt2 (it is {self.tokenize.kind}), or use preset null")
        if self.pretrain.init_from is not None and self.tokenize.kind != "gpt2":
            raise ValueError("pretrain.init_from loads GPT-2 weights, which read GPT-2's token ids: set "
                             f"tokenize.kind to gpt2 (it is {self.tokenize.kind})")
        if self.pretrain.max_steps == 0 and self.pretrain.init_from is None:
            raise ValueError("pretrain.max_steps is 0 without pretrain.init_from: a randomly initialised "
                             "model would be saved untrained; set max_steps >= 1 or give init_from")
        return self


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
            elif e["type"] == "missing":
                problems.append(f"  {key}: missing: add it to {source} (the project's params.yaml writes out "
                                f"every key with its value; steps/config.py documents each)")
            elif key.endswith(SECRET_KEYS) or not key:
                # A secret is not echoed; nor is the whole file when a check spans sections (no key).
                problems.append(f"  {key}: {e['msg']}")
            else:
                problems.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
        raise ConfigError(f"{source}: invalid parameters\n" + "\n".join(problems)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; every error names the file and the dotted key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: not found (run from the repository root, or pass --params)")
    try:
        # libyaml's loader where PyYAML has it: the same documents, read several times faster.
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
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
