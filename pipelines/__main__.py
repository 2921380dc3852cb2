"""`gptpipe` (and `python -m pipelines`, what dvc.yaml's stage commands run): the entry point.

An ordinary process per command, so the user's environment always takes effect. Everything is
parsed by pipelines/cli.py, which imports only what the command uses.
"""

from __future__ import annotations

import sys

from pipelines.cli import cli


def main(argv: list[str] | None = None) -> int:
    return cli(sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
