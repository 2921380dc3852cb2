"""Team mode end to end: teammate A runs a stage against the team servers (MLflow on PostgreSQL with an
artifact store, Prefect on the same PostgreSQL) and pushes the outputs to a DVC remote; teammate B
clones the repository and pulls them, with nothing to rerun."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import yaml
from mlflow.tracking import MlflowClient

from steps import layout
from tests.pipelines.conftest import eventually, ran_stages, run

pytestmark = pytest.mark.slow

STAGE = "download"  # one stage: the servers, not the pipeline, are under test here
TINY = {"corpus_bytes": 150_000, "sms_messages": 100, "instructions_train": 20, "instructions_test": 5,
        "instructions_val": 5}


@pytest.fixture(scope="module")
def teammate_a(team_services, project_copy, tmp_path_factory):
    """A project copy with tiny params whose `dvc repro download` recorded to the team servers, with a
    DVC remote in a local folder (as a teammate would use s3://...) committed to its git history."""

    def tiny(work: Path, env: dict[str, str]) -> None:
        params = yaml.safe_load((work / "params.yaml").read_text())
        params["download"]["builtin"].update(TINY)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env.update(team_services.exports())

    work, env = project_copy(tiny)
    remote = tmp_path_factory.mktemp("dvc-remote")
    run(["dvc", "remote", "add", "-d", "team", str(remote)], work, env)
    repro = run(["dvc", "repro", STAGE], work, env)
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", f"{STAGE}, recorded on the team servers"], work, env)
    return SimpleNamespace(work=work, env=env, remote=remote, output=repro.stdout + repro.stderr,
                           experiment=params_experiment(work))


def params_experiment(work: Path) -> str:
    return yaml.safe_load((work / "params.yaml").read_text())["tracking"]["experiment"]


@pytest.fixture
def no_proxy(monkeypatch):
    """The test's own requests to the loopback servers must not go through a proxy."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def test_services_report_running(team_services):
    from pipelines.team import services

    states = {s.name: s for s in services.status(team_services.root)}
    assert sorted(states) == ["mlflow", "postgres", "prefect"]
    assert all(s.running and s.pid for s in states.values()), [s.line() for s in states.values()]
    # A second start finds everything running and starts nothing new.
    pids = {name: s.pid for name, s in states.items()}
    services.start(team_services.root)
    assert {s.name: s.pid for s in services.status(team_services.root)} == pids


def test_runs_params_metrics_and_artifacts_reach_the_mlflow_server(team_services, teammate_a, no_proxy):
    assert ran_stages(teammate_a.output) == [STAGE]
    # Nothing went to the embedded store a stage uses without MLFLOW_TRACKING_URI.
    assert not (teammate_a.work / "mlflow.db").exists() and not (teammate_a.work / "mlartifacts").exists()

    client = MlflowClient(team_services.mlflow_url)
    experiment = client.get_experiment_by_name(teammate_a.experiment)
    (stage_run,) = client.search_runs([experiment.experiment_id])
    assert stage_run.info.run_name == STAGE and stage_run.info.status == "FINISHED"
    assert stage_run.data.params["download.builtin.corpus_bytes"] == str(TINY["corpus_bytes"])
    assert stage_run.data.metrics["classification_records"] == TINY["sms_messages"]
    assert stage_run.data.tags["stage"] == STAGE

    # The artifacts went through the server into its artifact folder, byte for byte.
    assert f"{STAGE}.json" in {a.path for a in client.list_artifacts(stage_run.info.run_id)}
    stored = Path(team_services.artifacts) / experiment.experiment_id / stage_run.info.run_id / "artifacts"
    local = teammate_a.work / layout.metrics_file(STAGE)
    assert (stored / f"{STAGE}.json").read_bytes() == local.read_bytes()
    assert (stored / "plots" / "labels.png").is_file()


def test_run_rows_are_in_postgresql(team_services, teammate_a):
    with team_services.cluster.connect("mlflow") as conn:
        rows = conn.execute("SELECT name, status FROM runs").fetchall()
        records = conn.execute("SELECT m.value FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid "
                               "WHERE r.name = %s AND m.key = 'classification_records'", (STAGE,)).fetchall()
        params = conn.execute("SELECT count(*) FROM params p JOIN runs r ON r.run_uuid = p.run_uuid "
                              "WHERE r.name = %s", (STAGE,)).fetchone()[0]
    assert rows == [(STAGE, "FINISHED")]
    assert records == [(TINY["sms_messages"],)]
    assert params > 5


def test_stage_flows_are_recorded_by_the_prefect_server(team_services, teammate_a, no_proxy):
    assert "Starting temporary server" not in teammate_a.output
    api = team_services.prefect_url
    flow_runs = httpx.post(f"{api}/flow_runs/filter", json={}, timeout=10).json()
    names = {httpx.get(f"{api}/flows/{r['flow_id']}", timeout=10).json()["name"]: r["state_type"] for r in flow_runs}
    assert names == {STAGE: "COMPLETED"}

    def stage_task_completed() -> bool:
        tasks = httpx.post(f"{api}/task_runs/filter", json={}, timeout=10).json()
        return any(t["name"].startswith("write_datasets") and t["state_type"] == "COMPLETED" for t in tasks)

    # Task runs arrive as events, which the server stores asynchronously: poll.
    assert eventually(stage_task_completed)


def test_a_teammate_pulls_the_outputs_from_the_dvc_remote(teammate_a, tmp_path):
    a = teammate_a.work
    run(["dvc", "push"], a, teammate_a.env)
    assert any(p.is_file() for p in teammate_a.remote.rglob("*"))

    b = tmp_path / "teammate-b"
    env_b = {k: v for k, v in teammate_a.env.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    run(["git", "clone", "-q", str(a), str(b)], tmp_path, env_b)
    assert not (b / layout.CORPUS).exists()
    run(["dvc", "pull", STAGE], b, env_b)  # A ran only this stage: the others have nothing to pull

    assert digests(b / "data" / "raw") == digests(a / "data" / "raw")
    status = run(["dvc", "status", "--json", STAGE], b, env_b)
    assert json.loads(status.stdout) == {}  # outputs match dvc.lock: nothing to rerun


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}
