"""MLflow tracking: one run per stage with params, metrics, artifacts and tags, in a local store."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import psutil
import pytest
from mlflow.tracking import MlflowClient

from steps.tracking import runs as tracking
from tests.steps.inference import tiny_models


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_default_store_is_sqlite_in_the_root(store):
    assert tracking.tracking_uri(store) == f"sqlite:///{store.resolve() / 'mlflow.db'}"


def test_env_var_overrides_the_store(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(store) == "http://127.0.0.1:5999"


def test_stage_run_records_params_metrics_artifacts_and_tags(store):
    data = store / "input.txt"
    data.write_text("hello")
    artifact = store / "report.json"
    artifact.write_text("{}")
    with tracking.stage_run("pretrain", {"pretrain.lr": 0.001, "lora.targets": ["a", "b"]},
                            params_hash="abc123", inputs=[data], experiment="exp") as run:
        run.log_metrics({"loss": 2.0, "note": "not a number"}, step=1)
        run.log_metrics({"loss": 1.0}, step=2)
        run.log_artifact(artifact)
    assert (store / "mlflow.db").is_file()
    client = MlflowClient(tracking.tracking_uri(store))
    (found,) = tracking.fetch_runs("exp", stage="pretrain", root=store)
    assert found.run_id == run.run_id
    assert found.status == "FINISHED"
    assert found.params == {"pretrain.lr": "0.001", "lora.targets": "a,b"}
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [2.0, 1.0]
    tags = found.tags
    assert tags["stage"] == "pretrain" and tags["params_hash"] == "abc123"
    assert tags["data_hash"] == tracking.data_hash([data]) and len(tags["data_hash"]) == 16
    assert "git_commit" in tags
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["report.json"]
    # Artifacts land beside the store, not wherever the process happened to start.
    assert (store / "mlartifacts").is_dir()


def test_the_stage_summary_is_mlflows_latest_value(store):
    """A summary logged without a step lands at the highest step so far: MLflow shows it, not the
    last training window's value of the same metric."""
    with tracking.stage_run("pretrain", {}, "h", [], experiment="exp") as run:
        run.log_metrics({"tokens_per_s": 900.0}, step=10)
        run.log_metrics({"tokens_per_s": 1200.0}, step=20)
        run.log_metrics({"tokens_per_s": 1000.0, "val_loss": 2.5})
    (found,) = tracking.fetch_runs("exp", stage="pretrain", root=store)
    assert found.metrics["tokens_per_s"] == 1000.0
    history = MlflowClient(tracking.tracking_uri(store)).get_metric_history(run.run_id, "tokens_per_s")
    assert [(m.step, m.value) for m in history] == [(10, 900.0), (20, 1200.0), (20, 1000.0)]


def test_per_step_metrics_reach_the_store_in_batches_each_with_its_own_step_and_time(store, monkeypatch):
    """One SQLite transaction per logging step cost training time: per-step metrics wait for the
    next batch (METRIC_FLUSH_S), a summary or the run's end; each keeps its step and timestamp."""
    batches = []
    real = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch",
                        lambda self, run_id, metrics=(), **kw: batches.append(len(metrics)) or real(self, run_id, metrics, **kw))
    with tracking.stage_run("pretrain", {}, "h", [], experiment="exp") as run:
        logged = len(batches)
        for step in range(1, 31):
            run.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step=step)
        assert len(batches) == logged  # nothing stored yet: within METRIC_FLUSH_S
        assert run.seconds > 0
        monkeypatch.setattr(tracking, "METRIC_FLUSH_S", 0.0)
        run.log_metrics({"loss": 0.01}, step=31)  # the interval has passed: all 31 steps, one batch
        assert batches[logged:] == [61]
        run.log_metrics({"loss": 0.02}, step=32)
    assert batches[-1] == 1  # and at the run's end, what was left
    history = MlflowClient(tracking.tracking_uri(store)).get_metric_history(run.run_id, "loss")
    assert [m.step for m in history] == list(range(1, 33))
    stamps = [m.timestamp for m in history]
    assert stamps == sorted(stamps)


def test_a_failed_stage_keeps_the_metrics_it_logged_before_failing(store):
    with pytest.raises(RuntimeError):
        with tracking.stage_run("pretrain", {}, "h", [], experiment="exp") as run:
            run.log_metrics({"loss": 2.0}, step=1)
            raise RuntimeError("out of memory")
    history = MlflowClient(tracking.tracking_uri(store)).get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0)]


def test_a_failing_stage_marks_its_run_failed(store):
    with pytest.raises(RuntimeError):
        with tracking.stage_run("tokenize", {}, "h", [], experiment="exp"):
            raise RuntimeError("boom")
    (found,) = tracking.fetch_runs("exp", stage="tokenize", status=None, root=store)
    assert found.status == "FAILED"


