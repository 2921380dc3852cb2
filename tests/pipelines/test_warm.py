"""The warm stage runner: stages run in forked children of one long-lived process and one Prefect server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from pipelines import warm, warm_client
from pipelines.__main__ import main
from pipelines.stage import stage_process_start
from tests.pipelines.conftest import eventually, runner_status

ROOT = Path(__file__).resolve().parents[2]
SMALL_DOWNLOAD = {"corpus_bytes": 150_000, "sms_messages": 100, "instructions_train": 20, "instructions_test": 5,
                  "instructions_val": 5}


# ---------------------------------------------------------------- fast: no runner started


def test_startup_counts_from_the_clients_start(monkeypatch):
    monkeypatch.setenv(warm_client.STARTED_ENV, "1700000000.25")
    assert stage_process_start() == 1700000000.25
    monkeypatch.delenv(warm_client.STARTED_ENV)
    assert 0 < time.time() - stage_process_start() < 24 * 3600  # this process's own start


def test_prefect_settings_are_reused_only_from_the_same_inputs(tmp_path):
    """A child reuses the settings the runner built when their inputs match its own: the
    PREFECT_* variables and the profiles file; never where its directory has a config file."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "INFO", "PATH": "/usr/bin"}
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    key = warm.settings_inputs(env, project)
    assert key is not None
    assert warm.settings_inputs({**env, "PATH": "/bin", "DVC_EXP_NAME": "e"}, project) == key
    assert warm.settings_inputs({**env, "PREFECT_LOGGING_LEVEL": "DEBUG"}, project) != key
    (home / "profiles.toml").write_text("active = 'local'\n")  # e.g. `prefect config set`
    assert warm.settings_inputs(env, project) != key
    (project / "pyproject.toml").write_text("[tool.prefect]\nlogging.level = 'DEBUG'\n")
    assert warm.settings_inputs(env, project) is None
    (project / "pyproject.toml").unlink()
    for name in (".env", "prefect.toml"):
        (project / name).write_text("PREFECT_LOGGING_LEVEL=DEBUG\n")
        assert warm.settings_inputs(env, project) is None
        (project / name).unlink()


def test_a_child_gets_the_runners_server_unless_its_client_names_one():
    assert warm.prefect_overrides({}, "http://127.0.0.1:4321/api") == {
        "PREFECT_API_URL": "http://127.0.0.1:4321/api", "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false"}
    assert warm.prefect_overrides({"PREFECT_API_URL": "http://team:4200/api"}, "http://127.0.0.1:4321/api") == {}
    assert warm.prefect_overrides({}, None) == {}  # a runner that reports to a team server


def test_repro_runs_in_the_clients_own_environment_so_its_stages_find_the_same_runner():
    """A stage's child gets the runner's Prefect server and its client's start time; `repro`'s
    does not: DVC's stage commands are clients of their own, and a Prefect URL in their
    environment would give them another runner key (a second runner, a second server)."""
    env = {"PATH": "/usr/bin", "PREFECT_HOME": "/tmp/h"}
    url = "http://127.0.0.1:4321/api"
    stage = warm.child_environ({"argv": ["download"], "env": env, "started": 12.5}, url)
    assert stage["PREFECT_API_URL"] == url and stage[warm_client.STARTED_ENV] == "12.5"
    repro = warm.child_environ({"argv": ["repro", "-f"], "env": env, "started": 12.5}, url)
    assert repro == env
    assert warm_client.runner_key(repro) == warm_client.runner_key(env) != warm_client.runner_key(stage)


def test_a_forwarded_signal_reaches_what_the_childs_command_started(tmp_path, monkeypatch):
    """A child leads a process group of its own and the client's signals go to that group, as a
    terminal's go to its foreground job: `repro`'s DVC and the stage commands it started,
    torchrun's workers, all get Ctrl-C."""
    grandchild_file = tmp_path / "grandchild"

    def command_that_starts_a_process(request, *args, **kwargs):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        grandchild_file.write_text(str(proc.pid))
        proc.wait()
        return 0

    monkeypatch.setattr(warm, "run_child", command_that_starts_a_process)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    runner = warm.Runner(listener, "test", None, 60.0, {})
    client, conn = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stdio = [os.open(os.devnull, os.O_RDWR) for _ in range(3)]
    grandchild = 0
    try:
        runner._fork(conn, {"argv": ["repro"]}, stdio)
        (pid,) = runner.children
        assert os.getpgid(pid) == pid
        assert eventually(lambda: grandchild_file.exists() and grandchild_file.read_text() != "", timeout=30)
        grandchild = int(grandchild_file.read_text())
        assert os.getpgid(grandchild) == pid
        client.sendall(warm_client.encode({"signal": int(signal.SIGTERM)}))
        runner._client_message(conn)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == -signal.SIGTERM
        assert eventually(lambda: not _alive(grandchild), timeout=10)
    finally:
        if grandchild and _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
        for fd in stdio:
            os.close(fd)
        for sock in (listener, client, conn, runner.wake_r, runner.wake_w):
            sock.close()
        for fd in runner.reports:
            os.close(fd)


