"""End to end: `gptpipe schedule` serves the retrain deployment on a real Prefect server; triggered
runs retrain the pipeline, register both models and set the champion; a second run with no data
change retrains nothing; a failing stage fails the flow run with the stage's error."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from pipelines.retraining.promotion import CANDIDATES, CHAMPION
from tests.pipelines.conftest import eventually, make_project_copy, shrink_params, stop_process

pytestmark = pytest.mark.slow

STAGES = ["download", "tokenize", "pretrain", "finetune_classifier", "label_efficiency", "finetune_instruct",
          "finetune_preference", "evaluate"]
DEPLOYMENT = "e2e"
CRON = "0 3 * * 1"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def served(prefect_api_module, tmp_path_factory):
    """A tiny-params project copy and `python -m pipelines schedule` serving it; the deployment id."""
    work, env = make_project_copy(tmp_path_factory.mktemp("retrain") / "repo", lambda w, e: shrink_params(w))
    env["PREFECT_API_URL"] = prefect_api_module
    log = open(work.parent / "serve.log", "w")
    # `python -m` from the copy: its code, not the installed checkout's, runs the flows.
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "schedule", "--cron", CRON, "--name", DEPLOYMENT,
                             "--timezone", "UTC"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deployment = _wait_for(lambda: _deployment(prefect_api_module), 120, proc, work.parent / "serve.log")
        yield work, env, deployment
    finally:
        stop_process(proc)
        log.close()


def _call(method: str, url: str, **kwargs) -> httpx.Response:
    """One API request; a 5xx is retried: a Prefect server on SQLite answers 503 while its database
    is busy, which on a loaded machine happens."""
    for attempt in range(6):
        resp = httpx.request(method, url, timeout=30, **kwargs)
        if resp.status_code < 500:
            return resp
        time.sleep(2 * (attempt + 1))
    resp.raise_for_status()
    return resp


def _deployment(api: str) -> dict | None:
    resp = _call("GET", f"{api}/deployments/name/retrain/{DEPLOYMENT}")
    return resp.json() if resp.status_code == 200 else None


def _wait_for(probe, timeout: float, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while (got := probe()) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the serve process did not get there:\n{log.read_text()[-4000:]}")
        time.sleep(1)
    return got


def _run_deployment(api: str, deployment: dict, parameters: dict | None = None, timeout: float = 900) -> dict:
    """Trigger one run of the deployment and wait for its final state; the flow run."""
    created = _call("POST", f"{api}/deployments/{deployment['id']}/create_flow_run",
                    json={"parameters": parameters or {}})
    created.raise_for_status()
    run_id = created.json()["id"]
    deadline = time.monotonic() + timeout
    while True:
        run = _call("GET", f"{api}/flow_runs/{run_id}").json()
        if run["state_type"] in TERMINAL:
            return run
        assert time.monotonic() < deadline, f"flow run {run_id} still {run['state_type']} after {timeout} s"
        time.sleep(2)


def _logs(api: str, flow_run_id: str) -> list[str]:
    """Every log line of a flow run, page by page (the API returns at most 200 at a time)."""
    lines: list[str] = []
    while True:
        body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC",
                "limit": 200, "offset": len(lines)}
        page = [r["message"] for r in _call("POST", f"{api}/logs/filter", json=body).json()]
        lines += page
        if len(page) < 200:
            return lines


def _has_lines(api: str, flow_run_id: str, needles: list[str]) -> list[str] | None:
    """The run's log lines if each needle is in one of them, else None."""
    lines = _logs(api, flow_run_id)
    return lines if all(any(n in line for line in lines) for n in needles) else None


