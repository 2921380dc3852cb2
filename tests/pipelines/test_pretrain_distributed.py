"""End to end: `dvc repro pretrain` with `pretrain.nproc: 2` trains as 2 CPU processes under torchrun
(gloo) and records one stage run, written by rank 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from steps import layout
from tests.pipelines.conftest import TINY, _merge, ran_stages, run

pytestmark = pytest.mark.slow

TWO_PROCESSES = {"pretrain": {"nproc": 2, "device": "cpu", "checkpoint_interval": 10}}


@pytest.fixture(scope="module")
def repro(project_copy):
    def tiny(work: Path, env: dict[str, str]) -> None:
        params = yaml.safe_load((work / "params.yaml").read_text())
        (work / "params.yaml").write_text(yaml.safe_dump(_merge(params, _merge(TINY, TWO_PROCESSES)), sort_keys=False))

    work, env = project_copy(tiny)
    return work, run(["dvc", "repro", "pretrain"], work, env)


def test_the_stage_runs_as_two_processes_and_rank_0_writes_the_outputs(repro):
    work, proc = repro
    assert ran_stages(proc.stdout) == ["download", "tokenize", "pretrain"]
    assert "2 processes (ddp)" in proc.stderr
    for name in ("model.safetensors", "config.json", "training_state.safetensors", layout.MODEL_TOKENIZER):
        assert (work / layout.PRETRAIN_MODEL / name).is_file(), name
    assert not (work / layout.PRETRAIN_CHECKPOINTS).exists()  # deleted once the stage succeeded
    metrics = json.loads((work / layout.metrics_file("pretrain")).read_text())
    pretrain = TINY["pretrain"]
    # Both ranks' tokens: the global batch of batch_size sequences per step.
    assert metrics["tokens_seen"] == pretrain["max_steps"] * pretrain["batch_size"] * TINY["model"]["context_length"]
    assert metrics["val_loss"] < metrics["unigram_val_loss"] + 1.0


def test_one_mlflow_run_for_the_stage(repro):
    work, _ = repro
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.stage = 'pretrain'")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.params["pretrain.nproc"] == "2"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")]
    assert steps[:4] == [0, 10, 20, 30]  # logged once per evaluation, not once per rank
