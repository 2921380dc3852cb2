"""End to end: `dvc repro` (what `make pipeline` runs) runs every stage, each a plain process, on tiny
params and records MLflow runs and Prefect flow runs; a second `dvc repro` then skips them all."""

from __future__ import annotations

import json
import os
from collections import Counter
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from steps import layout
from steps.data.builtin_data import instruction_families
from pipelines import prefect_server
from tests.pipelines.conftest import TINY, ran_stages, run, shrink_params

pytestmark = pytest.mark.slow

STAGES = ["download", "tokenize", "pretrain", "finetune_classifier", "label_efficiency", "finetune_instruct",
          "finetune_preference", "evaluate"]

@pytest.fixture(scope="module")
def project(project_copy):
    """A git copy of the tracked project with tiny params, and the environment to run it in."""

    return project_copy(lambda work, env: shrink_params(work))


@pytest.fixture(scope="module")
def first_repro(project):
    """`dvc repro` in the copy; its stages record to the session's local Prefect server."""
    work, env = project
    return run(["dvc", "repro"], work, env)


def test_every_stage_runs_and_writes_its_outputs(project, first_repro):
    work, _ = project
    assert ran_stages(first_repro.stdout) == STAGES
    for path in (layout.CORPUS, layout.CLASSIFICATION, layout.LABELS, layout.INSTRUCTIONS, layout.PREFERENCES,
                 layout.SOURCES, layout.TOKENIZER, layout.TRAIN_BIN, layout.VAL_BIN, layout.SUMMARY):
        assert (work / path).stat().st_size > 0, path
    for folder in (layout.PRETRAIN_MODEL, layout.CLASSIFIER_MODEL, layout.INSTRUCT_MODEL, layout.PREFERENCE_MODEL):
        for name in ("model.safetensors", "config.json", layout.MODEL_TOKENIZER):
            assert (work / folder / name).is_file(), folder / name
    assert (work / layout.PRETRAIN_MODEL / "training_state.safetensors").is_file()
    responses = json.loads((work / layout.INSTRUCT_MODEL / layout.RESPONSES).read_text())
    assert len(responses) == TINY["download"]["builtin"]["instructions_test"]
    assert all({"instruction", "input", "output", "model_response"} <= set(r) for r in responses)
    side_by_side = json.loads((work / layout.PREFERENCE_MODEL / layout.RESPONSES).read_text())
    assert len(side_by_side) == 6  # 10 % of the 60 built-in preference records
    assert all({"chosen", "rejected", "sft_response", "dpo_response"} <= set(r) for r in side_by_side)
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)


