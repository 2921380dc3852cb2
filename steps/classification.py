"""SMS-style text classification: read and split the data, batch it, the loss, predictions."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from model.atomic import write_text
from model.checkpoint import load_model
from model.gpt import GPTModel
from model.heads import Pooling, attach_classifier_head, pool
from steps.train import Batch


@dataclass(frozen=True)
class Example:
    label: str
    text: str


def read_labeled_tsv(path: str | Path) -> list[Example]:
    """`label<TAB>text` per line, with no quote handling (a leading `"` is part of the text)."""
    path = Path(path)
    examples = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            label, sep, text = line.partition("\t")
            if not sep or not label.strip():
                raise ValueError(f"{path}:{line_no}: expected 'label<TAB>text', found no label field")
            if not text.strip():
                raise ValueError(f"{path}:{line_no}: empty text field")
            examples.append(Example(label.strip(), text))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def label_names(examples: Sequence[Example]) -> list[str]:
    """Label ids follow sorted names, so ham = 0 and spam = 1 as in the book."""
    return sorted({e.label for e in examples})


def split_examples(
    examples: Sequence[Example], seed: int, train_fraction: float, val_fraction: float, balance: bool
) -> dict[str, list[Example]]:
    """Optionally balance classes by downsampling, shuffle, then cut train / val / test."""
    rng = random.Random(seed)
    pool = list(examples)
    if balance:
        by_label: dict[str, list[Example]] = {}
        for e in pool:
            by_label.setdefault(e.label, []).append(e)
        smallest = min(len(v) for v in by_label.values())
        pool = [e for label in sorted(by_label) for e in rng.sample(by_label[label], smallest)]
    rng.shuffle(pool)
    n_train = int(len(pool) * train_fraction)
    n_val = int(len(pool) * val_fraction)
    return {
        "train": pool[:n_train],
        "val": pool[n_train : n_train + n_val],
        "test": pool[n_train + n_val :],
    }


def encode_examples(
    tok: Tokenizer, examples: Sequence[Example], labels: list[str], max_length: int
) -> list[tuple[list[int], int]]:
    index = {name: i for i, name in enumerate(labels)}
    encoded = tok.encode_batch([e.text for e in examples], add_special_tokens=False)
    out = []
    for e, enc in zip(examples, encoded):
        if e.label not in index:
            raise ValueError(f"label {e.label!r} is not one of the model's labels {labels}")
        out.append((enc.ids[:max_length] or [0], index[e.label]))
    return out


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
    """(predictions, references, mean loss) over a loader."""
    preds: list[int] = []
    refs: list[int] = []
    total_loss = 0.0
    for batch in dl:
        batch = tuple(t.to(device) for t in batch)
        logits = class_logits(model, batch, pooling).float()
        total_loss += F.cross_entropy(logits, batch[2], reduction="sum").item()
        preds.extend(logits.argmax(-1).tolist())
        refs.extend(batch[2].tolist())
    return preds, refs, total_loss / max(1, len(refs))


def initial_classifier(pretrained: str | Path, labels: list[str], init: str, seed: int) -> GPTModel:
    """The model finetuning starts from: pretrained (or freshly initialised) body + a new head.

    Seeded, so the evaluate stage can rebuild exactly this starting point to compare against.
    """
    model, _ = load_model(pretrained)
    if init == "random":
        torch.manual_seed(seed)
        model = GPTModel(model.cfg)
    elif init != "pretrained":
        raise ValueError(f"unknown init {init!r}; use 'pretrained' or 'random'")
    torch.manual_seed(seed)
    return attach_classifier_head(model, len(labels))


def write_labeled_tsv(path: str | Path, examples: Sequence[Example]) -> None:
    write_text(path, "".join(f"{e.label}\t{e.text}\n" for e in examples))
