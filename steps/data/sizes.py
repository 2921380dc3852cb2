"""Are the datasets big enough for the stages that read them? `download` checks, before any training.

Each check derives the minimum from the params of the stage that reads the dataset, so a set too
small for its splits stops the pipeline at its first stage, with the split, its size and what to
change, instead of after pretraining. The split sizes come from steps/tasks/splits.py, which the
finetuning stages split by too (plain Python: `download` loads no torch for them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from steps.data.readers import DataError
from steps.tasks.splits import (
    INSTRUCTION_TEST_SHARE,
    INSTRUCTION_TRAIN_SHARE,
    Splits,
    classification_splits,
    instruction_splits,
)
from steps.tokenization.corpus import split_corpus

log = logging.getLogger("gptpipe.sizes")

# English text averages about 4 bytes per GPT-2 token; a smaller BPE vocabulary makes more tokens
# of the same bytes. Used only for a warning: the error relies on a token covering >= 1 byte.
BYTES_PER_TOKEN_ESTIMATE = 4
# Pool sizes tried when looking for the smallest set that fills every split.
_SEARCH_LIMIT = 100_000


def check_classification(counts: Mapping[str, int], labels: Sequence[str], train_fraction: float,
                         val_fraction: float, balance: bool, where: str) -> Splits:
    """Every label has records, and each split of finetune_classifier gets at least one record
    (train: at least one per label, so that every label can be learned)."""
    for name in labels:
        if counts.get(name, 0) == 0:
            raise DataError(f"{where}: label {name!r} has no records (download.classification.labels lists "
                            f"{list(labels)}); add records with it or remove it from the list")
    per_label = min(counts[name] for name in labels)
    pool = per_label * len(labels) if balance else sum(counts[name] for name in labels)
    splits = classification_splits(pool, train_fraction, val_fraction)
    short = splits.empty(train_needs=len(labels))
    if short is None:
        return splits
    step = len(labels) if balance else 1  # balancing keeps the same count of every label
    fits = _smallest_pool(step, lambda n: classification_splits(n, train_fraction, val_fraction)
                          .empty(train_needs=len(labels)) is None)
    balanced = f"balanced to {per_label} per label (finetune_classifier.balance), " if balance else ""
    need = (f"at least {fits} records ({fits // step} per label, balanced)" if balance
            else f"at least {fits} records") if fits else "more records"
    raise DataError(
        f"{where}: too few records for finetune_classifier: {pool} records ({balanced}{len(labels)} labels) "
        f"split by train_fraction {train_fraction} / val_fraction {val_fraction} give train {splits.train}, "
        f"validation {splits.val}, test {splits.test}, so the {short} split gets too few (every split needs "
        f"a record, train one per label); add records ({need} with these fractions) or change "
        f"finetune_classifier.train_fraction / val_fraction"
    )


def check_instructions(n: int, where: str) -> Splits:
    """Each split of finetune_instruct gets at least one record."""
    return _check_in_order(n, "finetune_instruct", where)


def check_preferences(n: int, where: str) -> Splits:
    """Each split of finetune_preference gets at least one record (it splits preference records in
    file order as finetune_instruct splits instructions, the book's 85/10/5)."""
    return _check_in_order(n, "finetune_preference", where)


def _check_in_order(n: int, stage: str, where: str) -> Splits:
    splits = instruction_splits(n)
    short = splits.empty()
    if short is None:
        return splits
    fits = _smallest_pool(1, lambda k: instruction_splits(k).empty() is None)
    raise DataError(
        f"{where}: too few records for {stage}: {n} records split in file order "
        f"({INSTRUCTION_TRAIN_SHARE:.0%} train, {INSTRUCTION_TEST_SHARE:.0%} test, the rest validation) give "
        f"train {splits.train}, validation {splits.val}, test {splits.test}, so the {short} split is empty; "
        f"add records (at least {fits})"
    )


def check_corpus(corpus: Path, val_fraction: float, seq_len: int, where: str) -> dict[str, float]:
    """The split tokenize makes leaves text in both parts, and the training part holds one
    pretraining window (seq_len + 1 tokens). Tokens are counted only after tokenize, so this is
    a bound: a token covers at least one byte, so fewer training bytes than the window's tokens
    cannot work (an error); fewer than about 4 bytes a token likely will not (a warning)."""
    try:
        train, val = split_corpus(corpus, val_fraction)
    except ValueError as err:
        raise DataError(f"{where}: {err}") from None
    window = seq_len + 1
    if train.nbytes < window:
        raise DataError(
            f"{where}: the corpus is too small to pretrain on: tokenize.val_fraction {val_fraction} leaves "
            f"{train.nbytes} bytes for training, and one training window is pretrain.seq_len (or "
            f"model.context_length) + 1 = {window} tokens, which takes at least {window} bytes (about "
            f"{window * BYTES_PER_TOKEN_ESTIMATE} for English text); add text, or lower model.context_length "
            f"or pretrain.seq_len"
        )
    if train.nbytes < window * BYTES_PER_TOKEN_ESTIMATE:
        log.warning("%s: the corpus's training part has %d bytes; one training window is %d tokens, about %d "
                    "bytes of English text (an estimate): if pretraining reports too few training tokens, "
                    "add text or lower model.context_length / pretrain.seq_len",
                    where, train.nbytes, window, window * BYTES_PER_TOKEN_ESTIMATE)
    return {"corpus_train_bytes": train.nbytes, "corpus_val_bytes": val.nbytes}


def _smallest_pool(step: int, fits: Callable[[int], bool]) -> int | None:
    """The smallest multiple of `step` for which `fits` holds (None past the search limit)."""
    return next((n for n in range(step, _SEARCH_LIMIT, step) if fits(n)), None)
