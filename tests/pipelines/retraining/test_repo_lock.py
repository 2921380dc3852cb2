"""Tests for the one-run-at-a-time repository lock (pipelines/retraining/repo_lock.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.retraining.repo_lock import Busy, exclusive


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    lock = tmp_path / "state" / "retrain.lock"
    with exclusive(lock, "a retrain"):
        with pytest.raises(Busy, match=rf"retrain.lock: a retrain is already running \(pid {os.getpid()} on "):
            with exclusive(lock, "a retrain"):
                pass
    with exclusive(lock, "a retrain"):  # released on exit: the next run gets it
        pass


def test_the_lock_frees_itself_when_its_holder_dies(tmp_path: Path) -> None:
    lock = tmp_path / "retrain.lock"
    code = ("import sys, time; from pathlib import Path; from pipelines.retraining.repo_lock import exclusive\n"
            "with exclusive(Path(sys.argv[1]), 'x'):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parents[3])
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"pid {holder.pid} "):
            with exclusive(lock, "x"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert lock.is_file()
    with exclusive(lock, "x"):  # the file is still there, yet nobody holds it
        pass
