"""MLflow tracking: one run per stage with params, metrics, artifacts and tags, in a local store."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from steps import tracking


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
    (found,) = tracking.find_runs("exp", stage="pretrain", root=store)
    assert found.info.run_id == run.run_id
    assert found.info.status == "FINISHED"
    assert found.data.params == {"pretrain.lr": "0.001", "lora.targets": "a,b"}
    assert [m.value for m in client.get_metric_history(run.run_id, "loss")] == [2.0, 1.0]
    tags = found.data.tags
    assert tags["stage"] == "pretrain" and tags["params_hash"] == "abc123"
    assert tags["data_hash"] == tracking.data_hash([data]) and len(tags["data_hash"]) == 16
    assert "git_commit" in tags
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["report.json"]
    # Artifacts land beside the store, not wherever the process happened to start.
    assert (store / "mlartifacts").is_dir()


def test_a_failing_stage_marks_its_run_failed(store):
    with pytest.raises(RuntimeError):
        with tracking.stage_run("tokenize", {}, "h", [], experiment="exp"):
            raise RuntimeError("boom")
    (found,) = tracking.find_runs("exp", stage="tokenize", root=store)
    assert found.info.status == "FAILED"


def test_data_hash_changes_with_content(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one")
    first = tracking.data_hash([tmp_path])
    f.write_text("two")
    assert tracking.data_hash([tmp_path]) != first
