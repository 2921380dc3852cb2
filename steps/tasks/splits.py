"""How many records each split of a task gets: the one place the split arithmetic lives.

Plain Python (no torch): `download` checks dataset sizes with the same numbers the finetuning
stages split by (steps/data/sizes.py), without importing or depending on the training code.
"""

from __future__ import annotations

from dataclasses import dataclass

# finetune_instruct splits in file order (the book's chapter 7): 85 % train, 10 % test, the rest val.
INSTRUCTION_TRAIN_SHARE = 0.85
INSTRUCTION_TEST_SHARE = 0.1


@dataclass(frozen=True)
class Splits:
    """Records per split."""

    train: int
    val: int
    test: int

    def empty(self, train_needs: int = 1) -> str | None:
        """The first split with fewer records than it needs (train: `train_needs`), or None."""
        for name, got, needs in (("train", self.train, train_needs), ("validation", self.val, 1),
                                 ("test", self.test, 1)):
            if got < needs:
                return name
        return None


def classification_splits(n: int, train_fraction: float, val_fraction: float) -> Splits:
    """The classifier's split of a pool of `n` records (after balancing): the first
    int(n * train_fraction) train, the next int(n * val_fraction) validation, the rest test."""
    n_train = int(n * train_fraction)
    n_val = int(n * val_fraction)
    return Splits(n_train, n_val, n - n_train - n_val)


def instruction_splits(n: int) -> Splits:
    """The instruction split of `n` records in file order: 85 % train, 10 % test, the rest validation."""
    n_train = int(n * INSTRUCTION_TRAIN_SHARE)
    n_test = int(n * INSTRUCTION_TEST_SHARE)
    return Splits(n_train, n - n_train - n_test, n_test)
