"""`gptpipe` (and `python -m pipelines`, what dvc.yaml's stage commands run): the entry point.

An ordinary process per command, so the user's environment always takes effect. Everything is
parsed by pipelines/cli.py, which imports only what the command uses.
"""

from __future__ import annotations

import atexit
import gc
import sys

from pipelines.cli import cli


def main(argv: list[str] | None = None) -> int:
    # Registered first, so it runs last at exit, after Prefect's and MLflow's own exit handlers
    # have shipped their records: the interpreter's final garbage collections then skip the
    # objects that Prefect, MLflow and torch leave behind, about 1 s of each stage process's
    # exit on 2 cores (python bench/overhead.py, "rest" column).
    atexit.register(gc.freeze)
    return cli(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
