"""Instruction finetuning data: read and split records, the Alpaca prompt, fit records to the
allowed length, collate, responses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm

from model.generate import generate
from steps.tasks.splits import instruction_splits
from steps.training.train import Batch

IGNORE_INDEX = -100
FIELDS = ("instruction", "input", "output")


def read_instructions(path: str | Path) -> list[dict[str, str]]:
    """A JSON list of {instruction, input, output} records; errors name the record and field."""
    data = read_text_records(path, FIELDS, "records")
    for i, record in enumerate(data):
        if not record["instruction"].strip():
            raise ValueError(f"{path}: record {i}: field 'instruction' is empty")
    return data


def read_text_records(path: str | Path, fields: Sequence[str], what: str, fix: str = "") -> list[dict[str, str]]:
    """A non-empty JSON list of objects whose `fields` are strings (a file `download` wrote); an error
    names the record and field, followed by `fix`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of {what}")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} is not an object")
        for name in fields:
            if not isinstance(record.get(name), str):
                raise ValueError(f"{path}: record {i}: field {name!r} is missing or not a string{fix}")
    return data


def split_in_order(records: Sequence[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """The book's split, in file order: 85 % train, 10 % test, the remaining 5 % validation."""
    sizes = instruction_splits(len(records))
    return {
        "train": list(records[:sizes.train]),
        "test": list(records[sizes.train : sizes.train + sizes.test]),
        "val": list(records[sizes.train + sizes.test :]),
    }


PromptStyle = Literal["alpaca", "phi3"]


class UnscorableRecords(ValueError):
    """Instruction records that cannot be trained on as the params stand (no response token fits, or
    a long record under `long_records: error`); the message names the params to change."""


def format_prompt(record: dict[str, str], style: PromptStyle = "alpaca") -> str:
    """The text the model answers; the input appears only when there is one.

    `alpaca` is the book's chapter 7 prompt; `phi3` is the shorter chat layout of its exercise 7.1
    (`<|user|>` ... `<|assistant|>:`), which costs fewer tokens per example.
    """
    if style == "phi3":
        text = f"<|user|>\n{record['instruction']}"
        if record.get("input"):
            text += f"\n{record['input']}"
        return text + "\n<|assistant|>:\n"
    if style != "alpaca":
        raise ValueError(f"unknown prompt style {style!r}; use alpaca or phi3")
    text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{record['instruction']}"
    )
    if record.get("input"):
        text += f"\n\n### Input:\n{record['input']}"
    return text + "\n\n### Response:\n"


def encode_records(
    tok: Tokenizer, records: Sequence[dict[str, str]], style: PromptStyle = "alpaca"
) -> list[tuple[list[int], int]]:
    """(prompt + response token ids, prompt length) per record.

    Prompt and response are encoded separately and joined, so the prompt's tokens are exactly
    those generation starts from (a joint encoding could merge the prompt's final newline into
    a response that starts with spaces).
    """
    prompts = tok.encode_batch([format_prompt(r, style) for r in records], add_special_tokens=False)
    responses = tok.encode_batch([r["output"] for r in records], add_special_tokens=False)
    return [(p.ids + r.ids, len(p.ids)) for p, r in zip(prompts, responses)]


@dataclass(frozen=True)
class Fitted:
    """Records encoded to fit the allowed length: what training reads, and what it cost."""

    items: list[tuple[list[int], int]]
    """(token ids, prompt length) per record kept."""
    cut: int
    """Records shortened: their input and instruction cut, and (when even that left no room) the
    end of their response."""


def fit_records(
    tok: Tokenizer, records: Sequence[dict[str, str]], max_length: int, style: PromptStyle = "alpaca",
    long_records: str = "truncate", where: str = "instruction data", first_index: int = 0,
) -> Fitted:
    """Encode `records` so that each fits `max_length` tokens with its response intact.

    A record that fits as it is keeps the exact encoding of `encode_records`. A longer one has its
    input cut (from the end, down to nothing), then its instruction, until the whole response and
    its end-of-text fit; when even the bare prompt leaves too little room, the response's end is
    cut (collate then scores no end-of-text for it: the answer was not over).

    A record that cannot keep one response token is one whose bare prompt (the style's fixed text)
    exceeds `max_length`: that holds for every record alike, so it is an error naming the prompt's
    size rather than a silent drop of the whole split. With `long_records: error` any record that
    does not fit as it is stops the run instead, named by its index in the file (`first_index` is
    the index of `records[0]`).
    """
    bare = _encode_prompt(tok, {"instruction": "", "input": ""}, style)
    if records and len(bare) > max_length:
        raise UnscorableRecords(
            f"{where}: none of its {len(records)} records can keep a response token within "
            f"finetune_instruct.allowed_max_length {max_length}: the {style} prompt's fixed text alone takes "
            f"{len(bare)} tokens; raise allowed_max_length (and model.context_length) or use a shorter "
            "prompt_style (phi3)")
    items, cut = [], 0
    for i, (record, (ids, n_prompt)) in enumerate(zip(records, encode_records(tok, records, style))):
        if len(ids) <= max_length:
            items.append((ids, n_prompt))
            continue
        if long_records == "error":
            raise UnscorableRecords(
                f"{where}: record {first_index + i} has {len(ids)} tokens (prompt {n_prompt} + response "
                f"{len(ids) - n_prompt}), more than finetune_instruct.allowed_max_length {max_length}; raise "
                "allowed_max_length (up to model.context_length), or set finetune_instruct.long_records: truncate "
                "to cut its input and instruction")
        response = ids[n_prompt:]
        prompt = _cut_prompt(tok, record, style, max_length - len(response))
        if prompt is not None:
            items.append((prompt + response, len(prompt)))
        else:
            # One token past max_length: collate's shift then ends the targets on a response token.
            items.append(((bare + response)[: max_length + 1], len(bare)))
        cut += 1
    return Fitted(items, cut)


def _encode_prompt(tok: Tokenizer, record: dict[str, str], style: PromptStyle) -> list[int]:
    return tok.encode(format_prompt(record, style), add_special_tokens=False).ids


def _cut_prompt(tok: Tokenizer, record: dict[str, str], style: PromptStyle, budget: int) -> list[int] | None:
    """The prompt's ids within `budget` tokens, its input cut first, then its instruction; None when
    even both cut to nothing do not fit."""
    record = {"instruction": record["instruction"], "input": record.get("input", "")}
    for field in ("input", "instruction"):
        fitted = _cut_field(tok, record, field, style, budget)
        if fitted is not None:
            return fitted
        record[field] = ""
    return None


def _cut_field(tok: Tokenizer, record: dict[str, str], field: str, style: PromptStyle,
               budget: int) -> list[int] | None:
    """The prompt with `record[field]` cut to its longest token prefix whose prompt fits `budget`
    tokens (the others as given), or None when even an empty field does not fit.

    The field is cut at a token's end within the field's own encoding, and the prompt re-encoded
    whole, so the ids are those of the cut text itself. Longer prefixes encode to longer prompts
    (near enough for a bisection: every candidate kept is checked against the budget)."""
    text = record[field]
    ends = sorted({end for _, end in tok.encode(text, add_special_tokens=False).offsets})

    def prompt(k: int) -> list[int]:
        return _encode_prompt(tok, {**record, field: text[: ends[k - 1]] if k else ""}, style)

    best = prompt(0)
    if len(best) > budget:
        return None
    lo, hi = 0, len(ends)  # prompt(lo) fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        ids = prompt(mid)
        if len(ids) <= budget:
            lo, best = mid, ids
        else:
            hi = mid - 1
    return best


def collate(
    batch: list[list[int]],
    pad_id: int,
    allowed_max_length: int,
    ignore_index: int = IGNORE_INDEX,
    prompt_lengths: Sequence[int] | None = None,
) -> Batch:
    """Pad with end-of-text and shift into (inputs, targets), as the book's custom_collate_fn.

    Every sequence gets one end-of-text appended; padding targets become `ignore_index` except
    the first end-of-text, so the model learns to stop after its answer. With `prompt_lengths`,
    the targets inside each prompt are ignored too: the loss is then the response's alone.
    """
    longest = max(len(item) + 1 for item in batch)
    inputs, targets = [], []
    for row, item in enumerate(batch):
        padded = item + [pad_id] * (longest - len(item))  # one EOT + padding
        x = torch.tensor(padded[:-1], dtype=torch.long)
        y = torch.tensor(padded[1:], dtype=torch.long)
        pads = torch.nonzero(y == pad_id).squeeze(1)
        if pads.numel() > 1:
            y[pads[1:]] = ignore_index
        if prompt_lengths is not None:
            # targets[j] is token j + 1: the first n - 1 targets are the prompt's own tokens.
            y[: max(0, prompt_lengths[row] - 1)] = ignore_index
        inputs.append(x[:allowed_max_length])
        targets.append(y[:allowed_max_length])
    return torch.stack(inputs), torch.stack(targets)  # (B, T), (B, T)


def instruction_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Mean loss over the targets that count, and the tokens the model read (for throughput:
    with `mask_prompt` the targets that count are only a small part of the work)."""
    inputs, targets = batch
    logits = model(inputs)  # (B, T, V)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
    return loss, inputs.numel()


def scored_targets(batch: Batch) -> int:
    """How many targets of a (inputs, targets) batch count in the loss."""
    return int((batch[1] != IGNORE_INDEX).sum())


class ScoredBatches:
    """The batches of `batches` that score at least one target, each pass anew (a shuffling loader
    reshuffles); the others are skipped and counted in `skipped`. A batch with nothing to score
    would make the mean loss 0/0 = NaN."""

    def __init__(self, batches: Iterable[Batch], name: str) -> None:
        self.batches = batches
        self.name = name
        self.skipped = 0

    def __iter__(self) -> Iterator[Batch]:
        scored = 0
        for batch in self.batches:
            if scored_targets(batch) == 0:
                self.skipped += 1
                continue
            scored += 1
            yield batch
        if scored == 0:  # else an endless cycle() over this would wait forever
            raise UnscorableRecords(f"{self.name}: no batch has a target to score (every target is ignore_index); "
                             "with finetune_instruct.mask_prompt true every response was cut away: raise "
                             "allowed_max_length or use a shorter prompt_style")


@torch.no_grad()
def mean_instruction_loss(model: nn.Module, batches: list[Batch], device: torch.device) -> float:
    """Mean loss per scored target over `batches`; a batch with no scored target adds nothing."""
    total, count = 0.0, 0
    for inputs, targets in batches:
        n = scored_targets((inputs, targets))  # each batch weighs by the targets it scores
        if n == 0:
            continue  # its mean loss is 0/0: it would turn the whole mean into NaN
        loss, _ = instruction_loss(model, (inputs.to(device), targets.to(device)))
        total += loss.item() * n
        count += n
    if count == 0:
        raise ValueError("no validation target to score: the validation batches are empty or wholly masked")
    return total / count


@torch.no_grad()
def generate_responses(
    model: nn.Module,
    tok: Tokenizer,
    records: Sequence[dict[str, str]],
    device: torch.device,
    eos_id: int,
    max_new_tokens: int,
    context_length: int,
    batch_size: int = 32,
    style: PromptStyle = "alpaca",
    desc: str = "responses",
) -> list[dict[str, str]]:
    """Each record plus `model_response`: greedy decoding until end-of-text (the book's shape).

    Prompts of equal token length are decoded together as one batch: no padding is needed, so
    every row gets exactly the tokens it would get alone, at a fraction of the time.
    """
    model.eval()
    prompts = [tok.encode(format_prompt(r, style), add_special_tokens=False).ids[-(context_length - 1):] for r in records]
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    answers: dict[int, str] = {}
    bar = tqdm(total=len(records), desc=desc, unit="rec", mininterval=0.5)
    for length, indices in sorted(by_length.items()):
        new_tokens = min(max_new_tokens, context_length - length)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            idx = torch.tensor([prompts[i] for i in chunk], dtype=torch.long, device=device)  # (B, T)
            out = generate(model, idx, new_tokens, context_length, eos_id=eos_id)[:, length:]  # (B, new)
            for i, ids in zip(chunk, out.tolist()):
                if eos_id in ids:
                    ids = ids[: ids.index(eos_id)]
                answers[i] = tok.decode(ids).strip()
            bar.update(len(chunk))
    bar.close()
    return [{**r, "model_response": answers[i]} for i, r in enumerate(records)]
