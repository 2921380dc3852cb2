"""What a retrain concludes ran (pipelines/retraining/what_ran.py), against real `dvc repro` runs of a
small DVC project whose stages record real MLflow runs through `stage_run`, as the pipeline's do.

The project has the pipeline's shape in miniature: `download` feeds `finetune_classifier`;
`finetune_instruct` has its own data; `evaluate` reads both models. The stages are named as the
pipeline's, so the retrain's candidates (pipelines/retraining/promotion.py) apply to it unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.retraining.promotion import CANDIDATES
from pipelines.retraining.repro import ReproFailed, dvc_repro
from pipelines.retraining.what_ran import (LockFileError, UntrackedStages, WhatRan, changed_stages, failed_stage,
                                           read_lock, what_ran)
from steps.tracking import runs as tracking

EXPERIMENT = "what-ran"
# A stage: record an MLflow run, then write `out` from its inputs and its params section; fail
# when an input says so. Only the first line of download's input matters (so a change below it
# reruns download without changing its output).
STAGE_PY = """\
import sys, yaml
from steps.tracking.runs import stage_run
name, out, inputs = sys.argv[1], sys.argv[2], sys.argv[3:]
params = yaml.safe_load(open("params.yaml"))[name]
with stage_run(name, params, "-", [], experiment="what-ran"):
    texts = [open(p).read() for p in inputs]
    if name == "download":
        texts = [t.splitlines()[0] for t in texts]
    if any("fail" in t for t in texts):
        raise ValueError(f"{name}: an input says fail")
    open(out, "w").write(repr((texts, params)))
"""
STAGES = {
    "download": (["data/sms.txt"], "raw.txt"),
    "finetune_classifier": (["raw.txt"], "classifier.txt"),
    "finetune_instruct": (["data/instructions.txt"], "instruct.txt"),
    "evaluate": (["classifier.txt", "instruct.txt"], "evaluate.txt"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite MLflow store for the module (creating one takes seconds); retrain ids keep tests apart."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def built(tmp_path_factory, store: str) -> tuple[Path, dict[str, str], WhatRan]:
    """The small project (DVC, no git) after its first retrain, the environment its `dvc repro` runs
    with, and what that first retrain concluded. Built once: each test works on a copy."""
    root = tmp_path_factory.mktemp("built") / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "sms.txt").write_text("ham\nspam\n")
    (root / "data" / "instructions.txt").write_text("say hi\n")
    (root / "stage.py").write_text(STAGE_PY)
    (root / "params.yaml").write_text(yaml.safe_dump({name: {"lr": 1} for name in STAGES}))
    stages = {name: {"cmd": f"{sys.executable} stage.py {name} {out} {' '.join(deps)}",
                     "deps": ["stage.py", *deps], "params": [name], "outs": [out]}
              for name, (deps, out) in STAGES.items()}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_", "GPTPIPE_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = store
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store)
        first = _retrain(root, env, "first")
    return root, env, first


@pytest.fixture
def project(built, tmp_path: Path, store: str, monkeypatch) -> tuple[Path, dict[str, str]]:
    """A copy of the built project for one test; MLflow's store is where what_ran looks, as in the retrain."""
    root = tmp_path / "project"
    shutil.copytree(built[0], root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", built[1]["MLFLOW_TRACKING_URI"])
    return root, built[1]


def _retrain(root: Path, env: dict[str, str], retrain_id: str, args: tuple[str, ...] = ()):
    """What the retrain flow does around one `dvc repro` (pipelines/retrain.py `reproduce`)."""
    before = read_lock(root)
    dvc_repro(root, args, {**env, tracking.RETRAIN_ID_ENV: retrain_id}, on_line=lambda line: None,
              failed_stage=lambda: failed_stage(EXPERIMENT, retrain_id))
    return what_ran(root, before, EXPERIMENT, retrain_id)


def _set_param(root: Path, stage: str, value: int) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[stage]["lr"] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.mark.slow
def test_nothing_then_one_param_then_one_data_file(built, project, request) -> None:
    first = built[2]
    assert first.ran == first.changed == list(STAGES)
    assert sorted(first.to_register(CANDIDATES)) == ["classifier", "instruct"]
    assert first.runs["finetune_classifier"].tags["retrain_id"] == "first"

    root, env = project
    rid = request.node.name[:30]

    nothing = _retrain(root, env, f"{rid}-2")
    assert (nothing.ran, nothing.changed, nothing.to_register(CANDIDATES)) == ([], [], {})

    _set_param(root, "finetune_instruct", 2)
    param = _retrain(root, env, f"{rid}-3")
    assert param.ran == param.changed == ["finetune_instruct", "evaluate"]
    registered = param.to_register(CANDIDATES)
    assert list(registered) == ["instruct"]
    run = registered["instruct"]
    assert (run.tags["stage"], run.tags["retrain_id"], run.params["lr"]) == ("finetune_instruct", f"{rid}-3", "2")

    (root / "data" / "sms.txt").write_text("spam\nham\n")
    data = _retrain(root, env, f"{rid}-4")
    assert data.ran == data.changed == ["download", "finetune_classifier", "evaluate"]
    assert list(data.to_register(CANDIDATES)) == ["classifier"]


@pytest.mark.slow
def test_a_stage_whose_output_did_not_change_stops_the_rerun_there(project, request) -> None:
    root, env = project
    rid = request.node.name[:30]
    (root / "data" / "sms.txt").write_text("ham\nsomething else\n")  # download keeps the first line only
    ran = _retrain(root, env, f"{rid}-2")
    assert ran.ran == ran.changed == ["download"] and ran.to_register(CANDIDATES) == {}


@pytest.mark.slow
def test_a_forced_rerun_with_the_same_result_ran_though_dvc_lock_is_unchanged(project, request) -> None:
    root, env = project
    rid = request.node.name[:30]
    forced = _retrain(root, env, f"{rid}-2", ("--force", "--single-item", "download"))
    assert forced.ran == ["download"] and forced.changed == []


@pytest.mark.slow
def test_a_stage_that_recorded_its_run_elsewhere_is_an_error_naming_it(project, request, tmp_path) -> None:
    root, env = project
    rid = request.node.name[:30]
    elsewhere = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'other.db'}"}
    _set_param(root, "finetune_instruct", 2)
    with pytest.raises(UntrackedStages, match=r"dvc.lock shows that `dvc repro` reran finetune_instruct, evaluate, "
                                              r"but MLflow experiment 'what-ran' at sqlite:///.* has no finished run "
                                              r"of them tagged retrain_id=.*-1: .*MLFLOW_TRACKING_URI"):
        _retrain(root, elsewhere, f"{rid}-1")


