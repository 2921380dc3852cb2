"""Tests for running `dvc repro` with streamed output and stage-level errors (pipelines/retraining/repro.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.retraining.repro import ReproFailed, dvc_repro, failure


@pytest.fixture
def dvc_project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A two-stage DVC project (no git): `make` writes a.txt, `use` reads it and fails if told to."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    py = sys.executable
    stages = {
        "make": {"cmd": f"{py} -c \"open('a.txt', 'w').write(open('in.txt').read())\"", "deps": ["in.txt"],
                 "outs": ["a.txt"]},
        "use": {"cmd": f"{py} use.py", "deps": ["a.txt", "use.py"], "outs": ["b.txt"]},
    }
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (tmp_path / "in.txt").write_text("ok")
    (tmp_path / "use.py").write_text(
        "import sys\ntext = open('a.txt').read()\nprint('using', text)\n"
        "if text == 'bad':\n    raise ValueError('a.txt says bad: fix in.txt')\nopen('b.txt', 'w').write(text)\n")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, env=env, check=True)
    return tmp_path, env


def test_the_output_is_streamed_and_a_stage_back_to_earlier_inputs_executes_again(dvc_project) -> None:
    root, env = dvc_project
    lines: list[str] = []
    dvc_repro(root, env=env, on_line=lines.append)
    assert "using ok" in lines  # use.py's own output
    (root / "in.txt").write_text("other")
    dvc_repro(root, env=env, on_line=lines.append)
    (root / "in.txt").write_text("ok")
    lines.clear()
    # Inputs seen before: DVC's run cache could restore the outputs; the retrain has it execute
    # (so it has this retrain's run to register).
    dvc_repro(root, env=env, on_line=lines.append)
    assert "using ok" in lines


def test_a_failing_stage_raises_with_its_own_error(dvc_project) -> None:
    root, env = dvc_project
    (root / "in.txt").write_text("bad")
    with pytest.raises(ReproFailed) as caught:
        dvc_repro(root, env=env, on_line=lambda line: None)
    assert caught.value.stage == "use"
    first = str(caught.value).splitlines()[0]
    assert first == "stage 'use' failed: ValueError: a.txt says bad: fix in.txt"
    assert "failed to reproduce 'use'" in str(caught.value)  # the output's tail follows


def test_a_failure_dvc_reports_without_a_stage_still_names_the_command() -> None:
    err = failure("dvc repro", 255, ["ERROR: 'dvc.yaml' is invalid."])
    assert err.stage is None
    assert str(err).startswith("`dvc repro` failed (exit 255): ERROR: 'dvc.yaml' is invalid.\n")


def test_the_stage_state_names_comes_first_and_unrecognised_output_says_to_rerun_by_hand(tmp_path) -> None:
    # Output in words this module does not know (DVC reworded, a stage that printed no traceback).
    tail = ["Reproduction of 'use' went wrong", "exit status 1"]
    err = failure("dvc repro", 1, tail, stage="use", root=tmp_path)
    assert err.stage == "use"
    assert str(err).splitlines()[0] == (f"stage 'use' failed (`dvc repro` exited 1); its own error is in the output "
                                        f"above, or run `dvc repro use` in {tmp_path} by hand to see it")
    unknown = failure("dvc repro", 1, tail, root=tmp_path)
    assert unknown.stage is None
    assert str(unknown).splitlines()[0] == f"`dvc repro` failed (exit 1); run `dvc repro` in {tmp_path} by hand to see why"
    assert "exit status 1" in str(unknown)  # the tail still follows
