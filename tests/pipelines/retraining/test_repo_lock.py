"""Tests for the one-run-at-a-time repository lock (pipelines/retraining/repo_lock.py)."""

import os
import subprocess
import sys
import time
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


def test_retrain_refuses_at_once_beside_a_running_dvc_repro(tmp_path: Path, capsys) -> None:
    from pipelines.__main__ import main
    from pipelines.retraining.repo_lock import running_pipeline

    repo = tmp_path / "checkout"
    repo.mkdir()
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: sleep 120\n")
    repro = subprocess.Popen([dvc, "repro"], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert running_pipeline(tmp_path / "elsewhere") is None  # only processes in the checkout count
        started = time.monotonic()
        assert main(["retrain", "--repo", str(repo)]) == 2
        assert time.monotonic() - started < 5  # was: DVC's lock timeout, then a failure blaming `download`
        err = capsys.readouterr().err
        assert f"(pid {repro.pid}) is already running the pipeline in this checkout" in err
        assert "dvc repro" in err and f"kill {repro.pid}" in err
    finally:
        repro.kill()
        repro.wait(timeout=30)
    assert running_pipeline(repo) is None


def test_what_counts_as_running_the_pipeline() -> None:
    from pipelines.retraining.repo_lock import _runs_pipeline

    assert _runs_pipeline(["/venv/bin/python", "/venv/bin/dvc", "repro", "-s", "pretrain"])
    assert _runs_pipeline(["python", "-m", "dvc", "exp", "run", "-n", "x"])
    assert not _runs_pipeline(["/venv/bin/dvc", "status"])
    assert not _runs_pipeline(["python", "-m", "pipelines", "pretrain"])
