"""Shared test fixtures."""

import fcntl
import functools
import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import (
    BaseHTTPRequestHandler,
    SimpleHTTPRequestHandler,
    ThreadingHTTPServer,
)
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow (end-to-end) tests first, each module's tests in their order: with test
    workers (`make test`), the long modules start at once and the short ones fill in beside them,
    instead of one long module running alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny test models gain nothing from intra-op threads, and on a busy 2-core machine the
    hand-off between threads costs milliseconds per matmul (the slow end-to-end test runs its
    stages in subprocesses, which keep torch's default)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def isolated_prefect_server(tmp_path_factory):
    """The local Prefect server (pipelines/prefect_server.py) that stage processes start on first
    need lives in a folder of this session, not the user's: every test, and every subprocess they
    start, shares it (started at most once); it is stopped when the session ends. Tests that need
    a server of their own set GPTPIPE_PREFECT_HOME themselves."""
    from pipelines import prefect_server

    home = tmp_path_factory.mktemp("prefect-server")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(prefect_server.HOME_ENV, str(home))
        yield home
        prefect_server.stop(home)


@pytest.fixture
def prefect_api(isolated_prefect_server, monkeypatch) -> str:
    """The session's local Prefect server, started on first need; its API URL, set as
    PREFECT_API_URL for the test (subprocesses inherit it)."""
    from pipelines import prefect_server

    server, _ = prefect_server.start(isolated_prefect_server)
    monkeypatch.setenv(prefect_server.API_URL_ENV, server.api_url)
    return server.api_url


@pytest.fixture(scope="module")
def prefect_api_module(isolated_prefect_server) -> str:
    """The session's local Prefect server for module-scoped fixtures (a process they start is told
    the URL itself): its API URL. A module that serves a deployment on it needs no server of its own,
    whose start costs seconds on a busy machine."""
    from pipelines import prefect_server

    server, _ = prefect_server.start(isolated_prefect_server)
    return server.api_url


@pytest.fixture(autouse=True)
def prefect_api_url_restored():
    """A command run in-process (`main(["retrain"])`) points os.environ at a Prefect server, as its
    own process would: the next test starts from the environment this one had."""
    before = os.environ.get("PREFECT_API_URL")
    yield
    if before is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = before


SHARED = ROOT.parent / "shared"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (the book's files, GPT-2 BPE files), beside the checkout; skip when absent."""
    path = SHARED / "data"
    if not (path / "book").is_dir():
        pytest.skip(f"{path} is absent (the book's data lives beside the checkout)")
    return path


def apt_install_for_ci(install: list[str]) -> None:
    """Run `apt-get update`, then `install` (an `apt-get install -y ...` line, after sudo unless root),
    non-interactively: how the tests get a Debian package they need when CI is set. A failure skips
    the test with the command and its error."""
    apt = install[:install.index("install")]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # One install at a time across test workers (pytest -n): apt-get refuses to run beside another.
    with open(Path(tempfile.gettempdir()) / "gptpipe-tests-apt.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # A fresh CI image may have no package lists yet.
        for cmd in ([*apt, "update"], [*install, "--no-install-recommends"]):
            try:
                proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as err:
                pytest.skip(f"CI is set but `{' '.join(cmd)}` could not run: {err}")
            if proc.returncode != 0:
                pytest.skip(f"CI is set but `{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def free_port() -> int:
    """A TCP port nothing listens on (bound, read, released): for refused-connection tests."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loopback:
    """HTTP servers on 127.0.0.1, each in a daemon thread; `stop()` shuts every one down."""

    def __init__(self) -> None:
        self._running: list[tuple[ThreadingHTTPServer, threading.Thread, Callable[[], None] | None]] = []

    def start(self, httpd: ThreadingHTTPServer, on_stop: Callable[[], None] | None = None) -> str:
        """Serve `httpd` until `stop()`; `on_stop` runs first (e.g. to release a sleeping handler).
        Returns the server's base URL."""
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._running.append((httpd, thread, on_stop))
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    def stop(self) -> None:
        for httpd, thread, on_stop in reversed(self._running):
            if on_stop is not None:
                on_stop()
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)
        self._running.clear()


@pytest.fixture
def loopback(monkeypatch) -> Iterator[Loopback]:
    """Start loopback HTTP servers for one test; a proxy in the environment must not intercept them."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = Loopback()
    yield servers
    servers.stop()


@pytest.fixture(scope="module")
def loopback_module() -> Iterator[Loopback]:
    """`loopback` for module-scoped fixtures (an end-to-end run shared by several tests, whose
    subprocesses get NO_PROXY from their own environment)."""
    servers = Loopback()
    yield servers
    servers.stop()


class QuietHandler(BaseHTTPRequestHandler):
    """A fake server's handler: no access log, and `reply` that tolerates a client gone first."""

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None,
              content_length: int | None = None) -> None:
        """Send one response; `content_length` may lie (a truncated-body test)."""
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first, as the timeout tests mean it to

    def log_message(self, format: str, *args: object) -> None:
        pass


class FileServer:
    """Serves one folder; `fail` queues status codes for the next requests; `requests` logs paths."""

    def __init__(self, folder: Path, servers: Loopback) -> None:
        self.requests: list[str] = []
        self.fail: list[int] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                if server.fail:
                    self.send_error(server.fail.pop(0))
                    return
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.url = servers.start(ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder))))


