"""The local Prefect server (pipelines/prefect_server.py): started with Prefect's CLI on first need,
shared, shown and stopped by `gptpipe server`; a set PREFECT_API_URL wins and starts nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from pipelines import prefect_server
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GPTPIPE_"))}
    env.update(PYTHONPATH=str(ROOT), NO_PROXY="127.0.0.1,localhost", **{prefect_server.HOME_ENV: str(home)}, **extra)
    return env


def _gptpipe(*args: str, cwd: Path, env: dict[str, str], timeout: int = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_the_server_home_is_the_override_else_prefects_home():
    assert prefect_server.server_home({prefect_server.HOME_ENV: "/srv/p", "PREFECT_HOME": "/x"}) == Path("/srv/p")
    assert prefect_server.server_home({"PREFECT_HOME": "/x"}) == Path("/x")
    assert prefect_server.server_home({}) == Path("~/.prefect").expanduser().resolve()


def test_nothing_recorded_is_nothing_running(tmp_path):
    assert prefect_server.running(tmp_path) is None
    assert prefect_server.stop(tmp_path) is None
    (tmp_path / prefect_server.STATE_FILE).write_text("{not json")
    with pytest.raises(prefect_server.ServerError, match="gptpipe-server.json is unreadable"):
        prefect_server.recorded(tmp_path)


def test_a_set_prefect_api_url_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(prefect_server.HOME_ENV, str(tmp_path))
    monkeypatch.setenv("PREFECT_API_URL", "http://team.example:4200/api")
    assert prefect_server.use_for_this_process() == "http://team.example:4200/api"
    assert list(tmp_path.iterdir()) == []  # no state, no lock, no log: nothing was started


def test_health_of_a_closed_port_is_false():
    assert not prefect_server.healthy(f"http://127.0.0.1:{free_port()}/health")


def test_terminate_stops_the_whole_process_group():
    # A shell and its two children, like a server CLI and its workers.
    shell = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    proc = psutil.Process(shell.pid)
    deadline = time.monotonic() + 10
    while len(proc.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    children = proc.children()
    assert len(children) == 2
    prefect_server.terminate(proc)
    assert shell.poll() is not None
    assert not psutil.wait_procs(children, timeout=5)[1]


@pytest.mark.slow
def test_start_status_stop_and_concurrent_first_starts_make_one_server(tmp_path):
    """Two commands that need the server at once (two stage processes) start one between them; the
    CLI shows it and stops it; a taken port 4200-equivalent is left alone."""
    home = tmp_path / "home"
    env = _env(home)
    assert _gptpipe("server", "status", cwd=tmp_path, env=env).returncode == 3
    code = "from pipelines import prefect_server; print(prefect_server.use_for_this_process())"
    racers = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=400) for proc in racers]
    assert all(proc.returncode == 0 for proc in racers), outs
    urls = {out.strip() for out, _ in outs}
    assert len(urls) == 1  # one server for both
    started = [err for _, err in outs if "started a Prefect server" in err]
    assert len(started) == 1 and "gptpipe server stop" in started[0]  # said once, with how to stop it
    try:
        state = json.loads((home / prefect_server.STATE_FILE).read_text())
        (url,) = urls
        assert url == f"http://127.0.0.1:{state['port']}/api"
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert os.getsid(state["pid"]) == state["pid"]  # a session of its own: outlives its starter
        status = _gptpipe("server", "status", cwd=tmp_path, env=env)
        assert status.returncode == 0 and f"UI http://127.0.0.1:{state['port']}" in status.stdout
        again = _gptpipe("server", "start", cwd=tmp_path, env=env)
        assert again.returncode == 0 and "running" in again.stdout
        assert json.loads((home / prefect_server.STATE_FILE).read_text())["pid"] == state["pid"]
    finally:
        stop = _gptpipe("server", "stop", cwd=tmp_path, env=env)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert not psutil.pid_exists(state["pid"]) or psutil.Process(state["pid"]).status() == psutil.STATUS_ZOMBIE
    assert _gptpipe("server", "status", cwd=tmp_path, env=env).returncode == 3
    assert not (home / prefect_server.STATE_FILE).exists()


@pytest.mark.slow
def test_a_port_taken_between_the_check_and_the_start_makes_it_start_on_another(tmp_path, monkeypatch):
    """Two servers of different homes starting at once (two test workers, two users) may both find
    the same port free: the one that loses the race starts on another port instead of failing."""
    import socket

    home = tmp_path / "home"
    checks = []

    def free_when_first_asked(port: int) -> bool:  # the other server binds right after our check
        checks.append(port)
        return len(checks) == 1 or real_port_free(port)

    real_port_free = prefect_server.port_free
    monkeypatch.setattr(prefect_server, "port_free", free_when_first_asked)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server, started = prefect_server.start(home, port=port)
        try:
            assert started and server.port != port
            assert checks == [port, port]  # found free, then found taken after the failed start
            assert prefect_server.running(home) == server
            assert "already in use" in server.log.read_text()  # Prefect's own refusal, kept in the log
        finally:
            prefect_server.stop(home)


@pytest.mark.slow
def test_a_stage_records_its_flow_run_on_the_local_server(prefect_api, tmp_path):
    """A stage process without PREFECT_API_URL finds the running local server (none started: the
    session's, tests/conftest.py) and records its flow and task runs there."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["builtin"].update(corpus_bytes=150_000, sms_messages=100, instructions_train=20,
                                         instructions_test=5, instructions_val=5)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    only_download = FlowFilter(name=FlowFilterName(any_=["download"]))
    with SyncPrefectClient(prefect_api) as client:
        before = {run.id for run in client.read_flow_runs(flow_filter=only_download)}
    env = _env(Path(os.environ[prefect_server.HOME_ENV]))  # no PREFECT_API_URL: found through the home
    proc = _gptpipe("download", cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "started a Prefect server" not in proc.stderr and "temporary server" not in proc.stdout + proc.stderr
    assert (tmp_path / "data" / "raw" / "corpus.txt").is_file()

    with SyncPrefectClient(prefect_api) as client:
        (run,) = [run for run in client.read_flow_runs(flow_filter=only_download) if run.id not in before]
    assert run.state.is_completed()


@pytest.mark.slow
def test_a_stage_flow_run_never_asks_the_server_for_result_storage(prefect_api):
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "stage flow ran" in proc.stdout
    assert "plain flow: asked the server for its result storage" in proc.stdout
