"""The one way this project starts a Prefect server: Prefect's own CLI (`prefect server start`) on
127.0.0.1, as a detached process in a session of its own, its output in a log file.

The local server. Stage processes (and `gptpipe retrain|schedule`) record their flow runs on one
long-lived server per user, so that every checkout's runs show in one UI and no process pays for a
temporary server of its own:

- `PREFECT_API_URL` set in the environment (a team's server, `source .services/env.sh`) wins:
  nothing is started or looked up.
- Otherwise the server recorded in the server home (below) is used if it answers `/api/health`,
  else it is started there, once: a file lock makes concurrent first starts (two stage processes,
  `dvc exp run --jobs 2`) produce one server. It keeps running after the command; `gptpipe server
  stop` stops it, `gptpipe server status` shows its UI address.
- The server home is `$GPTPIPE_PREFECT_HOME`, else `$PREFECT_HOME`, else `~/.prefect` (Prefect's own
  default). It is the server's PREFECT_HOME, so its database is Prefect's default SQLite file there
  (`prefect.db`), and it holds `gptpipe-server.json` (url, port, pid), `gptpipe-server.log` and
  `gptpipe-server.lock`. Tests set GPTPIPE_PREFECT_HOME to isolate their server.
- Port 4200 (Prefect's default) unless something else listens there; then a free port, recorded in
  the state file.

Team mode (pipelines/team/services.py) starts its Prefect server with the same command, environment
and launcher (`command`, `environment`, `spawn`), with its own home, port and database.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from model.atomic import write_json

HOME_ENV = "GPTPIPE_PREFECT_HOME"
API_URL_ENV = "PREFECT_API_URL"
DEFAULT_PORT = 4200
STATE_FILE = "gptpipe-server.json"
LOG_FILE = "gptpipe-server.log"
LOCK_FILE = "gptpipe-server.lock"
PORT_ATTEMPTS = 3  # a port found free can be taken before the server binds it: then another one
START_TIMEOUT_S = 180  # the first start creates Prefect's database: slow on a busy small machine
STOP_TIMEOUT_S = 30


class ServerError(RuntimeError):
    """The server cannot start or be read; the message says why and what to do."""


@dataclass(frozen=True)
class LocalServer:
    """The project's local Prefect server, as its state file records it."""

    home: str
    port: int
    pid: int
    create_time: float  # with the pid, tells our process from a later one that reuses its number

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return Path(self.home) / LOG_FILE


def server_home(env: dict[str, str] | None = None) -> Path:
    """Where the local server keeps its database, state, log and lock (see the module's docstring)."""
    env = os.environ if env is None else env
    return Path(env.get(HOME_ENV) or env.get("PREFECT_HOME") or "~/.prefect").expanduser().resolve()


# ---------------------------------------------------------------------------
# The launcher, shared with team mode
# ---------------------------------------------------------------------------


def command(port: int) -> list[str]:
    """Prefect's CLI, serving the API and UI on loopback only."""
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def environment(home: Path, database_url: str | None = None) -> dict[str, str]:
    """The server's environment: this one, with `home` as PREFECT_HOME and the database given (None:
    Prefect's default, SQLite in `home`)."""
    # The server must not act as a client of some other server the caller's shell points at.
    env = {k: v for k, v in os.environ.items() if k not in (API_URL_ENV, "PREFECT_API_KEY")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    else:
        env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    return env


def spawn(cmd: list[str], env: dict[str, str], cwd: Path, log: Path) -> psutil.Process:
    """Start a server process that outlives its caller: a session of its own (no signal from the
    caller's terminal reaches it; `terminate` signals its whole process group, since the servers'
    CLIs run their web servers as child processes), output appended to `log`."""
    with open(log, "ab") as fh:
        child = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=fh,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    return psutil.Process(child.pid)


def healthy(url: str, timeout: float = 5) -> bool:
    """Whether `url` (a health endpoint) answers 200."""
    # No proxy: a proxy from the environment must not answer for a loopback server.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def alive(proc: psutil.Process | None) -> bool:
    try:
        return proc is not None and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def live_process(pid: int, create_time: float) -> psutil.Process | None:
    """The running process a record (pid and start time) names; None if it exited or its pid now
    belongs to another process (a start time more than 1 s off)."""
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > 1:
            return None
    except psutil.Error:
        return None
    return proc if alive(proc) else None


def terminate(*procs: psutil.Process) -> None:
    """SIGTERM each server's process group (all at once: shutting down takes seconds each), SIGKILL
    the groups that outlive STOP_TIMEOUT_S, then any worker a leader left behind."""
    pending = list(procs)
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10)):
        for proc in pending:
            _signal_group(proc.pid, sig)
        _, pending = psutil.wait_procs(pending, timeout=wait)  # reaps those that are our children
        if not pending:
            break
    for proc in procs:
        _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the whole group is gone
        pass


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------------------
# The local server: found, started on first need, stopped
# ---------------------------------------------------------------------------