def test_a_stopping_runner_refuses_new_commands_and_starts_nothing():
    """`gptpipe warm stop` during a `gptpipe repro`: the runner lives until DVC ends, but refuses
    the stage commands DVC still starts, which then run in their own processes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    name = f"\0gptpipe-test-stopping-{os.getpid()}"
    listener.bind(name)
    listener.listen()
    runner = warm.Runner(listener, "test", None, 60.0, {})
    runner.stopping = True
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client:
            client.connect(name)
            socket.send_fds(client, [warm_client.encode({"op": "run", "argv": ["download"]})], [0, 1, 2])
            runner._accept()
            assert "refused" in warm_client.decode(client.recv(4096))
        assert runner.children == {} and runner.stages_run == 0
    finally:
        for sock in (listener, runner.wake_r, runner.wake_w):
            sock.close()


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_connection_from_this_user_is_accepted():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        assert warm.same_user(a)


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.getuid() != 0,
                    reason="needs root, to connect as another user (uid 65534)")
def test_another_users_request_is_refused_unread():
    """An abstract socket has no file permissions: the runner checks who is calling."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    name = f"\0gptpipe-test-peer-{os.getpid()}"
    listener.bind(name)
    listener.listen()
    runner = warm.Runner(listener, "test", None, 60.0, {})
    pid = os.fork()
    if pid == 0:  # another user asks the runner to run a stage
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.connect(name)
                code = 3
                try:
                    sock.sendall(warm_client.encode({"op": "run", "argv": ["download"]}))
                    code = 0 if sock.recv(4096) == b"" else 2  # closed, no answer
                except (BrokenPipeError, ConnectionResetError):
                    code = 0  # closed before the request was even sent
        finally:
            os._exit(code)
    try:
        runner._accept()
        assert runner.children == {} and runner.stages_run == 0
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        listener.close()
        runner.wake_r.close()
        runner.wake_w.close()


def test_warm_command_when_switched_off(capsys):
    assert main(["warm", "status"]) == 2  # the autouse fixture sets GPTPIPE_WARM=0
    assert "GPTPIPE_WARM=0" in capsys.readouterr().err


def test_a_child_reports_its_exit_status_before_it_drains(tmp_path):
    """exit_child answers first, then runs the exit hooks (where Prefect ships its last records)
    with the output moved to the runner's log: the caller never waits for the drain."""
    report_r, report_w = os.pipe()
    out_r, out_w = os.pipe()
    log = tmp_path / "runner.log"
    pid = os.fork()
    if pid == 0:  # the stage's child: fd 1 is "the client's" pipe
        os.close(report_r)
        os.close(out_r)
        runner_log = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(out_w, 1)
        import atexit

        # fd 1 itself, as a stage's own output reaches it (pytest captures sys.stdout here)
        atexit.register(lambda: (time.sleep(1.5), os.write(1, b"shipped the last records\n")))
        os.write(1, b"stage output\n")
        warm.exit_child(3, report_w, runner_log)
    os.close(report_w)
    os.close(out_w)
    start = time.monotonic()
    report = os.read(report_r, 4096)
    answered = time.monotonic() - start
    client_saw = b""
    while chunk := os.read(out_r, 4096):  # EOF: the child gave the client's stdout back
        client_saw += chunk
    _, status = os.waitpid(pid, 0)
    finished = time.monotonic() - start
    assert warm_client.decode(report) == {"exit": 3}
    assert answered < 1.0 <= finished  # answered before the 1.5 s exit hook, which still ran
    assert os.waitstatus_to_exitcode(status) == 3
    assert client_saw == b"stage output\n"
    assert log.read_text() == "shipped the last records\n"


# ---------------------------------------------------------------- slow: a real runner


def _env(prefect_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "GPTPIPE_"))}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(prefect_home), GPTPIPE_WARM_IDLE_S="120",
               NO_PROXY="127.0.0.1,localhost")
    return env