def _registry(work: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{work / 'mlflow.db'}")


@pytest.fixture(scope="module")
def broken_run(prefect_api_module, served, tmp_path_factory):
    """A run of the deployment on a copy whose classification file lacks a label: download fails.
    Run first, so that the runs after it also show the concurrency slot was given back."""

    def bad_local_data(work: Path, env: dict) -> None:
        (work / "data" / "local" / "sms.jsonl").write_text('{"text": "hello"}\n')
        shrink_params(work, {"download": {"classification": {"source": {"kind": "local",
                                                                        "path": "data/local/sms.jsonl"}}}})

    broken, _ = make_project_copy(tmp_path_factory.mktemp("broken") / "repo", bad_local_data)
    return broken, _run_deployment(prefect_api_module, served[2], {"repo": str(broken)}, timeout=300)


@pytest.fixture(scope="module")
def first_run(prefect_api_module, served, broken_run):
    return _run_deployment(prefect_api_module, served[2])


@pytest.fixture(scope="module")
def second_run(prefect_api_module, served, first_run):
    return _run_deployment(prefect_api_module, served[2], timeout=300)


def test_the_deployment_has_the_cron_schedule_and_one_run_at_a_time(served):
    _, _, deployment = served
    (schedule,) = deployment["schedules"]
    assert schedule["schedule"]["cron"] == CRON and schedule["schedule"]["timezone"] == "UTC"
    assert schedule["active"]
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert deployment["parameters"]["repo"] == str(served[0])


def test_a_failing_stage_fails_the_flow_run_with_the_stages_error(broken_run):
    broken, run = broken_run
    assert run["state_type"] == "FAILED", run["state"]
    message = run["state"]["message"]
    assert "stage 'download' failed" in message and "data/local/sms.jsonl" in message, message
    report = json.loads((broken / "reports" / "retrain.json").read_text())
    assert report["status"] == "failed" and "stage 'download' failed" in report["error"]


def test_first_run_retrains_everything_registers_both_models_and_crowns_them(prefect_api_module, served, first_run):
    work, _, _ = served
    assert first_run["state_type"] == "COMPLETED", first_run["state"]
    report = json.loads((work / "reports" / "retrain.json").read_text())
    assert report["status"] == "completed" and report["retrain_id"] == first_run["id"]
    assert report["ran"] == report["changed"] == STAGES
    assert all(s["changed"] and s["reason"] == "not downloaded yet" for s in report["sources"])
    client = _registry(work)
    evaluate = json.loads((work / "reports" / "evaluate.json").read_text())
    for candidate, outcome in zip(CANDIDATES, report["models"]):
        assert (outcome["new_version"], outcome["promoted"], outcome["champion_version_after"]) == ("1", True, "1")
        assert outcome["challenger_score"] == evaluate[candidate.metric]
        champion = client.get_model_version_by_alias(candidate.registered_name, CHAMPION)
        assert str(champion.version) == "1"
        assert champion.tags["heldout_score"] == repr(evaluate[candidate.metric])
        stage_run = client.get_run(champion.run_id)
        assert stage_run.data.tags["stage"] == candidate.stage
        assert stage_run.data.tags["retrain_id"] == first_run["id"]
        assert champion.run_id == report["runs"][candidate.stage]
    # The stages' output streams through DVC into the run's logs (pretrain's MLflow run line).
    needles = [f"MLflow run {report['runs']['pretrain']}", "gptpipe-classifier: registered version 1"]
    # Prefect ships logs from a worker that drains as the flow's process exits, after the final
    # state is set: the run can read COMPLETED a moment before its last lines arrive.
    assert eventually(lambda: _has_lines(prefect_api_module, first_run["id"], needles)), \
        _logs(prefect_api_module, first_run["id"])[-20:]


def test_second_run_without_a_data_change_retrains_nothing_and_keeps_the_champion(served, first_run, second_run):
    work, _, _ = served
    assert second_run["state_type"] == "COMPLETED", second_run["state"]
    report = json.loads((work / "reports" / "retrain.json").read_text())
    assert report["retrain_id"] == second_run["id"]
    assert report["ran"] == report["changed"] == [] and report["runs"] == {}
    assert not any(s["changed"] for s in report["sources"])
    client = _registry(work)
    for candidate, outcome in zip(CANDIDATES, report["models"]):
        assert outcome["new_version"] is None and not outcome["promoted"]
        assert outcome["champion_version_after"] == "1"
        assert [str(v.version) for v in client.search_model_versions(f"name = '{candidate.registered_name}'")] == ["1"]
        assert str(client.get_model_version_by_alias(candidate.registered_name, CHAMPION).version) == "1"
    retrains = client.search_runs([client.get_experiment_by_name("gptpipe").experiment_id],
                                  filter_string="tags.stage = 'retrain'")
    assert len(retrains) == 2 and all(r.info.status == "FINISHED" for r in retrains)
    latest = max(retrains, key=lambda r: r.info.start_time)
    assert latest.data.metrics["stages_ran"] == 0.0 and latest.data.metrics["classifier_promoted"] == 0.0
