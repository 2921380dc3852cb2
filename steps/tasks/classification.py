"""SMS-style text classification: read and split the data, batch it, the loss, training, predictions."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from model.atomic import write_text
from model.checkpoint import load_model, new_model
from model.gpt import CausalLM, count_parameters
from model.heads import Pooling, Trainable, attach_classifier_head, pool, set_trainable
from steps.config import ClassifierConfig
from steps.tasks.splits import classification_splits
from steps.training.finetuning import require_examples, with_lora
from steps.training.hardware import autocast_dtype
from steps.training.train import Batch, TrainResult, TrainSettings, cycle, train


@dataclass(frozen=True)
class Example:
    label: str
    text: str


def read_labeled(path: str | Path) -> list[Example]:
    """The normalized classification file: one JSON object `{"label", "text"}` per line."""
    path = Path(path)
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                examples.append(Example(str(obj["label"]), str(obj["text"])))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: expected {{\"label\": ..., \"text\": ...}} ({err})") from None
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def write_labeled(path: str | Path, examples: Sequence[Example]) -> None:
    write_text(path, "".join(json.dumps({"label": e.label, "text": e.text}, ensure_ascii=False) + "\n"
                             for e in examples))


def read_labels(path: str | Path) -> list[str]:
    """Label names in id order, as the download stage wrote them."""
    path = Path(path)
    names = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) < 2:
        raise ValueError(f"{path}: expected a JSON list of at least two label names")
    return names


def label_names(examples: Sequence[Example]) -> list[str]:
    """Label ids follow sorted names, so ham = 0 and spam = 1 as in the book."""
    return sorted({e.label for e in examples})


def _sample(n: int, k: int, seed: int) -> np.ndarray:
    """`k` of `range(n)` exactly as pandas' `DataFrame.sample(k, random_state=seed)` picks them
    (NumPy's legacy RandomState: the first k of a permutation), so the book's splits come out
    record for record."""
    return np.random.RandomState(seed).permutation(n)[:k]


def split_examples(
    examples: Sequence[Example], seed: int, train_fraction: float, val_fraction: float, balance: bool,
    labels: Sequence[str] | None = None,
) -> dict[str, list[Example]]:
    """The book's `create_balanced_dataset` + `random_split`: optionally downsample every class to
    the smallest one's size (classes in id order, each sampled with `seed`), shuffle with `seed`,
    then cut train / val / test."""
    order = list(labels) if labels is not None else label_names(examples)
    pool = list(examples)
    if balance:
        by_label: dict[str, list[Example]] = {name: [] for name in order}
        for e in pool:
            by_label.setdefault(e.label, []).append(e)
        smallest = min(len(v) for v in by_label.values() if v)
        pool = []
        for name in order:
            rows = by_label[name]
            pool.extend(rows if len(rows) == smallest else [rows[i] for i in _sample(len(rows), smallest, seed)])
    pool = [pool[i] for i in _sample(len(pool), len(pool), seed)]
    sizes = classification_splits(len(pool), train_fraction, val_fraction)
    return {
        "train": pool[:sizes.train],
        "val": pool[sizes.train : sizes.train + sizes.val],
        "test": pool[sizes.train + sizes.val :],
    }


def min_examples(train_fraction: float, val_fraction: float) -> int:
    """The fewest examples `split_examples` cuts into three non-empty splits with these fractions."""
    n = 3
    while int(n * train_fraction) < 1 or int(n * val_fraction) < 1 or n - int(n * train_fraction) - int(n * val_fraction) < 1:
        n += 1
    return n


def check_splits(splits: dict[str, list[Example]], cfg: ClassifierConfig, where: str | Path) -> None:
    """Every split of `where`'s examples non-empty and the training split with two labels at least,
    before any training; else an error saying which finetune_classifier params to change."""
    balanced = " after balancing (finetune_classifier.balance: true keeps as many of each label as the rarest has)"
    require_examples(splits, str(where),
                     f"use at least {min_examples(cfg.train_fraction, cfg.val_fraction)} messages"
                     f"{balanced if cfg.balance else ''} for finetune_classifier.train_fraction {cfg.train_fraction} "
                     f"and val_fraction {cfg.val_fraction}, or change those fractions")
    seen = sorted({e.label for e in splits["train"]})
    if len(seen) < 2:
        raise ValueError(f"{where}: the train split holds one label only ({seen[0]!r}, "
                         f"{len(splits['train'])} messages): a classifier needs examples of two labels at least; "
                         "use more messages")


def encode_examples(
    tok: Tokenizer, examples: Sequence[Example], labels: list[str], max_length: int,
    long_records: str = "truncate", where: str = "classification data",
) -> tuple[list[tuple[list[int], int]], int]:
    """(token ids, label id) per example, and how many were longer than `max_length`: those are
    truncated, or rejected with an error naming the record when `long_records` is `error`."""
    index = {name: i for i, name in enumerate(labels)}
    encoded = tok.encode_batch([e.text for e in examples], add_special_tokens=False)
    out = []
    truncated = 0
    for i, (e, enc) in enumerate(zip(examples, encoded)):
        if e.label not in index:
            raise ValueError(f"{where}: record {i}: label {e.label!r} is not one of the model's labels {labels}")
        if len(enc.ids) > max_length:
            if long_records == "error":
                raise ValueError(f"{where}: record {i} has {len(enc.ids)} tokens, more than max_length "
                                 f"{max_length}; raise finetune_classifier.max_length or set long_records: truncate")
            truncated += 1
        out.append((enc.ids[:max_length] or [0], index[e.label]))
    return out, truncated


def collate(items: list[tuple[list[int], int]], pad_id: int) -> Batch:
    """Right-pad to the longest message: (ids (B, T), lengths (B,), labels (B,))."""
    longest = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), longest), pad_id, dtype=torch.long)
    for row, (seq, _) in enumerate(items):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    lengths = torch.tensor([len(seq) for seq, _ in items], dtype=torch.long)
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    return ids, lengths, labels


def loader(
    items: list[tuple[list[int], int]],
    batch_size: int,
    pad_id: int,
    shuffle: bool,
    seed: int,
    class_balanced: bool = False,
) -> DataLoader:
    """Batches of (ids, lengths, labels). `class_balanced` draws every class equally often
    (with replacement, one epoch = len(items) draws), which helps when one label is rare."""
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if class_balanced:
        labels = torch.tensor([label for _, label in items])
        weights = 1.0 / torch.bincount(labels).float()[labels]
        sampler = WeightedRandomSampler(weights, num_samples=len(items), replacement=True, generator=generator)
    return DataLoader(
        items,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        collate_fn=lambda batch: collate(batch, pad_id),
    )


def class_logits(model: nn.Module, batch: Batch, pooling: Pooling = "last_non_pad") -> torch.Tensor:
    ids, lengths, _ = batch
    return pool(model(ids), lengths, pooling)  # (B, K)


def classification_loss(model: nn.Module, batch: Batch, pooling: Pooling = "last_non_pad") -> tuple[torch.Tensor, int]:
    logits = class_logits(model, batch, pooling)
    return F.cross_entropy(logits.float(), batch[2]), int(batch[1].sum())


@torch.no_grad()
def predict(
    model: nn.Module, dl: DataLoader, device: torch.device, pooling: Pooling = "last_non_pad"
) -> tuple[list[int], list[int], float]:
    """(predictions, references, mean loss) over a loader; an empty loader is an error (its
    accuracy and loss would be 0/0)."""
    preds: list[int] = []
    refs: list[int] = []
    total_loss = 0.0
    for batch in dl:
        batch = tuple(t.to(device) for t in batch)
        logits = class_logits(model, batch, pooling).float()
        total_loss += F.cross_entropy(logits, batch[2], reduction="sum").item()
        preds.extend(logits.argmax(-1).tolist())
        refs.extend(batch[2].tolist())
    if not refs:
        raise ValueError("no examples to predict: the split is empty")
    return preds, refs, total_loss / len(refs)


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Share of predictions equal to their reference (at least one of each)."""
    if not references or len(predictions) != len(references):
        raise ValueError(f"accuracy of {len(predictions)} predictions against {len(references)} references")
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def initial_classifier(pretrained: str | Path, labels: list[str], init: str, seed: int) -> CausalLM:
    """The model finetuning starts from: pretrained (or freshly initialised) body + a new head.

    Seeded, so the evaluate stage can rebuild exactly this starting point to compare against.
    """
    model, _ = load_model(pretrained)
    if init == "random":
        torch.manual_seed(seed)
        model = new_model(model.cfg)
    elif init != "pretrained":
        raise ValueError(f"unknown init {init!r}; use 'pretrained' or 'random'")
    torch.manual_seed(seed)
    return attach_classifier_head(model, len(labels))


def nested_subsets(examples: Sequence[Example], fractions: Sequence[float], seed: int) -> list[list[Example]]:
    """A subset of `examples` (a training split) per fraction: stratified, nested and seeded. Each
    label's examples are permuted once, seeded by `seed` and the label's name; a fraction keeps the
    first max(1, round(fraction x n_label)) of that order (Python's round: halves go to the even
    number). So every label is in every subset, a larger fraction's subset holds every smaller
    one's, and every method compared at a fraction trains on the same examples. Examples keep
    their order in `examples`."""
    by_label: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_label.setdefault(e.label, []).append(i)
    # One generator per label: a label's order does not depend on which other labels there are.
    orders = [random.Random(f"{seed}:{label}").sample(rows, len(rows)) for label, rows in by_label.items()]
    subsets = []
    for fraction in fractions:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"a subset fraction must be above 0 and at most 1, got {fraction}")
        kept = sorted(i for order in orders for i in order[:max(1, round(fraction * len(order)))])
        subsets.append([examples[i] for i in kept])
    return subsets


