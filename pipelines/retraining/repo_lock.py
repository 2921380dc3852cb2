"""One retraining at a time per repository: an exclusive, non-blocking lock on a file in it; and
none beside a `dvc repro` (or `dvc exp run`) someone started in the checkout by hand."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import psutil

from steps.errors import ExpectedError

# DVC commands that run the pipeline's stages and hold its project lock (.dvc/tmp/lock) meanwhile.
PIPELINE_COMMANDS = (("repro",), ("exp", "run"))


class Busy(ExpectedError, RuntimeError):
    """Another process holds the lock: the caller stops instead of running beside it."""


@contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block, or raise Busy at once.

    flock is released by the kernel when its holder exits, even on a crash or SIGKILL, so a
    lock file left on disk never blocks a later run by itself.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise Busy(f"{path}: {what} is already running ({holder}); this one stops rather than run beside it. "
                   f"Wait for that run to finish (the lock frees itself when its process ends)") from None
    try:
        os.ftruncate(fd, 0)
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def running_pipeline(root: Path) -> psutil.Process | None:
    """A `dvc repro` / `dvc exp run` process working in `root` (its working folder inside it), other
    than this process and its ancestors; None when there is none. DVC would make a second repro
    wait for its lock, then fail naming whichever stage it was at."""
    root = root.resolve()
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        info = proc.info
        if info["pid"] in mine or not _runs_pipeline(info["cmdline"] or []) or not info["cwd"]:
            continue
        if Path(info["cwd"]).resolve().is_relative_to(root):
            return proc
    return None


def _runs_pipeline(cmdline: list[str]) -> bool:
    """`dvc repro ...`, `dvc exp run ...`, also as `python -m dvc ...` or `.../bin/dvc ...`."""
    for i, arg in enumerate(cmdline):
        if Path(arg).name == "dvc" or (arg == "dvc" and i > 0 and cmdline[i - 1] == "-m"):
            rest = [a for a in cmdline[i + 1:] if not a.startswith("-")]
            return any(tuple(rest[:len(cmd)]) == cmd for cmd in PIPELINE_COMMANDS)
    return False


def refuse_beside_running_pipeline(root: Path) -> None:
    """Raise Busy, naming the process, when a pipeline already runs in `root`."""
    proc = running_pipeline(root)
    if proc is not None:
        command = " ".join(proc.info["cmdline"])
        raise Busy(f"{root}: `{command}` (pid {proc.pid}) is already running the pipeline in this checkout; "
                   f"a retrain would wait for DVC's lock and fail. Let it finish (or stop it: kill {proc.pid}), "
                   f"then run `gptpipe retrain` again")