def recorded(home: Path | None = None) -> LocalServer | None:
    """The server the state file in `home` names, if its process still runs (healthy or not yet)."""
    path = (home or server_home()) / STATE_FILE
    try:
        server = LocalServer(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise ServerError(f"{path} is unreadable ({err}): stop the server by hand if one runs, then delete "
                          "the file") from None
    return server if live_process(server.pid, server.create_time) else None


def running(home: Path | None = None) -> LocalServer | None:
    """The local server if it runs and answers its health check."""
    server = recorded(home)
    return server if server is not None and healthy(f"{server.api_url}/health") else None


def start(home: Path | None = None, port: int = DEFAULT_PORT) -> tuple[LocalServer, bool]:
    """The local server in `home`, started unless it runs; (server, whether this call started it).
    Waits until it is healthy."""
    home = home or server_home()
    found = running(home)  # the usual case, without waiting for the lock
    if found is not None:
        return found, False
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home):
        found = recorded(home)  # started meanwhile by another process, which held the lock until healthy
        if found is not None:
            _await_healthy(found)
            return found, False
        chosen = port if port_free(port) else _any_free_port()
        tried = 1
        while (server := _spawn_healthy(home, chosen)) is None:
            # Free when chosen, taken when the server tried to bind it: another server (of another
            # home) started on it meanwhile. Any other failure raised in _spawn_healthy.
            if tried == PORT_ATTEMPTS:
                raise ServerError(f"port {chosen} and {tried - 1} before it were taken while the Prefect server "
                                  f"started; the end of {home / LOG_FILE}:\n{log_tail(home / LOG_FILE)}")
            chosen, tried = _any_free_port(), tried + 1
    return server, True


def _spawn_healthy(home: Path, port: int) -> LocalServer | None:
    """Start the server on `port` and wait until it is healthy; None if it failed because something
    else took the port meanwhile."""
    proc = spawn(command(port), environment(home), cwd=home, log=home / LOG_FILE)
    server = LocalServer(str(home), port, proc.pid, proc.create_time())
    write_json(home / STATE_FILE, asdict(server))
    try:
        _await_healthy(server)
        return server
    except ServerError:
        terminate(proc)
        (home / STATE_FILE).unlink(missing_ok=True)
        if port_free(port):
            raise
        return None


def stop(home: Path | None = None) -> LocalServer | None:
    """Stop the local server in `home`; the one stopped, or None if none ran."""
    home = home or server_home()
    if not (home / STATE_FILE).exists():
        return None
    with _locked(home):
        server = recorded(home)
        proc = server and live_process(server.pid, server.create_time)
        if proc is not None:
            terminate(proc)
        (home / STATE_FILE).unlink(missing_ok=True)
    return server


def use_for_this_process() -> str:
    """Point this process (and its children) at a Prefect API before Prefect reads its settings:
    PREFECT_API_URL as set, else the local server, started on first need (said on stderr)."""
    if os.environ.get(API_URL_ENV):
        return os.environ[API_URL_ENV]
    server, started = start()
    if started:
        print(f"gptpipe: started a Prefect server for your pipeline runs (UI {server.ui_url}, pid {server.pid}, "
              f"log {server.log}); it keeps running for the next runs: `gptpipe server stop` stops it",
              file=sys.stderr)
    os.environ[API_URL_ENV] = server.api_url
    return server.api_url


def _await_healthy(server: LocalServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        answered = healthy(f"{server.api_url}/health", timeout=2)
        # Alive checked after the answer: a server of another home on the same port answers too.
        if live_process(server.pid, server.create_time) is None:
            raise ServerError(f"the Prefect server exited while starting; the end of {server.log}:\n"
                              f"{log_tail(server.log)}")
        if answered:
            return
        if time.monotonic() > deadline:
            raise ServerError(f"the Prefect server is not healthy after {START_TIMEOUT_S} s ({server.api_url}); "
                              f"the end of {server.log}:\n{log_tail(server.log)}")
        time.sleep(0.25)


def _any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One process at a time starts or stops the server of `home` (the kernel releases the lock if
    its holder dies)."""
    with open(home / LOCK_FILE, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
