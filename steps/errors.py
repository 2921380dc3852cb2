"""The errors a user is expected to fix (bad params, bad data, an unreachable source, a folder that
cannot be written): their message says what is wrong and what to change, so the command line prints
it once, without a traceback (pipelines/failures.py). Anything else is a bug and shows its traceback."""

from __future__ import annotations


class ExpectedError(Exception):
    """Base of the errors whose message is the whole story: what is wrong, where, and the fix."""


# Expected errors defined before this base class existed, as (module, class name): each is looked up
# only when its module is loaded, since a module that was never imported cannot have raised it.
# A new error class subclasses ExpectedError instead of joining this list.
EXPECTED_ELSEWHERE: tuple[tuple[str, str], ...] = (
    ("steps.config", "ConfigError"),
    ("steps.data.readers", "DataError"),
    ("steps.data.fetch", "FetchError"),
    ("steps.data.refresh", "PinnedSourceChanged"),
    ("steps.inference.loading", "ModelSpecError"),
    ("steps.scaling.plan", "PlanError"),
    ("model.hf_gpt2", "HFFormatError"),
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
