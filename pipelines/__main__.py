"""`gptpipe` (and `python -m pipelines`, what dvc.yaml's stage commands run): the entry point.

`dvc repro` starts this module once per stage, so it imports next to nothing: a plain stage
command goes straight to the warm runner (pipelines/warm_client.py, itself import-lean), and so
does `gptpipe repro` (DVC's `repro`, which `make pipeline` runs) when a runner is up; only what
the runner does not take pays for argparse and the rest of the command line (pipelines/cli.py).
"""

from __future__ import annotations

import sys

from pipelines import STAGES
from pipelines.warm_client import hand_over


def main(argv: list[str] | None = None, warm: bool = True) -> int:
    """`warm`: run a stage, or `repro`, in a child of the warm runner (pipelines/warm.py) when it is
    enabled; the runner's child itself calls this with warm=False."""
    argv = sys.argv[1:] if argv is None else list(argv)
    request = stage_request(argv)
    if warm and request is not None:
        code = hand_over([request[0], "--params", request[1]])
        if code is not None:
            return code
    elif warm and argv[:1] == ["repro"]:
        # To a runner that is up (DVC is imported there); none is started for it: a repro that
        # finds nothing to do should not wait for one, and its first stage starts one anyway.
        code = hand_over(argv, start=False)
        if code is not None:
            return code
    from pipelines import cli

    if request is not None:  # no argparse for what it would only confirm (in every runner's child, too)
        return cli.stage_command(*request)
    return cli.cli(argv, warm=warm)


def stage_request(argv: list[str]) -> tuple[str, str] | None:
    """(stage, params file) when `argv` is a plain stage command, as dvc.yaml's are: `<stage>`,
    `<stage> --params FILE` or `<stage> --params=FILE`; None for anything else (argparse's)."""
    if not argv or argv[0] not in STAGES:
        return None
    rest = argv[1:]
    if not rest:
        return argv[0], "params.yaml"
    if len(rest) == 2 and rest[0] == "--params" and not rest[1].startswith("-"):
        return argv[0], rest[1]
    if len(rest) == 1 and rest[0].startswith("--params=") and len(rest[0]) > len("--params="):
        return argv[0], rest[0][len("--params="):]
    return None


if __name__ == "__main__":
    sys.exit(main())
