"""Write files so that a crash never leaves a half-written one behind (temp file + rename)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)  # atomic on POSIX when both live on one filesystem
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write `data` as strict JSON. NaN and infinities are refused (Python's json would write the
    bare tokens `NaN` / `Infinity`, which no JSON reader accepts); the error names the key."""
    where = non_finite_key(data)
    if where is not None:
        raise ValueError(f"{path}: {where} is not a finite number, which JSON cannot hold; nothing was written "
                         "(a non-finite metric means the computation that produced it failed)")
    write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def non_finite_key(data: Any, at: str = "") -> str | None:
    """Dotted path of the first NaN or infinite float inside `data` (`"value"` at the top level), or None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else (at or "value")
    if isinstance(data, dict):
        items: Iterator[tuple[str, Any]] = ((f"{at}.{k}" if at else str(k), v) for k, v in data.items())
    elif isinstance(data, (list, tuple)):
        items = ((f"{at}[{i}]", v) for i, v in enumerate(data))
    else:
        return None
    for key, value in items:
        found = non_finite_key(value, key)
        if found is not None:
            return found
    return None
