"""The retraining flow's parts without a pipeline run: the promotion task against a real (temporary)
registry, the repository lock, the environment of `dvc repro`, and `gptpipe schedule`'s checks."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import mlflow
import pytest

from pipelines.__main__ import main
from pipelines.retrain import child_env, register_and_promote, retrain_flow
from pipelines.retraining.promotion import CANDIDATES, CHAMPION
from pipelines.retraining.repo_lock import Busy, exclusive
from pipelines.retraining.what_ran import tagged_runs
from steps import layout
from steps.tracking import runs as tracking
from tests.steps.inference import tiny_models

CLASSIFIER = next(c for c in CANDIDATES if c.key == "classifier")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite MLflow store for the module (the registry needs a database; creating one takes
    seconds): each test registers under a name of its own."""
    return tmp_path_factory.mktemp("registry")


@pytest.fixture
def registry(store, monkeypatch, request):
    """The module's store as MLFLOW_TRACKING_URI, the cwd in it, and a registered-model name and
    retrain ids of this test's own."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.chdir(store)
    yield SimpleNamespace(root=store, candidate=replace(CLASSIFIER, registered_name=request.node.name[:60]),
                          ids=lambda n: f"{request.node.name[:40]}-r{n}")
    mlflow.set_tracking_uri(None)


def _stage_run(registry, n: int, monkeypatch) -> str:
    """A finished finetune_classifier run with a model folder, as a retrain's `dvc repro` leaves it."""
    folder = registry.root / "models" / "classifier"
    if not folder.is_dir():  # a tiny classifier, logged as the stage logs its model (an MLflow model)
        tiny_models.classifier_folder(registry.root / "models", tiny_models.tokenizer())
    monkeypatch.setenv(tracking.RETRAIN_ID_ENV, registry.ids(n))
    with tracking.stage_run(CLASSIFIER.stage, {}, "h", [], experiment="exp") as run:
        run.log_model_folder(folder)
    monkeypatch.delenv(tracking.RETRAIN_ID_ENV)
    return run.run_id


def _promote(registry, n: int, accuracy: float | None, ran: bool = True) -> dict:
    """The promotion task with the stage's run of retrain n, as what_ran finds it (None: did not run)."""
    metrics = {} if accuracy is None else {CLASSIFIER.metric: accuracy}
    run = tagged_runs("exp", registry.ids(n)).get(CLASSIFIER.stage) if ran else None
    return register_and_promote.fn(registry.candidate, run, registry.ids(n), metrics)


def _champion(registry) -> str | None:
    version = tracking.version_by_alias(registry.candidate.registered_name, CHAMPION)
    return version and version.version


