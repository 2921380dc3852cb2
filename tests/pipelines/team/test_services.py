"""Team services without real servers: settings kept between starts, process records, ports, stopping
a whole process group, and the errors (the real servers run in tests/pipelines/test_team_mode.py)."""

from __future__ import annotations

import socket
import stat
import subprocess
import time

import psutil
import pytest

from pipelines.__main__ import main
from pipelines import prefect_server
from pipelines.team import postgres, services
from pipelines.team.services import ServiceError, Services, Settings
from tests.conftest import free_port


def test_settings_and_exports_survive_in_the_folder(tmp_path):
    saved = Services(tmp_path, Settings(mlflow_port=5100, prefect_port=4300),
                     {"mlflow": {"pid": 1, "create_time": 2.0}})
    saved.save()
    loaded = services.load(tmp_path)
    assert loaded.settings == saved.settings and loaded.processes == saved.processes
    assert (tmp_path / services.ENV_FILE).read_text() == (
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5100\nexport PREFECT_API_URL=http://127.0.0.1:4300/api\n")


def test_a_later_start_keeps_the_earlier_settings_unless_told_otherwise(tmp_path, monkeypatch):
    Services(tmp_path, Settings(mlflow_port=5100, artifacts="s3://bucket/team")).save()
    monkeypatch.setattr(services, "status", lambda root: [])
    again = services._with_settings(tmp_path, {"prefect_port": 4300})
    assert again.settings == Settings(mlflow_port=5100, prefect_port=4300, artifacts="s3://bucket/team")


def test_changing_settings_of_running_services_is_refused(tmp_path, monkeypatch):
    Services(tmp_path, Settings(mlflow_port=5100)).save()
    monkeypatch.setattr(services, "status", lambda root: [services.ServiceStatus("mlflow", True, 1, "", "")])
    with pytest.raises(ServiceError, match=r"mlflow_port: 5100 -> 5200.*services stop"):
        services._with_settings(tmp_path, {"mlflow_port": 5200})
    assert services._with_settings(tmp_path, {"mlflow_port": 5100}).settings.mlflow_port == 5100


def test_unknown_setting_and_unknown_prefect_database_are_errors(tmp_path):
    with pytest.raises(ServiceError, match="unknown service setting.*mlflow_prot"):
        services.start(tmp_path, mlflow_prot=1)
    with pytest.raises(ServiceError, match="prefect_db must be 'postgres' or 'sqlite'"):
        services.start(tmp_path, prefect_db="mysql")


def test_a_corrupt_settings_file_names_itself(tmp_path):
    (tmp_path / services.SETTINGS_FILE).write_text("{not json")
    with pytest.raises(ServiceError, match=services.SETTINGS_FILE):
        services.load(tmp_path)


def test_without_postgres_start_says_how_to_install_it_and_starts_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(postgres, "find_bindir", lambda extra=None: None)
    with pytest.raises(postgres.PostgresError, match="apt-get install -y postgresql"):
        services.start(tmp_path / "svc", postgres_port=free_port(), mlflow_port=free_port(), prefect_port=free_port())
    assert services.load(tmp_path / "svc").processes == {}


def test_the_password_is_generated_once_and_private(tmp_path):
    svc = Services(tmp_path, Settings())
    first = svc._password()
    assert len(first) >= 24 and svc._password() == first
    assert stat.S_IMODE((tmp_path / services.PASSWORD_FILE).stat().st_mode) == 0o600


def test_artifact_folders_resolve_and_bucket_uris_stay(tmp_path):
    assert Services(tmp_path, Settings()).artifacts == str(tmp_path.resolve() / "mlartifacts")
    assert Services(tmp_path, Settings(artifacts="s3://bucket/gptpipe")).artifacts == "s3://bucket/gptpipe"


def test_a_port_in_use_is_a_clear_error_naming_the_option():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServiceError, match=rf"127.0.0.1:{port} is already in use.*--mlflow-port"):
            services._require_free_port(port, "mlflow", "--mlflow-port")
    services._require_free_port(port, "mlflow", "--mlflow-port")  # released: free again


def test_a_process_record_is_live_only_for_the_same_process():
    proc = psutil.Process()
    assert services._process({"pid": proc.pid, "create_time": proc.create_time()}) is not None
    # Same pid, other start time: the pid was reused by an unrelated process.
    assert services._process({"pid": proc.pid, "create_time": proc.create_time() - 100}) is None
    assert services._process(None) is None


def test_cli_status_and_stop_of_a_folder_never_started(tmp_path, capsys):
    assert main(["services", "status", "--dir", str(tmp_path)]) == 3
    assert "make services" in capsys.readouterr().out
    assert main(["services", "stop", "--dir", str(tmp_path)]) == 0
    assert "nothing was running" in capsys.readouterr().out


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(postgres, "find_bindir", lambda extra=None: None)
    assert main(["services", "start", "--dir", str(tmp_path), "--postgres-port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptpipe services:") and "apt-get install" in err


def test_cli_artifact_folders_are_relative_to_where_it_runs(tmp_path, monkeypatch):
    from pipelines.cli import _artifacts

    monkeypatch.chdir(tmp_path)
    assert _artifacts("shared/artifacts") == str(tmp_path.resolve() / "shared" / "artifacts")
    assert _artifacts("gs://bucket/x") == "gs://bucket/x"
    assert _artifacts(None) is None


def test_status_line_shows_state_pid_and_address():
    line = services.ServiceStatus("mlflow", True, 42, "http://127.0.0.1:5000", "log x").line()
    assert line.split()[:4] == ["mlflow", "running", "pid", "42"] and "http://127.0.0.1:5000" in line
    assert "stopped" in services.ServiceStatus("prefect", False, None, "u", "d").line()


def test_status_of_a_folder_never_started_is_empty(tmp_path):
    assert services.status(tmp_path) == []
    assert services.stop(tmp_path) == []


def test_a_server_that_ignores_sigterm_is_killed(monkeypatch):
    monkeypatch.setattr(prefect_server, "STOP_TIMEOUT_S", 0.5)
    # An ignored signal stays ignored across exec: neither the shell nor its sleep heed SIGTERM.
    shell = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & wait"], start_new_session=True)
    proc = psutil.Process(shell.pid)
    deadline = time.monotonic() + 10
    while not proc.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = proc.children()[0]
    started = time.monotonic()
    prefect_server.terminate(proc)
    assert shell.poll() is not None and time.monotonic() - started < 10
    assert not psutil.wait_procs([child], timeout=5)[1]


def test_a_busy_server_port_stops_start_before_postgresql_starts(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(services, "_start_postgres", lambda svc: started.append("postgres"))
    # No PostgreSQL needed here: the port check comes first.
    monkeypatch.setattr(postgres, "find_bindir", lambda extra=None: tmp_path)
    monkeypatch.setattr(postgres, "server_account", lambda: postgres.Account("me", 1000, 1000, switch=False))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ServiceError, match="--prefect-port"):
            services.start(tmp_path, postgres_port=free_port(), mlflow_port=free_port(),
                           prefect_port=busy.getsockname()[1])
    assert started == []