def epoch_steps(n_train: int, cfg: ClassifierConfig) -> int:
    """Optimizer steps of finetune_classifier.epochs passes over `n_train` examples."""
    return cfg.epochs * math.ceil(n_train / cfg.batch_size)


@dataclass
class FittedClassifier:
    net: nn.Module
    """The trained network: the model itself, or its peft wrapper when `trainable` is lora."""
    result: TrainResult
    batches: DataLoader
    """The training loader it drew from (shuffled, seeded): predicting the train split with it
    again goes on with the same generator, as the stage always did."""
    trainable_parameters: int


def fit_classifier(
    model: CausalLM,
    items: list[tuple[list[int], int]],
    cfg: ClassifierConfig,
    seed: int,
    pad_id: int,
    device: torch.device,
    *,
    trainable: Trainable | None = None,
    steps: int | None = None,
    warmup_steps: int | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    on_metrics: Callable[[dict[str, float], int], None] | None = None,
    desc: str = "classifier",
) -> FittedClassifier:
    """Finetune a classifier (initial_classifier's) on encoded training `items` with
    finetune_classifier's settings: what trains (`trainable`, default cfg.trainable; LoRA adapters
    when lora), batches (cfg.batch_size, class_balanced, seeded shuffling), pooling, AdamW and its
    schedule, precision. `steps` defaults to cfg.epochs passes; `warmup_steps` to cfg's."""
    trainable = trainable or cfg.trainable
    set_trainable(model, trainable)
    net = with_lora(model, cfg.lora, ["out_head"]) if trainable == "lora" else model
    n_trainable = count_parameters(net, trainable_only=True)
    batches = loader(items, cfg.batch_size, pad_id, shuffle=True, seed=seed, class_balanced=cfg.class_balanced)
    settings = TrainSettings.from_config(cfg, steps if steps is not None else epoch_steps(len(items), cfg))
    if warmup_steps is not None:
        settings = replace(settings, warmup_steps=warmup_steps)
    loss_fn = partial(classification_loss, pooling=cfg.pooling)
    result = train(net, cycle(batches), loss_fn, settings, device, autocast_dtype(device, cfg.precision), evaluate,
                   on_metrics=on_metrics, desc=desc)
    return FittedClassifier(net, result, batches, n_trainable)
