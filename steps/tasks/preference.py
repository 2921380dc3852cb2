"""Preference tuning with DPO (Rafailov et al. 2023; the book's chapter 7 bonus notebook): read and
encode {instruction, input, chosen, rejected} records, batch the pairs, score responses by their
log-probability, and the DPO loss with its reward margin and accuracy.

A batch holds the chosen responses of B records followed by their rejected responses, padded
together, so that the policy reads both in one forward pass: rows 0..B-1 chosen, B..2B-1 rejected.
Prompts are encoded and cut exactly as for instruction finetuning (steps/tasks/instruction.py), so the
policy is tuned on the prompts the instruction model learned to answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from steps.tasks.instruction import (
    IGNORE_INDEX,
    PromptStyle,
    UnscorableRecords,
    collate,
    fit_records,
    read_text_records,
)
from steps.training.train import Batch, BatchStream

FIELDS = ("instruction", "input", "chosen", "rejected")
LogprobReduction = Literal["mean", "sum"]
PARAMS = "finetune_preference"


def read_preferences(path: str | Path) -> list[dict[str, str]]:
    """A JSON list of {instruction, input, chosen, rejected} records; errors name the record and field.

    A pair whose responses are the same text is read as it is: download decides what becomes of
    those (`download.preferences.identical_pairs`; the book's file has a few). Its DPO loss is ln 2
    whatever the model, so it adds no gradient."""
    return read_text_records(path, FIELDS, "preference records",
                             "; rerun the download stage (dvc repro -f -s download) to rewrite the file")


Pair = tuple[tuple[list[int], int], tuple[list[int], int]]
"""((chosen ids, prompt length), (rejected ids, prompt length)) of one record."""


@dataclass(frozen=True)
class FittedPairs:
    pairs: list[Pair]
    cut: int
    """Responses (chosen or rejected) whose prompt, or even whose end, was cut to fit."""


def fit_pairs(tok: Tokenizer, records: Sequence[dict[str, str]], max_length: int, style: PromptStyle,
              long_records: str, where: str, first_index: int = 0) -> FittedPairs:
    """Encode every record's chosen and rejected response after its prompt, each cut to fit
    `max_length` tokens as instruction finetuning cuts its records (`fit_records`)."""
    sides = []
    for side in ("chosen", "rejected"):
        as_instructions = [{"instruction": r["instruction"], "input": r["input"], "output": r[side]} for r in records]
        try:
            sides.append(fit_records(tok, as_instructions, max_length, style, long_records,
                                     f"{where}, {side} responses", first_index))
        except UnscorableRecords as err:
            # fit_records names the instruction stage's params; these limits are this stage's own.
            raise UnscorableRecords(str(err).replace("finetune_instruct.", f"{PARAMS}.")) from None
    chosen, rejected = sides
    return FittedPairs(list(zip(chosen.items, rejected.items)), chosen.cut + rejected.cut)


def collate_pairs(pairs: Sequence[Pair], pad_id: int, allowed_max_length: int) -> Batch:
    """(inputs (2B, T), targets (2B, T)): the chosen rows, then the rejected ones, padded together.

    Targets inside the prompt and in the padding are IGNORE_INDEX; each response keeps its one
    end-of-text target (the answer's end is part of the answer, as in instruction finetuning)."""
    items = [c for c, _ in pairs] + [r for _, r in pairs]
    return collate([ids for ids, _ in items], pad_id, allowed_max_length,
                   prompt_lengths=[n for _, n in items])


def fixed_batches(pairs: Sequence[Pair], batch_size: int, collate_fn: Callable[[Sequence[Pair]], Batch]) -> list[Batch]:
    """`pairs` in file order, batch_size at a time: validation and test batches."""
    return [collate_fn(pairs[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]


def pair_stream(pairs: Sequence[Pair], batch_size: int, seed: int,
                collate_fn: Callable[[Sequence[Pair]], Batch]) -> BatchStream:
    """Batches in a fresh random order each epoch, as a function of the batch number: a resumed run
    restarts the very stream an uninterrupted run would have read (train.py's BatchStream). The last
    batch of an epoch may be smaller, as a DataLoader's."""
    per_epoch = -(-len(pairs) // batch_size)

    def stream(n: int) -> Iterator[Batch]:
        while True:
            epoch, k = divmod(n, per_epoch)
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
            chosen = order[k * batch_size : (k + 1) * batch_size]
            yield collate_fn([pairs[i] for i in chosen])
            n += 1

    return stream


def response_logprobs(logits: torch.Tensor, targets: torch.Tensor, reduction: LogprobReduction) -> torch.Tensor:
    """Per row, the log-probability of its scored targets (those not IGNORE_INDEX): their mean (the
    book) or their sum (the DPO paper). (N, T, V), (N, T) -> (N,)"""
    mask = targets != IGNORE_INDEX  # (N, T)
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, T, V)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (N, T)
    total = (picked * mask).sum(-1)  # (N,)
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"unknown log-probability reduction {reduction!r}; use mean or sum")
    counts = mask.sum(-1)
    if bool((counts == 0).any()):
        raise UnscorableRecords("a response has no token to score (its prompt filled the allowed length): raise "
                                f"{PARAMS}.allowed_max_length or use a shorter prompt_style")
    return total / counts


@dataclass(frozen=True)
class DpoOutput:
    loss: torch.Tensor
    """Mean of −log σ(β·((π_c − π_r) − (ref_c − ref_r))) over the pairs; scalar."""
    chosen_rewards: torch.Tensor
    """β·(π_c − ref_c) per pair, detached. (B,)"""
    rejected_rewards: torch.Tensor
    """β·(π_r − ref_r) per pair, detached. (B,)"""

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards  # (B,)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> DpoOutput:
    """The DPO loss of (B,) log-probabilities; the rewards are the implicit ones, β times how far the
    policy moved a response's log-probability from the reference's."""
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)  # (B,)
    loss = -F.logsigmoid(beta * logits).mean()
    return DpoOutput(loss, (beta * (policy_chosen - ref_chosen)).detach(),
                     (beta * (policy_rejected - ref_rejected)).detach())


Reference = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""(policy as the loop passes it, inputs, targets) -> the reference's response log-probabilities (N,)."""


@contextlib.contextmanager
def _in_eval_mode(model: nn.Module) -> Iterator[None]:
    """The reference is the model as it was: no dropout, whatever mode the policy trains in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def adapters_disabled_reference(peft_model: nn.Module, reduction: LogprobReduction) -> Reference:
    """The reference of a LoRA policy: the same network with its adapters switched off (peft's
    `disable_adapter()`), so there is no second copy in memory."""

    @torch.no_grad()
    def reference(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with peft_model.disable_adapter(), _in_eval_mode(model):  # type: ignore[operator]
            return response_logprobs(model(inputs), targets, reduction)

    return reference


def frozen_reference(reference_model: nn.Module, reduction: LogprobReduction) -> Reference:
    """The reference of a fully finetuned policy (or of a saved one being evaluated): a separate
    model, frozen here; training passes a copy of the starting weights, since the policy moves."""
    reference_model.eval().requires_grad_(False)

    @torch.no_grad()
    def reference(_: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        reference_model.to(inputs.device)
        return response_logprobs(reference_model(inputs), targets, reduction)

    return reference


def dpo_step(model: nn.Module, batch: Batch, reference: Reference, beta: float,
             reduction: LogprobReduction) -> DpoOutput:
    """The DPO loss of one batch of pairs (chosen rows first, then rejected)."""
    inputs, targets = batch  # (2B, T), (2B, T)
    half = inputs.shape[0] // 2
    policy = response_logprobs(model(inputs), targets, reduction)  # (2B,)
    ref = reference(model, inputs, targets)  # (2B,)
    return dpo_loss(policy[:half], policy[half:], ref[:half], ref[half:], beta)


def dpo_loss_fn(reference: Reference, beta: float, reduction: LogprobReduction):
    """The loss for the training loop: (model, batch) -> (loss, tokens read, per-step metrics)."""

    def loss_fn(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
        out = dpo_step(model, batch, reference, beta, reduction)
        extras = {"reward_margin": out.margins.mean(),
                  "reward_accuracy": (out.margins > 0).float().mean()}
        return out.loss, batch[0].numel(), extras

    return loss_fn


@torch.no_grad()
def preference_metrics(model: nn.Module, batches: Sequence[Batch], reference: Reference, beta: float,
                       reduction: LogprobReduction, device: torch.device) -> dict[str, float]:
    """Over every pair of `batches`: mean DPO loss, mean reward margin, and reward accuracy (the
    share of pairs whose chosen reward is above the rejected one)."""
    losses, margins = [], []
    for inputs, targets in batches:
        out = dpo_step(model, (inputs.to(device), targets.to(device)), reference, beta, reduction)
        losses.append(out.loss * out.margins.numel())
        margins.append(out.margins)
    if not margins:
        raise ValueError("no preference pair to score: the batches are empty")
    every = torch.cat(margins)  # (pairs,)
    return {"loss": float(torch.stack(losses).sum() / every.numel()), "reward_margin": float(every.mean()),
            "reward_accuracy": float((every > 0).float().mean())}
