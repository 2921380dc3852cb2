"""sha256 of a file's content: the one helper that pins downloads, verifies checkpoints and
fingerprints a stage's inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20
"""Bytes read at a time: files as large as GPT-2 XL's weights (6 GB) never sit in memory whole."""


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    """Hex sha256 of the file at `path`, as `sha256sum` prints it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