def test_every_stage_recorded_a_completed_flow_run_on_the_local_server(project, first_repro):
    """No PREFECT_API_URL in the copy's environment: each stage found the local server (none
    started a temporary one) and its flow run completed there."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    assert "PREFECT_API_URL" not in project[1]
    assert "temporary server" not in first_repro.stdout + first_repro.stderr
    server = prefect_server.running(Path(os.environ[prefect_server.HOME_ENV]))
    assert server is not None
    with SyncPrefectClient(server.api_url) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=STAGES)))
        names = {client.read_flow(run.flow_id).name for run in runs if run.state.is_completed()}
    assert names == set(STAGES)


def test_metrics_and_plots_of_every_stage(project, first_repro):
    work, _ = project
    expected = {
        "download": ["corpus_bytes", "corpus_documents", "classification_records", "instruction_records"],
        "tokenize": ["vocab_size", "train_tokens", "val_tokens"],
        "pretrain": ["train_loss", "val_loss", "val_perplexity", "unigram_val_loss"],
        "finetune_classifier": ["train_accuracy", "val_accuracy", "test_accuracy", "test_f1"],
        "finetune_instruct": ["train_loss", "val_loss", "trainable_parameters", "random_init_val_loss"],
        "finetune_preference": ["train_loss", "train_reward_margin", "val_loss", "val_reward_margin",
                                "val_reward_accuracy"],
        "evaluate": ["pretrain_val_perplexity", "classifier_test_accuracy", "classifier_start_test_accuracy",
                     "instruct_exact_match", "instruct_rougeL", "instruct_start_exact_match",
                     "instruct_random_init_exact_match", "instruct_random_init_rougeL",
                     "preference_test_reward_accuracy", "preference_test_reward_margin",
                     "preference_sft_property_rate", "preference_dpo_property_rate"],
    }
    for stage in STAGES:
        keys = expected.get(stage, [])
        metrics = json.loads((work / layout.metrics_file(stage)).read_text())
        for key in keys:
            assert isinstance(metrics[key], (int, float)), (stage, key)
        # This machine's figures sit beside the DVC metric, which the same inputs must write byte for byte.
        assert "compute_seconds" not in metrics
        assert json.loads((work / layout.timings_file(stage)).read_text())["compute_seconds"] > 0, stage
        pngs = list((work / layout.plots_dir(stage)).glob("*.png"))
        assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs), stage
    pretrain = json.loads((work / layout.metrics_file("pretrain")).read_text())
    # Even 30 tiny steps must beat the loss of a uniform guess over the vocabulary.
    assert pretrain["val_loss"] < 6.2  # ln(512) = 6.24
    assert 0.0 <= json.loads((work / layout.metrics_file("evaluate")).read_text())["classifier_test_accuracy"] <= 1.0
    summary = (work / layout.SUMMARY).read_text()
    assert "unigram" in summary and "confusion matrix" in summary
    # Exact match per kind of question: weighted by each family's test records, it is the overall figure.
    evaluate = json.loads((work / layout.metrics_file("evaluate")).read_text())
    params = yaml.safe_load((work / "params.yaml").read_text())
    sizes = params["download"]["builtin"]
    family_of = instruction_families(params["seed"], sizes["instructions_train"], sizes["instructions_test"],
                                     sizes["instructions_val"])
    responses = json.loads((work / layout.INSTRUCT_MODEL / layout.RESPONSES).read_text())
    counts = Counter(family_of[r["instruction"], r["input"]] for r in responses)
    assert len(counts) >= 3
    for model in ("instruct", "instruct_random_init"):
        weighted = sum(evaluate[f"{model}_exact_match_{family}"] * n for family, n in counts.items())
        assert weighted / len(responses) == pytest.approx(evaluate[f"{model}_exact_match"])
    assert "### Instruction exact match per kind of question (built-in test set)" in summary
    # The label-efficiency curve: TINY's two fractions of 280 training messages, in evaluate.json too.
    curve = json.loads((work / layout.metrics_file("label_efficiency")).read_text())
    assert [p["labels"] for p in curve["points"].values()] == [70, 280]
    assert all(0.0 <= p[m] <= 1.0 for p in curve["points"].values() for m in ("pretrained", "random_init", "tfidf"))
    assert curve["headline"]["labels"] == 70 and curve["full"]["labels"] == 280
    assert json.loads((work / layout.metrics_file("evaluate")).read_text())["label_efficiency"] == curve
    assert "| 70 (25%) |" in summary and "plots/label_efficiency/curve.png" in summary
    assert "| finetuned from random weights |" in summary
    scratch = json.loads((work / layout.INSTRUCT_MODEL / layout.RANDOM_INIT_RESPONSES).read_text())
    responses = json.loads((work / layout.INSTRUCT_MODEL / layout.RESPONSES).read_text())
    assert [r["instruction"] for r in scratch] == [r["instruction"] for r in responses]
    shown = subprocess.run(["dvc", "metrics", "show", "--json"], cwd=work, env=project[1],
                           capture_output=True, text=True, check=True).stdout
    assert "test_accuracy" in shown


def test_each_stage_recorded_one_mlflow_run(project, first_repro):
    work, _ = project
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gptpipe")
    every = client.search_runs([exp.experiment_id])
    runs = [r for r in every if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(STAGES)
    # Each label-efficiency point (3 methods x TINY's 2 fractions) is a run nested in the stage's.
    (curve,) = [r for r in runs if r.data.tags["stage"] == "label_efficiency"]
    points = [r for r in every if r.data.tags.get("mlflow.parentRunId") == curve.info.run_id]
    assert sorted((r.data.params["method"], r.data.params["fraction"]) for r in points) == sorted(
        (m, f) for m in ("pretrained", "random_init", "tfidf") for f in ("0.25", "1.0"))
    assert {r.data.tags["stage"] for r in points} == {"label_efficiency_point"}
    assert len(every) == len(runs) + len(points)
    for run in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["git_commit"] == commit
        assert len(tags["params_hash"]) == 16 and len(tags["data_hash"]) == 16
        assert "compute_seconds" in run.data.metrics
        assert any(k.startswith(("seed",)) for k in run.data.params)
    pretrain = next(r for r in runs if r.data.tags["stage"] == "pretrain")
    assert pretrain.data.params["pretrain.max_steps"] == "30"
    history = client.get_metric_history(pretrain.info.run_id, "val_loss")
    assert [m.step for m in history][:4] == [0, 10, 20, 30]  # per-step metrics, not just the final value
    artifacts = {a.path for a in client.list_artifacts(pretrain.info.run_id)}
    assert {"plots", "pretrain.json"} <= artifacts
    # The model is an MLflow model the run logged (pyfunc), not a plain folder among its artifacts.
    (output,) = pretrain.outputs.model_outputs
    assert client.get_logged_model(output.model_id).name == "model"


def test_second_repro_skips_everything_and_a_param_reruns_only_downstream(project, first_repro):
    """Nothing changed, nothing runs (no stage process starts). A param change reruns only what it
    affects."""
    work, env = project
    start = time.perf_counter()
    again = run(["dvc", "repro"], work, env)
    elapsed = time.perf_counter() - start
    assert ran_stages(again.stdout) == []
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout
    assert elapsed < 30, f"a no-op repro took {elapsed:.1f} s"

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["finetune_classifier"]["lr"] *= 2  # whatever the shipped value, a different one
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["dvc", "repro"], work, env)
    assert ran_stages(changed.stdout) == ["finetune_classifier", "label_efficiency", "evaluate"]


def test_a_forced_rerun_of_pretraining_leaves_what_follows_up_to_date(project, first_repro):
    """The same inputs and params write the same bytes, so rerunning a stage by force changes no hash
    in dvc.lock and nothing downstream becomes stale."""
    work, env = project
    run(["dvc", "repro"], work, env)  # whatever an earlier test left changed, done first
    lock = (work / "dvc.lock").read_text()
    forced = run(["dvc", "repro", "-f", "-s", "pretrain"], work, env)
    assert ran_stages(forced.stdout) == ["pretrain"]
    assert (work / "dvc.lock").read_text() == lock
    status = run(["dvc", "status"], work, env).stdout
    assert "Data and pipelines are up to date" in status, status


def test_new_content_under_data_local_makes_download_stale(project, first_repro):
    """`local` sources live in data/local/, a dependency of `download`: DVC notices edits there."""
    work, env = project
    assert "download" not in run(["dvc", "status", "download"], work, env).stdout
    (work / "data" / "local" / "my-texts.txt").write_text("a new document\n")
    status = run(["dvc", "status", "download"], work, env).stdout
    assert "download:" in status and "data/local" in status
    (work / "data" / "local" / "my-texts.txt").unlink()