def _stage_dir(folder: Path) -> Path:
    folder.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["download"]["builtin"].update(SMALL_DOWNLOAD)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def _gptpipe(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def _stops_answering(url: str, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/health", timeout=2)
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    """Two download stages started at once with no runner up, then a third: (env, dirs, results)."""
    base = tmp_path_factory.mktemp("warm")
    env = _env(base / "prefect-home")
    dirs = [_stage_dir(base / name) for name in ("a", "b", "c")]
    results: dict[int, subprocess.CompletedProcess[str]] = {}

    def stage(i: int) -> None:
        results[i] = _gptpipe(["download"], dirs[i], env)

    try:
        pair = [threading.Thread(target=stage, args=(i,)) for i in (0, 1)]
        for t in pair:
            t.start()
        for t in pair:
            t.join()
        status_after_pair = runner_status(dirs[2], env)
        # The third stage lists what it had to import itself (test_a_warm_stage_imports_nothing).
        env = dict(env, GPTPIPE_WARM_IMPORTS_LOG=str(base / "imports.log"))
        stage(2)
        env.pop("GPTPIPE_WARM_IMPORTS_LOG")
        yield env, dirs, results, status_after_pair
    finally:
        _gptpipe(["warm", "stop"], base, env)


@pytest.mark.slow
def test_concurrent_and_later_stages_share_one_runner(runner):
    env, dirs, results, first = runner
    for i, proc in results.items():
        assert proc.returncode == 0, proc.stderr[-3000:]
        # The child wrote to the client's stdout/stderr and in the client's directory.
        assert "Beginning flow run" in proc.stdout + proc.stderr
        assert (dirs[i] / "data" / "raw" / "corpus.txt").is_file()
    # The two started at once raced to start a runner: one won, and both ran in it.
    assert first["stages_run"] == 2
    again = runner_status(dirs[2], env)
    assert again["pid"] == first["pid"] and again["stages_run"] == 3
    assert again["frozen_objects"] > 100_000  # what it imported, kept out of its children's collections
    assert again["prefect_api_url"].startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_flow_runs_are_recorded_in_the_runners_prefect_server(runner):
    env, dirs, _, _ = runner
    url = runner_status(dirs[2], env)["prefect_api_url"]
    runs = httpx.post(f"{url}/flow_runs/filter", json={}, timeout=30).json()
    assert len(runs) == 3 and all(r["state_type"] == "COMPLETED" for r in runs)
    assert len({r["name"] for r in runs}) == 3  # each child drew fresh randomness for its run name
    flows = {httpx.get(f"{url}/flows/{r['flow_id']}", timeout=30).json()["name"] for r in runs}
    assert flows == {"download"}
    # The runner warmed its server with a flow run of its own, and deleted it with its flow.
    assert {f["name"] for f in httpx.post(f"{url}/flows/filter", json={}, timeout=30).json()} == {"download"}

    def completed_tasks() -> int:
        tasks = httpx.post(f"{url}/task_runs/filter", json={}, timeout=30).json()
        return sum(t["name"].startswith("write_datasets") and t["state_type"] == "COMPLETED" for t in tasks)

    # Task runs arrive as events, which a child ships after its client was answered: poll.
    assert eventually(lambda: completed_tasks() == 3)


@pytest.mark.slow
def test_a_warm_stage_imports_nothing_the_runner_could_have(runner):
    _, dirs, results, _ = runner
    assert results[2].returncode == 0
    log = dirs[2].parent / "imports.log"
    assert log.is_file()  # the child wrote it, even with nothing to list
    # Every module a stage imports itself is paid again by every stage: add it to LAZY_IMPORTS.
    assert log.read_text().splitlines() == []


@pytest.mark.slow
def test_startup_is_measured_from_the_clients_start(runner):
    _, dirs, _, _ = runner
    cold = json.loads((dirs[0] / "reports" / "download.json").read_text())["startup_seconds"]
    cold_b = json.loads((dirs[1] / "reports" / "download.json").read_text())["startup_seconds"]
    warm_run = json.loads((dirs[2] / "reports" / "download.json").read_text())["startup_seconds"]
    # The first two waited for the runner's imports and Prefect's server; the third found both up.
    assert 0 < warm_run < min(cold, cold_b)


@pytest.mark.slow
def test_a_bad_params_file_is_reported_through_the_runner(runner, tmp_path):
    env, _, _, _ = runner
    (tmp_path / "params.yaml").write_text("download:\n  corpus: 3\n")
    proc = _gptpipe(["download"], tmp_path, env)
    assert proc.returncode == 2
    assert "download.corpus" in proc.stderr and "params.yaml" in proc.stderr


@pytest.mark.slow
def test_a_killed_runner_is_replaced_and_a_failing_stage_keeps_its_exit_status(tmp_path):
    env = _env(tmp_path / "prefect-home")
    folder = _stage_dir(tmp_path / "stage")
    try:
        assert _gptpipe(["warm", "start"], folder, env).returncode == 0
        first = runner_status(folder, env)
        old = first["pid"]
        os.kill(old, signal.SIGKILL)  # no clean-up at all: nothing on disk may point at it
        time.sleep(0.5)
        assert runner_status(folder, env) is None
        assert _stops_answering(first["prefect_api_url"])  # its Prefect server died with it
        proc = _gptpipe(["download"], folder, env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        new = runner_status(folder, env)
        assert new["pid"] != old and new["stages_run"] == 1
        shutil.rmtree(folder / "data")
        (folder / "data").write_text("a file where the stage needs a folder")
        proc = _gptpipe(["download"], folder, env)
        assert proc.returncode == 1
        assert "Traceback" in proc.stderr and "data/raw.partial" in proc.stderr
    finally:
        _gptpipe(["warm", "stop"], folder, env)
