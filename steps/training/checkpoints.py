"""Crash-safe training: numbered checkpoint folders, written atomically, verified before use, last K kept.

A checkpoint is a folder `<checkpoint dir>/step-000120/` holding

- `model.safetensors`: the trained module's weights;
- `training_state.safetensors`: optimizer, LR schedule, step, tokens seen, metric history and the
  RNG states (Python, NumPy, torch CPU, CUDA when present), in the format of a model folder's
  training state (`model.checkpoint.save_training_state`: tensors plus JSON, loading runs no code);
  a distributed run keeps one RNG state set per rank (`rng_ranks`), gathered to rank 0, which
  alone writes the folder;
- `manifest.json`, written last: the step, the run's fingerprint and the sha256 of every other file,
  so a truncated or corrupt checkpoint is detected rather than loaded.

The data position is the step itself: the training batches are a pure function of the step
(`steps.tasks.language_modeling.random_windows`), so nothing else about the data needs saving.

A checkpoint is built in a temporary folder beside its final name, fsynced, then renamed: a crash
leaves either the complete checkpoint or a temporary folder that readers ignore and the next save
removes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from model.checkpoint import TRAINING_STATE, WEIGHTS, load_training_state, save_state_dict, save_training_state
from steps.hashing import sha256_file

STATE = TRAINING_STATE
MANIFEST = "manifest.json"
_NAME = re.compile(r"step-(\d{6,})")
_TEMP_SUFFIX = ".tmp"

log = logging.getLogger("gptpipe.checkpoints")


@dataclass(frozen=True)
class CheckpointSettings:
    folder: Path
    """Where the `step-NNNNNN/` checkpoints live (not inside a DVC out: DVC deletes those on rerun)."""
    interval: int
    """Write one every this many steps, and always at the last step."""
    keep: int = 2
    """Newest checkpoints kept; two survive a corrupt latest one."""
    resume: bool = True
    """Continue from the newest valid checkpoint when one exists; False starts over."""
    fingerprint: str = ""
    """Identifies the run (config, params, data): a checkpoint from another run is never resumed."""

    def __post_init__(self) -> None:
        if self.interval < 1 or self.keep < 1:
            raise ValueError(f"checkpoint interval and keep must be >= 1 (got {self.interval}, {self.keep})")

    def due(self, step: int, max_steps: int) -> bool:
        return step % self.interval == 0 or step == max_steps


# --- RNG states -----------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Every global RNG state, as tensors and plain values (what a training state file can hold)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing --------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(folder: str | Path, step: int, model: nn.Module | dict[str, torch.Tensor], state: dict[str, Any],
                    *, fingerprint: str = "", keep: int = 2) -> Path:
    """Write `step-NNNNNN/` atomically, then delete all but the newest `keep` checkpoints.

    `model` is the trained module, or its full state dict (what a distributed run gathers)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_partial(folder)
    final = folder / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=_TEMP_SUFFIX, dir=folder))
    try:
        save_state_dict(tmp / WEIGHTS, model.state_dict() if isinstance(model, nn.Module) else model)
        save_training_state(tmp, {**state, "step": step})
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        manifest = {"step": step, "fingerprint": fingerprint, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            _fsync(path)
        _fsync(tmp)
        _replace_folder(tmp, final)
        _fsync(folder)  # makes the rename itself durable
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(folder, keep)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_folder(new: Path, target: Path) -> None:
    """Rename `new` to `target`; an existing target (a corrupt one, reached again) is moved aside first."""
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", suffix=_TEMP_SUFFIX, dir=target.parent))
        os.replace(target, stale / target.name)
        os.replace(new, target)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(new, target)


def remove_partial(folder: Path) -> None:
    """Delete temporary folders a crash left behind while writing a checkpoint."""
    for path in folder.glob(f".step-*{_TEMP_SUFFIX}"):
        shutil.rmtree(path, ignore_errors=True)


def prune(folder: str | Path, keep: int) -> None:
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def discard_checkpoints(folder: str | Path) -> None:
    """Delete the whole checkpoint folder (e.g. once the run's outputs are saved)."""
    shutil.rmtree(folder, ignore_errors=True)


# --- reading --------------------------------------------------------------------------------


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first (temporary folders are not listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def read_manifest(checkpoint: str | Path) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / MANIFEST).read_text(encoding="utf-8"))


def verify(checkpoint: str | Path) -> str | None:
    """None when the checkpoint is complete and intact, else what is wrong with it."""
    checkpoint = Path(checkpoint)
    try:
        manifest = read_manifest(checkpoint)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} ({err.__class__.__name__})"
    for name in (WEIGHTS, STATE):
        if name not in files:
            return f"{MANIFEST} lists no {name}"
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256_file(path) != expected:
            return f"{name} does not match its checksum (truncated or corrupt)"
    return None


def latest_valid(folder: str | Path) -> Path | None:
    """The newest checkpoint that verifies; each newer broken one is skipped with a warning."""
    broken: list[tuple[Path, str]] = []
    found = None
    for checkpoint in reversed(list_checkpoints(folder)):
        problem = verify(checkpoint)
        if problem is None:
            found = checkpoint
            break
        broken.append((checkpoint, problem))
    instead = f"using {found.name} instead" if found else "no earlier valid checkpoint"
    for checkpoint, problem in broken:
        log.warning("checkpoint %s is unusable: %s; %s", checkpoint, problem, instead)
    return found


def read_checkpoint(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The checkpoint's weights (on CPU) and its training state, without a module to load them into."""
    checkpoint = Path(checkpoint)
    weights = load_file(str(checkpoint / WEIGHTS), device="cpu")
    return weights, load_training_state(checkpoint)


def checkpoint_to_resume(settings: CheckpointSettings) -> Path | None:
    """The checkpoint this run continues from, or None to start over (clearing what is there).

    A checkpoint written under another fingerprint belongs to a run with other params or data:
    resuming it would mix two runs, so it is set aside with a warning and training starts fresh.
    """
    found = latest_valid(settings.folder) if settings.resume else None
    if found is not None:
        fingerprint = read_manifest(found).get("fingerprint")
        if fingerprint == settings.fingerprint:
            return found
        log.warning("checkpoint %s was written by another run (fingerprint %s, this run %s): starting fresh",
                    found, fingerprint, settings.fingerprint)
    if list_checkpoints(settings.folder):
        log.info("removing old checkpoints in %s", settings.folder)
        for old in list_checkpoints(settings.folder):
            shutil.rmtree(old, ignore_errors=True)
    return None
