"""Instruction finetuning data: read and split records, the Alpaca prompt, collate, responses."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from tqdm.auto import tqdm

from model.generate import generate
from steps.training.train import Batch

IGNORE_INDEX = -100
FIELDS = ("instruction", "input", "output")


def read_instructions(path: str | Path) -> list[dict[str, str]]:
    """A JSON list of {instruction, input, output} records; errors name the record and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of records")
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} is not an object")
        for name in FIELDS:
            if not isinstance(record.get(name), str):
                raise ValueError(f"{path}: record {i}: field {name!r} is missing or not a string")
        if not record["instruction"].strip():
            raise ValueError(f"{path}: record {i}: field 'instruction' is empty")
    return data


def split_in_order(records: Sequence[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """The book's split, in file order: 85 % train, 10 % test, the remaining 5 % validation."""
    n_train = int(len(records) * 0.85)
    n_test = int(len(records) * 0.1)
    return {
        "train": list(records[:n_train]),
        "test": list(records[n_train : n_train + n_test]),
        "val": list(records[n_train + n_test :]),
    }


PromptStyle = Literal["alpaca", "phi3"]


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


def count_long(
    items: Sequence[tuple[list[int], int]], max_length: int, long_records: str = "truncate",
    where: str = "instruction data",
) -> int:
    """How many encoded records exceed `max_length` tokens (collate truncates them); with
    `long_records: error` the first one stops the run, named."""
    long = [i for i, (ids, _) in enumerate(items) if len(ids) > max_length]
    if long and long_records == "error":
        i = long[0]
        raise ValueError(f"{where}: record {i} has {len(items[i][0])} tokens, more than allowed_max_length "
                         f"{max_length}; raise finetune_instruct.allowed_max_length or set long_records: truncate")
    return len(long)


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


@torch.no_grad()
def mean_instruction_loss(model: nn.Module, batches: list[Batch], device: torch.device) -> float:
    total, count = 0.0, 0
    for inputs, targets in batches:
        loss, _ = instruction_loss(model, (inputs.to(device), targets.to(device)))
        n = int((targets != IGNORE_INDEX).sum())  # each batch weighs by the targets it scores
        total += loss.item() * n
        count += n
    return total / max(1, count)


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
