"""The errors a user is expected to fix (bad params, bad data, an unreachable source, a folder that
cannot be written): their message says what is wrong and what to change, so the command line prints
it once, without a traceback (pipelines/failures.py). Anything else is a bug and shows its traceback."""

from __future__ import annotations


class ExpectedError(Exception):
    """Base of the errors whose message is the whole story: what is wrong, where, and the fix."""


# Expected errors that do not subclass ExpectedError, as (module, class name): those defined before
# it, and those of stage code, which does not import this module (it would become a DVC dependency
# of every stage). Each is looked up only when its module is loaded: a module never imported cannot
# have raised it. Other new error classes subclass ExpectedError.
EXPECTED_ELSEWHERE: tuple[tuple[str, str], ...] = (
    ("steps.config", "ConfigError"),
    ("steps.data.readers", "DataError"),
    ("steps.data.fetch", "FetchError"),
    ("steps.data.refresh", "PinnedSourceChanged"),
    ("steps.inference.loading", "ModelSpecError"),
    ("steps.scaling.plan", "PlanError"),
    ("model.hf_gpt2", "HFFormatError"),
    ("pipelines.stage", "OutputsNotWritable"),
    ("steps.training.train", "NonFiniteLossError"),
    ("steps.training.finetuning", "TooFewExamples"),
    ("steps.tasks.instruction", "UnscorableRecords"),
)


def is_expected(err: BaseException) -> bool:
    """Whether `err` is one of the errors above (its message names the fix), not a bug."""
    import sys

    if isinstance(err, ExpectedError):
        return True
    for module, name in EXPECTED_ELSEWHERE:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(err, cls):
            return True
    return False