@pytest.fixture
def serve_folder(loopback):
    """Start loopback HTTP servers over folders: `server = serve_folder(path)`; `server.url`."""
    return lambda folder: FileServer(folder, loopback)


@pytest.fixture(scope="module")
def serve_folder_module(loopback_module):
    """`serve_folder` for module-scoped fixtures."""
    return lambda folder: FileServer(folder, loopback_module)


# MLflow stores timestamps in milliseconds: pause so that runs start, and summaries follow the
# per-step history, at distinct times (as they do in real stages).
TICK = 0.01

# dvc_exp name -> (trainable, final test_accuracy, final val_loss, summary tokens_per_s)
CLASSIFIER_RUNS = {
    "cls-head": ("head", 0.90, 0.40, 900.0),
    "cls-block": ("last_block", 0.95, 0.30, 700.0),
    "cls-lora": ("lora", 0.93, 0.20, 800.0),
}


def _record_stage_run(root: Path, stage: str, params: dict, history: list[dict], summary: dict,
                      fail: bool = False) -> str:
    import time

    from steps.tracking.runs import stage_run

    with stage_run(stage, params, params_hash="h", inputs=[], experiment="cmp", root=root) as run:
        for row in history:
            run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        time.sleep(TICK)
        run.log_metrics(summary)  # no step, as pipelines/stage.py logs a stage's summary
        if fail:
            raise RuntimeError("stage failed")
    time.sleep(TICK)
    return run.run_id


@pytest.fixture(scope="session")
def mlflow_runs(tmp_path_factory):
    """An MLflow store (experiment `cmp`) with three finished classifier runs that differ only in
    `trainable`, one failed classifier run and one instruction run; {dvc_exp: run id} plus the URI."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ids = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)
        for name, (trainable, accuracy, val_loss, tokens_per_s) in CLASSIFIER_RUNS.items():
            mp.setenv("DVC_EXP_NAME", name)
            params = {"seed": 123, "finetune_classifier.trainable": trainable,
                      "finetune_classifier.lr": 0.001, "finetune_classifier.epochs": 2}
            history = [
                {"step": 0, "val_loss": 0.7, "val_accuracy": 0.5},
                {"step": 5, "train_loss": 0.6, "tokens_per_s": 1000.0, "val_loss": val_loss + 0.1,
                 "val_accuracy": accuracy - 0.1},
                {"step": 10, "train_loss": 0.3, "tokens_per_s": 1100.0, "val_loss": val_loss,
                 "val_accuracy": accuracy},
            ]
            summary = {"test_accuracy": accuracy, "test_f1": accuracy - 0.02, "val_accuracy": accuracy,
                       "train_loss": 0.25, "val_loss": val_loss, "trainable_parameters": 1000,
                       "peak_memory_mb": 50.0, "seconds_per_step": 0.1, "tokens_per_s": tokens_per_s}
            ids[name] = _record_stage_run(root, "finetune_classifier", params, history, summary)
        mp.setenv("DVC_EXP_NAME", "cls-all")
        with pytest.raises(RuntimeError):
            _record_stage_run(root, "finetune_classifier", {"finetune_classifier.trainable": "all"},
                              [], {"test_accuracy": 0.99}, fail=True)
        mp.setenv("DVC_EXP_NAME", "inst-lora")
        ids["inst-lora"] = _record_stage_run(
            root, "finetune_instruct", {"seed": 123, "finetune_instruct.method": "lora"},
            [{"step": 0, "val_loss": 3.0}, {"step": 4, "train_loss": 2.0, "val_loss": 2.5}],
            {"train_loss": 1.9, "val_loss": 2.5, "tokens_per_s": 600.0},
        )
        mlflow.set_tracking_uri(None)  # forget the global URI MLflow keeps beside the env var
    return SimpleNamespace(root=root, uri=uri, ids=ids)


@pytest.fixture
def mlflow_store(mlflow_runs, monkeypatch):
    """`mlflow_runs`, with MLFLOW_TRACKING_URI pointing at them (restored afterwards)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_runs.uri)
    return mlflow_runs
