"""Run `dvc repro` as a subprocess for the retraining flow: stream its output, and on failure raise
with the failing stage and its own error, not just DVC's "failed to reproduce".

Which stages ran is not read here: DVC's console text is for people and may change wording. The
flow learns it from the MLflow runs the stages record and from dvc.lock
(pipelines/retraining/what_ran.py). The failure message does read the output, but only to quote
it: the failing stage comes from its failed MLflow run when it opened one, and without a
recognisable error line the message says to rerun `dvc repro` by hand.
"""

from __future__ import annotations

import re
import subprocess
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Every stage DVC reruns executes its command, rather than being restored from DVC's run cache
# (results of an earlier run with the same inputs): a retrain registers the runs it made, and its
# cross-check (what_ran.py) can then hold every changed dvc.lock entry to a run of this retrain.
NO_RUN_CACHE = "--no-run-cache"
# Hints for the message only, never for what the flow decides: DVC's line naming the stage that
# failed, and the last line of a Python traceback (`steps.data.readers.DataError: ...`) or our
# CLI's error line.
DVC_FAILED = re.compile(r"failed to reproduce '([^']+)'")
ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*|gptpipe: .*)$")
TAIL = 60  # lines of output kept for the error message


class ReproFailed(RuntimeError):
    """`dvc repro` exited non-zero; `stage` names the stage that failed, when known."""

    def __init__(self, message: str, stage: str | None) -> None:
        super().__init__(message)
        self.stage = stage


def dvc_repro(root: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
              on_line: Callable[[str], None] = print, dvc: str = "dvc",
              failed_stage: Callable[[], str | None] = lambda: None) -> None:
    """Run `dvc repro --no-run-cache ARGS` in `root`, passing each output line to `on_line`.

    On failure, raise ReproFailed; `failed_stage()` is asked which stage failed (the retraining
    flow looks for the stage's FAILED MLflow run)."""
    cmd = [dvc, "repro", NO_RUN_CACHE, *args]
    proc = subprocess.Popen(cmd, cwd=root, env=None if env is None else dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=TAIL)
    with proc.stdout:
        for raw in proc.stdout:
            # tqdm redraws a bar with carriage returns: keep only what it drew last.
            line = raw.rstrip("\n").rsplit("\r", 1)[-1]
            on_line(line)
            tail.append(line)
    code = proc.wait()
    if code != 0:
        raise failure(" ".join(cmd), code, list(tail), failed_stage(), root)


def failure(cmd: str, code: int, tail: list[str], stage: str | None = None, root: Path | None = None) -> ReproFailed:
    """The error for a failed repro: the stage and its last error line when they can be told, then
    the output's tail. `stage` is the failing stage as state recorded it (None: unknown)."""
    stage = stage or _stage_dvc_named(tail)
    error = _error_line(tail)
    where = f" in {root}" if root else ""
    if stage and error:
        headline = f"stage '{stage}' failed: {error}"
    elif stage:
        headline = (f"stage '{stage}' failed (`{cmd}` exited {code}); its own error is in the output above, "
                    f"or run `dvc repro {stage}`{where} by hand to see it")
    elif error:
        headline = f"`{cmd}` failed (exit {code}): {error}"
    else:
        headline = f"`{cmd}` failed (exit {code}); run `dvc repro`{where} by hand to see why"
    shown = "\n".join(line for line in tail[-12:] if line.strip())
    return ReproFailed(f"{headline}\n--- last lines of `{cmd}` ---\n{shown}", stage)


def _stage_dvc_named(tail: list[str]) -> str | None:
    """The stage DVC's own failure line names, if the output has one."""
    return next((m.group(1) for line in reversed(tail) if (m := DVC_FAILED.search(line))), None)


def _error_line(tail: list[str]) -> str | None:
    """The stage's own error (the last exception line before DVC's failure line), else DVC's own
    `ERROR:` line (a broken dvc.yaml, a missing dependency)."""
    end = next((i for i in range(len(tail) - 1, -1, -1) if DVC_FAILED.search(tail[i])), len(tail))
    error = next((line.strip() for line in reversed(tail[:end]) if ERROR_LINE.match(line.strip())), None)
    return error or next((line.strip() for line in reversed(tail) if line.startswith("ERROR:")), None)
