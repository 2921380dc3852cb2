"""One retraining at a time per repository: an exclusive, non-blocking lock on a file in it."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path


class Busy(RuntimeError):
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