@pytest.mark.slow
def test_a_failing_stage_is_named_from_its_failed_mlflow_run_with_its_own_error(project, request) -> None:
    root, env = project
    rid = request.node.name[:30]
    (root / "data" / "instructions.txt").write_text("fail\n")
    with pytest.raises(ReproFailed) as caught:
        _retrain(root, env, f"{rid}-2")
    assert caught.value.stage == "finetune_instruct"
    assert str(caught.value).splitlines()[0] == \
        "stage 'finetune_instruct' failed: ValueError: finetune_instruct: an input says fail"
    assert failed_stage(EXPERIMENT, "first") is None  # the first retrain failed nothing


def test_dvc_lock_entries_compare_by_their_hashes(tmp_path) -> None:
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "a": {"cmd": "x", "outs": [{"path": "o", "md5": "1"}]},
        "b": {"cmd": "y", "outs": [{"path": "p", "md5": "2"}]}}}))
    before = read_lock(tmp_path)
    after = {**before, "b": {"cmd": "y", "outs": [{"path": "p", "md5": "3"}]}, "c": {"cmd": "z"}}
    assert changed_stages(before, after) == ["b", "c"]
    assert read_lock(tmp_path / "nowhere") == {}


def test_a_broken_dvc_lock_is_named_with_the_fix(tmp_path) -> None:
    (tmp_path / "dvc.lock").write_text("stages: [a, b]\n")
    with pytest.raises(LockFileError, match=r"dvc.lock: no `stages` mapping .*git checkout dvc.lock"):
        read_lock(tmp_path)
    (tmp_path / "dvc.lock").write_text("stages: {a: [\n")
    with pytest.raises(LockFileError, match=r"dvc.lock: not valid YAML"):
        read_lock(tmp_path)
