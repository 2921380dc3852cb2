"""With PREFECT_API_URL set, a stage's flow reports to that Prefect server instead of a temporary one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_stage_flow_reports_to_the_configured_server(prefect_server, tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["builtin"].update(corpus_bytes=150_000, sms_messages=100, instructions_train=20,
                                         instructions_test=5, instructions_val=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_API_URL=prefect_server, PYTHONPATH=str(ROOT))

    proc = subprocess.run([sys.executable, "-m", "pipelines", "download"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Starting temporary server" not in proc.stdout + proc.stderr
    assert (tmp_path / "data" / "raw" / "corpus.txt").is_file()

    runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={}, timeout=10).json()
    assert len(runs) == 1
    flow = httpx.get(f"{prefect_server}/flows/{runs[0]['flow_id']}", timeout=10).json()
    assert flow["name"] == "download"
    assert runs[0]["state_type"] == "COMPLETED"
    tasks = httpx.post(f"{prefect_server}/task_runs/filter", json={}, timeout=10).json()
    assert any(t["name"].startswith("write_datasets") and t["state_type"] == "COMPLETED" for t in tasks)


def test_through_the_warm_runner_the_flow_reports_to_the_configured_server(prefect_server, tmp_path):
    """With PREFECT_API_URL set, the warm runner (pipelines/warm.py) starts no server of its own:
    its children report to the configured one."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["builtin"].update(corpus_bytes=150_000, sms_messages=100, instructions_train=20,
                                         instructions_test=5, instructions_val=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GPTPIPE_"))}
    env.update(PREFECT_API_URL=prefect_server, PYTHONPATH=str(ROOT), PREFECT_HOME=str(tmp_path / "prefect-home"))
    before = len(httpx.post(f"{prefect_server}/flow_runs/filter", json={}, timeout=10).json())
    try:
        proc = subprocess.run([sys.executable, "-m", "pipelines", "download"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        status = subprocess.run([sys.executable, "-m", "pipelines", "warm", "status"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and "Prefect API PREFECT_API_URL" in status.stdout
        log = (tmp_path / "prefect-home" / "gptpipe-warm.log").read_text()
        assert f"Prefect API {prefect_server}" in log
    finally:
        subprocess.run([sys.executable, "-m", "pipelines", "warm", "stop"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={}, timeout=10).json()
    assert len(runs) == before + 1
    assert all(r["state_type"] == "COMPLETED" for r in runs)


def test_a_stage_flow_run_never_asks_the_server_for_result_storage(prefect_server):
    """Stage flows persist no results, so they name their (unused) storage instead of asking the
    server for its default block on every run; a plain flow does ask (the control)."""
    code = """
from prefect import flow
from prefect.client.orchestration import SyncPrefectClient

def refuse(self):
    raise AssertionError("asked the server for its result storage")

SyncPrefectClient.read_server_default_result_storage = refuse
from pipelines.stage import stage_flow

@stage_flow("storage-probe")
def stage_probe():
    return "stage flow ran"

@flow(name="plain-probe", persist_result=False)
def plain_probe():
    return "plain flow ran"

print(stage_probe())
try:
    plain_probe()
except AssertionError as err:
    print("plain flow:", err)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(PREFECT_API_URL=prefect_server, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "stage flow ran" in proc.stdout
    assert "plain flow: asked the server for its result storage" in proc.stdout
