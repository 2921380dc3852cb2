"""Tests for atomic file writes (model/atomic.py)."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model.atomic import atomic_path, write_json, write_text


@pytest.fixture
def umask() -> Iterator[Callable[[int], int]]:
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_text_content_and_default_permissions(tmp_path: Path, umask) -> None:
    target = tmp_path / "out.txt"
    write_text(target, "héllo\nwörld ✓\n")
    assert target.read_bytes() == "héllo\nwörld ✓\n".encode("utf-8")
    assert mode(target) == 0o644  # what open() would give with umask 022, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664), (0o077, 0o600)])
def test_permissions_follow_umask(tmp_path: Path, umask, mask: int, expected: int) -> None:
    umask(mask)
    target = tmp_path / "f.json"
    write_json(target, {"a": 1})
    assert mode(target) == expected
    # Same as a plain open() under the same umask.
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert mode(plain) == expected


def test_write_json_content_and_key_order(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "m.json"  # parents are created
    data = {"z": 1, "a": [1.5, "é"], "m": {"k": None}}
    write_json(target, data)
    text = target.read_text(encoding="utf-8")
    assert json.loads(text) == data
    assert list(json.loads(text)) == ["z", "a", "m"]  # not sorted
    assert text.endswith("}\n")
    assert '\n  "z": 1' in text  # indented


def test_overwrite_replaces_content(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    write_text(target, "old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_atomic_path_yields_temp_beside_target(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp != target
        assert tmp.name.endswith(".tmp")
        assert not target.exists()  # nothing visible while the body runs
        tmp.write_bytes(b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert not tmp.exists()


def test_failure_leaves_no_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "never.txt"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    write_text(target, "old content")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("new but broken")
            raise ValueError("half-way")
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_keyboard_interrupt_also_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "k.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_failure_when_body_never_wrote(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        with atomic_path(tmp_path / "t.txt") as tmp:
            tmp.unlink()  # e.g. a writer that removed its output
            raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_write_json_unserialisable_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("data", "key"), [
    ({"train_loss": float("nan"), "steps": 11}, "train_loss"),
    ({"rows": [{"loss": 1.0}, {"loss": float("inf")}]}, "rows[1].loss"),
    (float("-inf"), "value"),
])
def test_write_json_refuses_non_finite_numbers_naming_the_key(tmp_path: Path, data, key: str) -> None:
    # Python's json writes NaN / Infinity, which is not JSON (issue 19: reports/finetune_instruct.json).
    target = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=re.escape(f"metrics.json: {key} is not a finite number, which JSON cannot hold")):
        write_json(target, data)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def test_write_json_writes_finite_floats_and_none(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    write_json(target, {"a": 1.5e-300, "b": None, "c": [0.0, -2.5]})
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": 1.5e-300, "b": None, "c": [0.0, -2.5]}
