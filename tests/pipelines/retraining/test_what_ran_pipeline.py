"""What a retrain concludes ran, on the real pipeline: a tiny-params copy of the project, `dvc repro`
as the retraining flow runs it, then nothing changed, one param changed, one data file changed.
Each time: which stages ran (their MLflow runs tagged with the retrain id), which dvc.lock entries
changed, and which models the retrain would register, from which runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from pipelines.retraining.promotion import CANDIDATES
from pipelines.retraining.repro import dvc_repro
from pipelines.retraining.what_ran import WhatRan, failed_stage, read_lock, what_ran
from tests.pipelines.conftest import shrink_params
from steps.tracking import runs as tracking

pytestmark = pytest.mark.slow

STAGES = ["download", "tokenize", "pretrain", "finetune_classifier", "label_efficiency", "finetune_instruct",
          "finetune_preference", "evaluate"]
EXPERIMENT = "gptpipe"  # params.yaml's tracking.experiment
SMS = Path("data/local/sms.jsonl")


def _sms_records(n: int, seed: int) -> str:
    """A small labelled classification file of our own (a `local` source), one JSON record a line."""
    rng = random.Random(seed)
    ham = ["see you at lunch", "call me when you land", "the meeting moved to noon", "thanks for dinner"]
    spam = ["WIN a free prize now", "claim your cash reward", "urgent: your account wins", "free entry, text YES"]
    lines = []
    for i in range(n):
        label = rng.choice(["ham", "spam"])
        text = f"{rng.choice(ham if label == 'ham' else spam)} {i}"
        lines.append(json.dumps({"text": text, "label": label}))
    return "\n".join(lines) + "\n"


def _local_classification(work: Path, env: dict[str, str]) -> None:
    (work / SMS).write_text(_sms_records(300, seed=1))
    shrink_params(work, {"download": {"classification": {"source": {"kind": "local", "path": str(SMS)}}}})


@pytest.fixture(scope="module")
def project(project_copy):
    return project_copy(_local_classification)


def _retrain(work: Path, env: dict[str, str], retrain_id: str, monkeypatch) -> WhatRan:
    """What the retrain flow does around `dvc repro` (pipelines/retrain.py `reproduce`), in `work`."""
    monkeypatch.chdir(work)  # where the default MLflow store (mlflow.db) is found, as in the flow
    before = read_lock(work)
    dvc_repro(work, [], {**env, tracking.RETRAIN_ID_ENV: retrain_id}, on_line=lambda line: None,
              failed_stage=lambda: failed_stage(EXPERIMENT, retrain_id))
    return what_ran(work, before, EXPERIMENT, retrain_id)


def _registered(ran: WhatRan, retrain_id: str) -> dict[str, str]:
    """Candidate key -> stage of the run it would register; each run carries the retrain's id."""
    runs = ran.to_register(CANDIDATES)
    assert all(run.tags["retrain_id"] == retrain_id for run in runs.values())
    return {key: run.tags["stage"] for key, run in runs.items()}


def test_nothing_then_one_param_then_one_data_file(project, monkeypatch) -> None:
    work, env = project
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    first = _retrain(work, env, "r1", monkeypatch)
    assert first.ran == first.changed == STAGES
    assert _registered(first, "r1") == {"classifier": "finetune_classifier", "instruct": "finetune_instruct"}

    nothing = _retrain(work, env, "r2", monkeypatch)
    assert (nothing.ran, nothing.changed, _registered(nothing, "r2")) == ([], [], {})

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["finetune_instruct"]["lr"] = params["finetune_instruct"]["lr"] / 2
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    param = _retrain(work, env, "r3", monkeypatch)
    # The preference stage starts from the instruction model, so it reruns too (nothing registers it).
    assert param.ran == param.changed == ["finetune_instruct", "finetune_preference", "evaluate"]
    assert _registered(param, "r3") == {"instruct": "finetune_instruct"}

    (work / SMS).write_text(_sms_records(300, seed=2))
    data = _retrain(work, env, "r4", monkeypatch)
    # The corpus is unchanged, so tokenize and pretrain (and the instruct model) stay as they were;
    # the label-efficiency curve reads the classification data too.
    assert data.ran == data.changed == ["download", "finetune_classifier", "label_efficiency", "evaluate"]
    assert _registered(data, "r4") == {"classifier": "finetune_classifier"}