def _version(registry, version: str):
    """The registry's model version, as MLflow's client reads it."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking.tracking_uri()).get_model_version(registry.candidate.registered_name, version)


def test_first_version_becomes_champion_a_worse_one_is_registered_but_not_promoted(registry, monkeypatch):
    _stage_run(registry, 1, monkeypatch)
    first = _promote(registry, 1, 0.90)
    assert (first["new_version"], first["promoted"], first["champion_version_after"]) == ("1", True, "1")
    assert _champion(registry) == "1"

    run_id = _stage_run(registry, 2, monkeypatch)
    worse = _promote(registry, 2, 0.85)
    assert (worse["new_version"], worse["promoted"], worse["champion_version_after"]) == ("2", False, "1")
    assert (worse["challenger_score"], worse["champion_score"]) == (0.85, 0.90)
    assert "worse" in worse["reason"] and _champion(registry) == "1"
    version = _version(registry, "2")
    assert version.run_id == run_id
    assert version.tags["heldout_metric"] == CLASSIFIER.metric and version.tags["heldout_score"] == "0.85"
    assert version.tags["promotion"] == "kept champion"
    assert version.tags["champion_version_at_decision"] == "1" and version.tags["champion_score_at_decision"] == "0.9"


def test_a_tie_keeps_and_a_better_one_takes_the_alias(registry, monkeypatch):
    _stage_run(registry, 1, monkeypatch)
    _promote(registry, 1, 0.90)
    _stage_run(registry, 2, monkeypatch)
    assert not _promote(registry, 2, 0.90)["promoted"] and _champion(registry) == "1"
    _stage_run(registry, 3, monkeypatch)
    better = _promote(registry, 3, 0.93)
    assert better["promoted"] and better["new_version"] == "3" and _champion(registry) == "3"
    assert _version(registry, "3").tags["promotion"] == "promoted"


def test_a_model_whose_stage_did_not_rerun_gets_no_version(registry, monkeypatch):
    _stage_run(registry, 1, monkeypatch)
    _promote(registry, 1, 0.90)
    same = _promote(registry, 2, 0.99, ran=False)
    assert same["new_version"] is None and not same["promoted"] and same["champion_version_after"] == "1"
    from mlflow.tracking import MlflowClient

    found = MlflowClient(tracking.tracking_uri()).search_model_versions(f"name = '{registry.candidate.registered_name}'")
    assert [str(v.version) for v in found] == ["1"]


def test_a_challenger_without_a_score_is_registered_but_never_champion(registry, monkeypatch):
    _stage_run(registry, 1, monkeypatch)
    outcome = _promote(registry, 1, None)
    assert outcome["new_version"] == "1" and not outcome["promoted"] and _champion(registry) is None


def test_dvc_gets_the_retrain_id_but_not_prefects_run_variables(monkeypatch):
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "123")
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    env = child_env("abc")
    assert env[tracking.RETRAIN_ID_ENV] == "abc" and "PREFECT__FLOW_RUN_ID" not in env
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"  # stages report to the same server


def test_a_second_retrain_of_the_same_repository_stops_at_once(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    with exclusive(layout.RETRAIN_LOCK, "a retrain"):
        with pytest.raises(Busy, match=r"\.retrain\.lock: a retrain of .* is already running \(pid "):
            retrain_flow.fn(repo=str(tmp_path))


def test_retrain_needs_a_project_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dvc.yaml here"):
        retrain_flow.fn(repo=str(tmp_path))


@pytest.mark.parametrize("args, message", [
    (["--cron", "0 3 * *"], 'Invalid cron string: "0 3 * *"'),
    (["--cron", "0 3 * * 1", "--timezone", "Mars/Base"], 'Invalid timezone: "Mars/Base"'),
])
def test_schedule_refuses_what_it_cannot_serve(args, message, monkeypatch, capsys):
    # A server named, so none is started (without one, the local server is: pipelines/prefect_server.py).
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert main(["schedule", *args]) == 2
    assert message in capsys.readouterr().err


def test_serving_a_schedule_from_python_without_a_server_says_how_to_get_one(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.retrain import ScheduleError, serve

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(ScheduleError, match=r"PREFECT_API_URL is not set.*gptpipe schedule.*gptpipe server status"):
            serve("0 3 * * 1", repo=str(tmp_path))


def test_retrain_command_prints_each_decision(monkeypatch, capsys):
    from pipelines import retrain

    report = {"models": [{"registered_name": "gptpipe-classifier", "champion_version_after": "3",
                          "reason": "challenger classifier_test_accuracy 0.9000 ties champion 0.9000"}]}
    seen = {}
    monkeypatch.setattr(retrain, "retrain_flow", lambda **kw: seen.update(kw) or report)
    assert main(["retrain", "--repo", "/somewhere", "--params", "p.yaml"]) == 0
    assert seen == {"repo": "/somewhere", "params_path": "p.yaml"}
    assert capsys.readouterr().out == ("gptpipe-classifier: challenger classifier_test_accuracy 0.9000 ties "
                                       "champion 0.9000 (champion: version 3)\n")


def test_a_failed_retrain_exits_non_zero_with_the_error(monkeypatch, capsys):
    from pipelines import retrain

    def fail(**kw):
        raise RuntimeError("stage 'download' failed: DataError: data/local/x.jsonl:1: missing field 'label'")

    monkeypatch.setattr(retrain, "retrain_flow", fail)
    assert main(["retrain"]) == 1
    assert "gptpipe retrain: failed: stage 'download' failed: DataError" in capsys.readouterr().err