def test_data_hash_changes_with_content(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one")
    first = tracking.data_hash([tmp_path])
    f.write_text("two")
    assert tracking.data_hash([tmp_path]) != first


# --- reading runs back (fixture `mlflow_store`: tests/conftest.py) ---------------------------------

def test_fetch_runs_filters_by_stage_tag_ids_and_status(mlflow_store):
    ids = mlflow_store.ids
    classifier = tracking.fetch_runs("cmp", stage="finetune_classifier")
    # Newest first; the failed run is left out by default.
    assert [r.tags["dvc_exp"] for r in classifier] == ["cls-lora", "cls-block", "cls-head"]
    assert [r.tags["dvc_exp"] for r in tracking.fetch_runs("cmp", tags={"dvc_exp": "cls-block"})] == ["cls-block"]
    assert [r.run_id for r in tracking.fetch_runs("cmp", run_ids=[ids["cls-head"], ids["inst-lora"]])] == [
        ids["inst-lora"], ids["cls-head"]]
    assert len(tracking.fetch_runs("cmp", stage="finetune_classifier", status=None)) == 4
    assert len(tracking.fetch_runs("cmp", max_runs=2)) == 2
    assert tracking.fetch_runs("cmp", stage="pretrain") == []
    assert tracking.fetch_runs("no-such-experiment") == []


def test_fetched_runs_are_plain_data_with_the_stage_summary_as_final_value(mlflow_store):
    (run,) = tracking.fetch_runs("cmp", tags={"dvc_exp": "cls-head"})
    assert run.status == "FINISHED" and run.name == "finetune_classifier"
    assert run.params["finetune_classifier.trainable"] == "head"
    assert run.tags["stage"] == "finetune_classifier" and "params_hash" in run.tags
    assert run.seconds is not None and run.seconds >= 0
    # The summary logged after training (not the last window's 1100 tokens/s) is the final value.
    assert run.metrics["tokens_per_s"] == 900.0 and run.metrics["train_loss"] == 0.25
    histories = tracking.metric_histories(run.run_id, ["val_loss", "not_logged"])
    assert histories == {"val_loss": [(0, 0.7), (5, 0.5), (10, 0.4), (10, 0.4)]}


def test_a_missing_local_store_is_not_created(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.fetch_runs("gptpipe", root=tmp_path) == []
    assert tracking.experiment_names(root=tmp_path) == []
    assert not (tmp_path / "mlflow.db").exists()


def test_filter_values_with_both_quotes_are_rejected(mlflow_store):
    with pytest.raises(ValueError, match="quote"):
        tracking.fetch_runs("cmp", tags={"note": "it's \"odd\""})
    assert tracking.fetch_runs("cmp", tags={"note": "it's"}) == []


# --- Model Registry --------------------------------------------------------------------------------


def _run_with_model(store, stage="finetune_classifier", log_models=True) -> str:
    folder = store / "models" / "classifier"
    if not folder.is_dir():
        tiny_models.classifier_folder(store / "models", tiny_models.tokenizer())
    with tracking.stage_run(stage, {}, "h", [], experiment="exp", log_models=log_models) as run:
        run.log_model_folder(folder)
    return run.run_id


def test_registered_versions_point_at_the_runs_model_folder(store):
    first, second = _run_with_model(store), _run_with_model(store)
    v1 = tracking.register_version("gm", first, {"score": "0.5"}, root=store)
    v2 = tracking.register_version("gm", second, {"score": "0.6"}, root=store)
    assert (v1.version, v2.version) == ("1", "2")
    assert v1.run_id == first and v1.tags == {"score": "0.5"} and v1.uri == "models:/gm/1"
    client = MlflowClient(tracking.tracking_uri(store))
    assert sorted(str(v.version) for v in client.search_model_versions("name = 'gm'")) == ["1", "2"]
    got = Path(mlflow.artifacts.download_artifacts(artifact_uri=v2.uri, dst_path=str(store / "dl")))
    assert (got / "MLmodel").is_file()  # an MLflow model (steps/tracking/pyfunc_models.py) holding the folder
    config = (store / "models" / "classifier" / "config.json").read_text()
    assert (got / "artifacts" / "model_folder" / "config.json").read_text() == config


def test_runs_that_logged_a_plain_model_folder_still_register(store):
    """Runs from before models were MLflow models hold a plain model/ folder: that is the version."""
    folder = store / "old"
    folder.mkdir()
    (folder / "config.json").write_text('{"emb_dim": 8}')
    with tracking.stage_run("finetune_classifier", {}, "h", [], experiment="exp") as run:
        run.log_artifacts(folder, artifact_path="model")
    version = tracking.register_version("gm", run.run_id, {}, root=store)
    got = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.uri, dst_path=str(store / "dl")))
    assert (got / "config.json").read_text() == '{"emb_dim": 8}'


