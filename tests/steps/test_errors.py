"""steps/errors.py: which errors are the user's to fix (printed once, with the fix)."""

import importlib

import pytest

from steps.errors import EXPECTED_ELSEWHERE, is_expected


@pytest.mark.parametrize("module, name", EXPECTED_ELSEWHERE)
def test_every_listed_error_exists_and_counts_as_expected(module, name):
    cls = getattr(importlib.import_module(module), name)  # a typo in the list would never match
    assert issubclass(cls, Exception)
    assert is_expected(cls("what to change"))


def test_training_stops_users_can_fix_are_expected():
    from steps.tasks.instruction import UnscorableRecords
    from steps.training.finetuning import TooFewExamples, require_examples
    from steps.training.train import NonFiniteLossError

    with pytest.raises(TooFewExamples) as err:
        require_examples({"train": [1, 2], "val": [], "test": [3]}, "x.jsonl", "add records")
    assert is_expected(err.value)
    assert is_expected(NonFiniteLossError("lower lr")) and is_expected(UnscorableRecords("raise allowed_max_length"))
    assert not is_expected(ValueError("a bug"))
