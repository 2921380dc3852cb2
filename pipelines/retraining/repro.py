"""Run `dvc repro` as a subprocess: stream its output, tell which stages ran, and on failure raise
with the failing stage's own error, not just DVC's "failed to reproduce"."""

from __future__ import annotations

import re
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

RAN = re.compile(r"^Running stage '([^']+)'")
FAILED = re.compile(r"failed to reproduce '([^']+)'")
# The last line of a Python traceback (`steps.data.readers.DataError: ...`) or our CLI's error line.
ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*|gptpipe: .*)$")
TAIL = 60  # lines of output kept for the error message


class ReproFailed(RuntimeError):
    """`dvc repro` exited non-zero; `stage` names the stage that failed when DVC said so."""

    def __init__(self, message: str, stage: str | None) -> None:
        super().__init__(message)
        self.stage = stage


def dvc_repro(root: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
              on_line: Callable[[str], None] = print, dvc: str = "dvc") -> list[str]:
    """Run `dvc repro ARGS` in `root`, passing each output line to `on_line`; the stages it ran."""
    cmd = [dvc, "repro", *args]
    proc = subprocess.Popen(cmd, cwd=root, env=None if env is None else dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    assert proc.stdout is not None
    ran: list[str] = []
    tail: deque[str] = deque(maxlen=TAIL)
    with proc.stdout:
        for raw in proc.stdout:
            # tqdm redraws a bar with carriage returns: keep only what it drew last.
            line = raw.rstrip("\n").rsplit("\r", 1)[-1]
            on_line(line)
            tail.append(line)
            if match := RAN.match(line):
                ran.append(match.group(1))
    code = proc.wait()
    if code != 0:
        raise failure(" ".join(cmd), code, list(tail))
    return ran


def failure(cmd: str, code: int, tail: list[str]) -> ReproFailed:
    """The error to raise for a failed repro: the stage, its last error line, then the output's tail."""
    stage = next((m.group(1) for line in reversed(tail) if (m := FAILED.search(line))), None)
    end = next((i for i in range(len(tail) - 1, -1, -1) if FAILED.search(tail[i])), len(tail))
    error = next((line.strip() for line in reversed(tail[:end]) if ERROR_LINE.match(line.strip())), None)
    if error is None:  # DVC itself failed (a broken dvc.yaml, a missing dependency): its own words
        error = next((line.strip() for line in reversed(tail) if line.startswith("ERROR:")), None)
    where = f"stage '{stage}' failed" if stage else f"`{cmd}` failed (exit {code})"
    headline = f"{where}: {error}" if error else where
    shown = "\n".join(line for line in tail[-12:] if line.strip())
    return ReproFailed(f"{headline}\n--- last lines of `{cmd}` ---\n{shown}", stage)