def test_aliases_move_and_unknown_ones_read_as_none(store):
    assert tracking.version_by_alias("gm", "champion", root=store) is None  # no store yet
    run_id = _run_with_model(store)
    assert tracking.version_by_alias("gm", "champion", root=store) is None  # no model yet
    tracking.register_version("gm", run_id, {}, root=store)
    tracking.register_version("gm", run_id, {}, root=store)
    assert tracking.version_by_alias("gm", "champion", root=store) is None  # no alias yet
    tracking.set_alias("gm", "champion", "1", root=store)
    assert tracking.version_by_alias("gm", "champion", root=store).version == "1"
    tracking.set_alias("gm", "champion", "2", root=store)
    champion = tracking.version_by_alias("gm", "champion", root=store)
    assert champion.version == "2" and champion.aliases == ("champion",)
    client = MlflowClient(tracking.tracking_uri(store))
    assert client.get_model_version("gm", "1").aliases == []
    tracking.tag_version("gm", "2", {"promotion": "promoted", "score": 0.7}, root=store)
    assert client.get_model_version("gm", "2").tags == {"promotion": "promoted", "score": "0.7"}


def test_a_run_without_a_logged_model_cannot_be_registered(store):
    run_id = _run_with_model(store, log_models=False)
    with pytest.raises(tracking.RegistryError, match="tracking.log_models: true"):
        tracking.register_version("gm", run_id, {}, root=store)


def test_stage_runs_started_by_a_retrain_carry_its_id(store, monkeypatch):
    monkeypatch.setenv(tracking.RETRAIN_ID_ENV, "r-42")
    run_id = _run_with_model(store)
    (found,) = tracking.fetch_runs("exp", tags={"retrain_id": "r-42"}, root=store)
    assert found.run_id == run_id


# A stage process that opens its MLflow run, says so on stdout, then works until it is killed.
HOLD_A_RUN = """
import sys, time
from steps.tracking import runs
with runs.stage_run("pretrain", {}, "h", [], experiment="exp") as run:
    print(run.run_id, flush=True)
    time.sleep(300)
"""


def _stage_process(store):
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-c", HOLD_A_RUN], cwd=store, env=env, stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_run_left_running_by_a_killed_process_is_marked_failed_when_the_stage_next_starts(store):
    killed, killed_run = _stage_process(store)
    alive, alive_run = _stage_process(store)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        client = MlflowClient(tracking.tracking_uri(store))
        assert client.get_run(killed_run).info.status == "RUNNING"  # what SIGKILL leaves behind
        with tracking.stage_run("pretrain", {}, "h", [], experiment="exp") as run:
            pass
        orphan = client.get_run(killed_run)
        assert orphan.info.status == "FAILED"
        assert orphan.data.tags["gptpipe.orphaned"] == f"process {killed.pid} on {socket.gethostname()} no longer runs"
        # A run whose process still works is not touched, nor is the new run.
        assert client.get_run(alive_run).info.status == "RUNNING"
        assert "gptpipe.orphaned" not in client.get_run(alive_run).data.tags
        assert client.get_run(run.run_id).info.status == "FINISHED"
        assert client.get_run(run.run_id).data.tags["gptpipe.pid"] == str(os.getpid())
    finally:
        for proc in (killed, alive):
            proc.kill()
            proc.wait(timeout=30)


def test_a_run_whose_pid_now_belongs_to_another_process_is_an_orphan():
    me = psutil.Process()
    assert tracking._process_runs(os.getpid(), me.create_time())
    assert not tracking._process_runs(os.getpid(), me.create_time() - 3600)  # same pid, an earlier process


def test_a_child_run_is_nested_finished_and_keeps_the_stages_provenance(store, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "few-labels")
    with tracking.stage_run("label_efficiency", {"seed": 1}, params_hash="abc123", inputs=[], experiment="exp") as run:
        child_id = run.log_child_run("pretrained 63 labels", params={"method": "pretrained", "fraction": 0.03},
                                     metrics={"test_accuracy": 0.9}, tags={"stage": "label_efficiency_point"},
                                     seconds=30.0)
    child = MlflowClient(tracking.tracking_uri(store)).get_run(child_id)
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == run.run_id
    assert tags["stage"] == "label_efficiency_point"  # its own, over the stage's
    assert (tags["params_hash"], tags["dvc_exp"]) == ("abc123", "few-labels")
    assert not any(key.startswith("gptpipe.") for key in tags)  # no process runs it: never an orphan
    assert child.info.run_name == "pretrained 63 labels" and child.info.status == "FINISHED"
    assert child.data.params == {"method": "pretrained", "fraction": "0.03"}
    assert child.data.metrics == {"test_accuracy": 0.9}
    assert 29.0 <= (child.info.end_time - child.info.start_time) / 1000 <= 35.0
    (found,) = tracking.fetch_runs("exp", stage="label_efficiency_point", root=store)
    assert found.run_id == child_id and found.metrics == {"test_accuracy": 0.9}
