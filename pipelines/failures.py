"""How a stage command fails: once, on stderr, with the fix; the traceback goes to the stage's log.

Without this, one bad record reached the terminal about six times inside three tracebacks: Prefect's
task engine logs the failure (with its traceback) and the failed state, the flow engine both again,
then Python the exception the flow re-raises. Now:
- every stage run writes its whole log, tracebacks included, to `logs/<stage>.log` (overwritten per
  run); Prefect's run log (its UI) keeps its own records as before;
- on the terminal, Prefect's reports of a failure (records with a traceback, and the records after
  them that repeat the error's text, such as the failed states) give way to what the command prints:
  an expected error (steps/errors.py) as its message alone, exit status 2; any other (a bug) as its
  traceback, once, exit status 1;
- with GPTPIPE_DEBUG=1 (or `gptpipe --debug`) the terminal shows everything, tracebacks included.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from steps.errors import is_expected

DEBUG_ENV = "GPTPIPE_DEBUG"
LOGS = Path("logs")
EXIT_EXPECTED, EXIT_BUG = 2, 1


def debugging() -> bool:
    """GPTPIPE_DEBUG set to anything but empty, 0, false or no."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def log_path(stage: str) -> Path:
    """logs/<stage>.log; a torchrun rank other than 0 gets its own file beside it."""
    rank = os.environ.get("RANK", "0")
    return LOGS / (f"{stage}.log" if rank == "0" else f"{stage}.rank{rank}.log")


class QuietFailures(logging.Filter):
    """On the terminal only: drops Prefect's records that carry a traceback, and its later records
    that repeat such an error's first line (the failed task and flow states). The command line says
    it once instead (`StageLog.failed`)."""

    def __init__(self) -> None:
        super().__init__()
        self.errors: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        if record.exc_info and record.exc_info[1] is not None:
            first_line = str(record.exc_info[1]).strip().splitlines()[:1]
            self.errors.extend(first_line)
            return False
        message = record.getMessage()
        return not any(error in message for error in self.errors)


class StageLog:
    """One stage run's log file, and its terminal kept to one report of a failure (module docstring).
    Prefect's logging is set up first: its configuration replaces the root logger's handlers, and
    it is set up once per process (later calls leave the handlers added here in place)."""

    def __init__(self, stage: str) -> None:
        from prefect.logging.configuration import ensure_logging_setup

        ensure_logging_setup()

        self.stage, self.path = stage, log_path(stage)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = logging.FileHandler(self.path, mode="w", encoding="utf-8")
        self.file.setLevel(logging.INFO)
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.root = logging.getLogger()
        self.quiet = None if debugging() else QuietFailures()
        self.consoles = list(self.root.handlers) if self.quiet is not None else []
        for handler in self.consoles:
            handler.addFilter(self.quiet)
        self.root.addHandler(self.file)

    def failed(self, err: BaseException) -> int:
        """Write the traceback to the log file and report `err` on stderr; the exit status."""
        record = logging.LogRecord("gptpipe.failures", logging.ERROR, __file__, 0, "gptpipe %s failed",
                                   (self.stage,), (type(err), err, err.__traceback__))
        self.file.handle(record)
        if is_expected(err):
            if debugging():
                traceback.print_exception(err, file=sys.stderr)
            print(f"gptpipe {self.stage}: {err}\n(the traceback is in {self.path}; "
                  f"{DEBUG_ENV}=1 or `gptpipe --debug` prints it here)", file=sys.stderr)
            return EXIT_EXPECTED
        traceback.print_exception(err, file=sys.stderr)
        print(f"gptpipe {self.stage}: failed with {type(err).__name__} (a bug rather than bad input; "
              f"this run's log: {self.path})", file=sys.stderr)
        return EXIT_BUG

    def close(self) -> None:
        self.root.removeHandler(self.file)
        self.file.close()
        for handler in self.consoles:
            handler.removeFilter(self.quiet)
