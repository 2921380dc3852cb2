"""The warm stage runner: one long-lived process that has imported torch, Prefect and MLflow once
and keeps one Prefect server up, forking a child per stage, so a stage pays neither its imports
nor a server start-up (about 20 s of a fresh process each on a 2-core CPU).

`python -m pipelines <stage>` (what `dvc repro` runs) is the client: it connects to the runner of
its environment, starting one if none answers, hands over its stdin/stdout/stderr, working
directory, environment and `sys.path`, and exits with the stage's exit status. The runner forks
a child that keeps the project's modules as the runner loaded them only if the client's path
finds the same files, unchanged, and imports them afresh otherwise (an edited stage never runs
stale code), points Prefect at the runner's server (or at PREFECT_API_URL when the client sets
one) and runs the flow as `gptpipe <stage>` would in-process. Flow runs are recorded
in that server's database under PREFECT_HOME, as with Prefect's temporary server.
`gptpipe repro` hands over the same way to a runner that is up: its child runs `dvc repro`
(DVC preloaded) in the client's own environment, so DVC's stage commands reach this runner too.
Each child leads a process group, to which the client forwards its signals.

The runner listens on a Linux abstract socket, named after everything that must match for a fork
of it to behave like a fresh process (interpreter, installed packages, its own code, PREFECT_HOME,
PREFECT_API_URL, thread and device variables); the kernel frees the name when the runner dies, so
no stale PID or socket file can mislead a client. Two clients starting runners at once race for
the name: the loser exits and both clients reach the winner. The runner exits after
GPTPIPE_WARM_IDLE_S seconds without a stage (default 300) and stops its Prefect server.
GPTPIPE_WARM=0, or a platform without abstract sockets, runs each stage in its own process.

The client (and the runner's key, address and message format) is pipelines/warm_client.py, kept
apart because every stage command pays its imports; what the runner loads and builds before it
serves is in pipelines/preload.py.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from pipelines.warm_client import MAX_MESSAGE, STARTED_ENV, WarmError, address, decode, encode, idle_seconds

# A file to which each child appends the modules it had to import itself ("stage module" lines):
# what pipelines/preload.py's LAZY_IMPORTS misses, since every such import is paid again by every stage.
IMPORTS_LOG_ENV = "GPTPIPE_WARM_IMPORTS_LOG"
# Packages whose modules a child imports afresh from the client's path.
PROJECT_PACKAGES = ("pipelines", "steps", "model")
# A stage that reported its exit status gets this long to ship Prefect's last logs and events.
DRAIN_LIMIT_S = 120.0


def project_snapshot() -> dict[str, tuple[str, int, int]]:
    snapshot = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.split(".")[0] in PROJECT_PACKAGES and path:
            stat = os.stat(path)
            snapshot[name] = (path, stat.st_mtime_ns, stat.st_size)
    return snapshot


def project_unchanged(snapshot: dict[str, tuple[str, int, int]], path: list[str]) -> bool:
    """Whether the client's `path` finds the project's packages where the runner loaded them,
    with no loaded source file changed since: then its modules are what the client would import."""
    import importlib.machinery

    for package in PROJECT_PACKAGES:
        spec = importlib.machinery.PathFinder.find_spec(package, path)
        loaded = snapshot.get(package)
        if (spec is None) != (loaded is None) or (spec is not None and spec.origin != loaded[0]):
            return False
    for file, mtime, size in snapshot.values():
        try:
            stat = os.stat(file)
        except OSError:
            return False
        if (stat.st_mtime_ns, stat.st_size) != (mtime, size):
            return False
    return True


def forget_project_modules() -> None:
    for name in [n for n in sys.modules if n.split(".")[0] in PROJECT_PACKAGES]:
        del sys.modules[name]


class PrefectServer:
    """Prefect's server as its temporary server runs it (no UI, no background services, the
    database under PREFECT_HOME), but started once for all the stages a runner serves."""

    def __init__(self) -> None:
        import importlib.util

        # Where Prefect is installed, without importing it (seconds this start-up overlaps).
        packages = Path(importlib.util.find_spec("prefect").origin).parent.parent
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{port}/api"
        # The variables Prefect's own SubprocessASGIServer sets: API only, services off.
        # CSRF protection off, whatever the environment says: the UI it protects is off, and the
        # children skip fetching tokens.
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
               "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(packages), "--factory",
             "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def wait_healthy(self, timeout_s: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise WarmError(f"Prefect's server exited ({self.process.returncode}) during start-up")
                try:
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise WarmError(f"Prefect's server did not answer at {self.api_url} within {timeout_s:.0f} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _die_with_parent() -> None:
    """SIGTERM to this process when the runner dies, even by SIGKILL, so no orphaned server or
    stage outlives it. (Linux: prctl PR_SET_PDEATHSIG, tied to the thread that forked.)"""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Runner:
    """Accepts requests on the abstract socket; forks a child per stage and reports its exit."""

    def __init__(self, listener: socket.socket, key: str, prefect_api_url: str | None, idle_s: float,
                 snapshot: dict[str, tuple[str, int, int]], settings_key: SettingsKey | None = None) -> None:
        self.listener = listener
        self.snapshot = snapshot
        self.settings_key = settings_key
        self.key = key
        self.prefect_api_url = prefect_api_url
        self.idle_s = idle_s
        # child pid -> its client's connection; None once the child reported its exit status and
        # the client was answered (the child is then only shipping Prefect's last records)
        self.children: dict[int, socket.socket | None] = {}
        self.reports: dict[int, int] = {}  # read end of a child's report pipe -> the child's pid
        self.reported_at: dict[int, float] = {}  # child pid -> when it reported
        self.stages_run = 0
        self.stopping = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "key": self.key, "prefect_api_url": self.prefect_api_url,
                "stages_run": self.stages_run, "running": len(self.children), "idle_s": self.idle_s,
                "frozen_objects": gc.get_freeze_count()}

    def serve(self) -> None:
        # SIGCHLD wakes select() at once: a finished stage is reported without polling delay.
        signal.set_wakeup_fd(self.wake_w.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop_signal)
        last_active = time.monotonic()
        while True:
            self._reap()
            self._end_overdue_drains()
            if not self.children:
                if self.stopping or time.monotonic() - last_active >= self.idle_s:
                    return
                timeout: float | None = self.idle_s - (time.monotonic() - last_active)
            elif self.reported_at:
                timeout = max(0.0, min(self.reported_at.values()) + DRAIN_LIMIT_S - time.monotonic())
            else:
                timeout = None
            conns = [c for c in self.children.values() if c is not None]
            reports = list(self.reports)
            ready, _, _ = select.select([self.listener, self.wake_r, *conns, *reports], [], [], timeout)
            if self.wake_r in ready:
                try:
                    while self.wake_r.recv(4096):
                        pass
                except BlockingIOError:
                    pass
            for fd in reports:
                if fd in ready:
                    self._child_report(fd)
            for conn in conns:
                if conn in ready and conn in self.children.values():  # not answered just now
                    self._client_message(conn)
            if self.listener in ready:
                self._accept()
                last_active = time.monotonic()
            if self.children:
                last_active = time.monotonic()

    def _stop_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        for pid, conn in self.children.items():
            if conn is not None:  # a stage still running; one that reported may finish draining
                _kill_group(pid, signal.SIGTERM)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid not in self.children:
                continue  # e.g. the Prefect server
            conn = self.children.pop(pid)
            self.reported_at.pop(pid, None)
            for fd in [fd for fd, owner in self.reports.items() if owner == pid]:
                os.close(fd)
                del self.reports[fd]
            if conn is not None:
                # Died before reporting (killed, or crashed in C): its wait status is the answer.
                code = os.waitstatus_to_exitcode(wait_status)
                _answer(conn, 128 - code if code < 0 else code)  # killed by signal N: 128 + N, as a shell says

    def _child_report(self, fd: int) -> None:
        """The child's exit status, sent as its stage ended and before it ships Prefect's last
        logs and events: the client is answered now, and DVC moves on while the child drains."""
        pid = self.reports.pop(fd)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        conn = self.children.get(pid)
        if data and conn is not None:
            _answer(conn, int(decode(data)["exit"]))
            self.children[pid] = None
            self.reported_at[pid] = time.monotonic()

    def _end_overdue_drains(self) -> None:
        for pid, reported in list(self.reported_at.items()):
            if time.monotonic() - reported > DRAIN_LIMIT_S:
                print(f"gptpipe warm runner: stage process {pid} still shipping Prefect records "
                      f"{DRAIN_LIMIT_S:.0f} s after its stage ended; killed", flush=True)
                _kill(pid, signal.SIGKILL)
                del self.reported_at[pid]

    def _pid_of(self, conn: socket.socket) -> int:
        return next(p for p, c in self.children.items() if c is conn)

    def _client_message(self, conn: socket.socket) -> None:
        pid = self._pid_of(conn)
        try:
            data = conn.recv(MAX_MESSAGE)
        except OSError:
            data = b""
        if not data:
            # The client died (DVC interrupted, say): its command must not run on unobserved.
            _kill_group(pid, signal.SIGTERM)
            return
        signum = decode(data).get("signal")
        if isinstance(signum, int):
            _kill_group(pid, signum)

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        if not same_user(conn):
            conn.close()  # another local user: refused before a byte is read
            return
        conn.settimeout(10)
        try:
            data, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        except OSError:
            conn.close()
            return
        if not data:
            conn.close()
            return
        request = decode(data)
        op = request.get("op")
        if op == "run" and len(fds) == 3 and not self.stopping:
            self._fork(conn, request, fds)
        else:
            if op == "stop":
                self.stopping = True
            if op in ("status", "stop"):
                reply = self.status()
            elif op == "run" and self.stopping:
                # Nothing started: its client runs the command itself. A `gptpipe repro` the runner
                # still runs goes on, and its next stages run in their own processes.
                reply = {"refused": "the warm runner is stopping"}
            else:
                reply = {"exit": 1}
            conn.sendall(encode(reply))
            conn.close()
        for fd in fds:
            os.close(fd)

    def _fork(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            runner_log = None
            try:
                runner_log = os.dup(1)  # the runner's own output (its log file), before the client's
                os.close(report_r)
                self._become_stage(conn, request, fds)
                code = run_child(request, self.prefect_api_url, self.snapshot, self.settings_key)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                exit_child(code, report_w, runner_log)
        os.close(report_w)
        try:
            os.setpgid(pid, pid)  # as the child does itself: whichever runs first, no signal misses it
        except OSError:
            pass  # it has already exited
        conn.setblocking(True)
        self.children[pid] = conn
        self.reports[report_r] = pid
        self.stages_run += 1

    def _become_stage(self, conn: socket.socket, request: dict[str, Any], fds: list[int]) -> None:
        """In the child: drop the runner's sockets and signal set-up, take the client's stdio, and
        lead a process group of its own, which the client's signals go to (pipelines/warm_client.py):
        what the command starts (DVC's stage commands, torchrun) gets them too, as a terminal's
        foreground job would."""
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _die_with_parent()  # a runner killed outright takes its stages along: no unobserved runs
        for sock in (self.listener, self.wake_r, self.wake_w, conn, *self.children.values()):
            if sock is not None:
                sock.close()
        for fd in self.reports:  # other children's report pipes
            os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)


def same_user(conn: socket.socket) -> bool:
    """Whether the process at the other end of `conn` runs as this runner's user. An abstract
    socket has no file permissions: any local user can connect to it, and a request runs a stage
    (code from the directory it names) as the runner's user. The kernel vouches for the peer's
    uid (SO_PEERCRED: pid, uid, gid as three C ints)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid == os.getuid()


def exit_child(code: int, report_fd: int | None = None, runner_log: int | None = None) -> None:
    """End the child: report its exit status (so the client, and DVC, go on at once), then do
    what interpreter shutdown begins with (threading's exit hooks, where Prefect drains its queues
    of logs and events for the server, about 0.15 s, then atexit) with its output moved to the
    runner's log, since the client that lent its stdio has gone; but skip tearing down thousands
    of modules: seconds of CPU for nothing."""
    import atexit
    import threading

    try:
        if report_fd is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(report_fd, encode({"exit": code}))
            os.close(report_fd)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            if runner_log is not None:
                os.dup2(runner_log, 1)
                os.dup2(runner_log, 2)
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_child(request: dict[str, Any], prefect_api_url: str | None, snapshot: dict[str, tuple[str, int, int]],
              settings_key: SettingsKey | None = None) -> int:
    """In the forked child: become the client (directory, environment, path) and run its command
    (a stage, or `repro`) with the project's modules as loaded, unless the client's would differ:
    then afresh."""
    import random

    import numpy as np

    # Only to log them (GPTPIPE_WARM_IMPORTS_LOG): touching every module name's refcount copies
    # thousands of the runner's memory pages into the child (copy-on-write), 10-60 ms.
    inherited = set(sys.modules) if request["env"].get(IMPORTS_LOG_ENV) else set()
    runs_flow = runs_a_flow(request)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(child_environ(request, prefect_api_url))
    overrides = prefect_overrides(request["env"], prefect_api_url) if runs_flow else {}
    sys.path[:] = request["path"]
    if not project_unchanged(snapshot, sys.path):
        forget_project_modules()
    sys.argv = ["gptpipe", *request["argv"]]
    # A fresh process would start from fresh entropy; every child would otherwise share the
    # runner's random state (Prefect names flow runs with `random`).
    random.seed()
    np.random.seed()
    import prefect.context

    import pipelines
    from pipelines.__main__ import main

    pipelines.apply_env_defaults()  # into the client's environment
    if runs_flow and (settings_key is None or settings_inputs(os.environ, Path.cwd()) != settings_key):
        # Prefect's settings as the client's environment and directory make them, not the
        # runner's (50 ms, so only where they differ).
        prefect.context.refresh_global_settings_context()
        if overrides:
            without_heartbeats()
    try:
        return main(request["argv"], warm=False)
    finally:
        log_own_imports(request["argv"][0], inherited)


def runs_a_flow(request: dict[str, Any]) -> bool:
    """A stage command runs a Prefect flow; `repro` runs DVC, which starts stage commands."""
    return bool(request["argv"][0] != "repro")


def child_environ(request: dict[str, Any], prefect_api_url: str | None) -> dict[str, str]:
    """The environment a child runs its client's command in: the client's, and for a stage, its
    start time and the runner's own Prefect server. Not for `repro`, which runs DVC, not a flow:
    DVC's stage commands are clients of their own, which must find this runner by the caller's
    environment (the Prefect URL is part of a runner's key) and count from their own start."""
    env = dict(request["env"])
    if runs_a_flow(request):
        env[STARTED_ENV] = repr(request["started"])
        env.update(prefect_overrides(env, prefect_api_url))
    return env


def log_own_imports(stage: str, inherited: set[str]) -> None:
    """With GPTPIPE_WARM_IMPORTS_LOG set, append the modules this child imported that the runner
    had not. Not the project's own code: its packages, which a child may re-import on purpose, and
    its metric scripts (steps/evaluation/eval_modules), which `evaluate` loads as modules named after their
    content's hash (`evaluate_modules.*`) from the client's files, a few ms each."""
    target = os.environ.get(IMPORTS_LOG_ENV)
    if not target or not inherited:
        return
    own = sorted(n for n in set(sys.modules) - inherited
                 if n.split(".")[0] not in (*PROJECT_PACKAGES, "evaluate_modules"))
    with open(target, "a", encoding="utf-8") as out:
        out.writelines(f"{stage} {name}\n" for name in own)


def prefect_overrides(env: dict[str, str] | os._Environ[str], prefect_api_url: str | None) -> dict[str, str]:
    """What a child adds to its client's environment: the runner's own Prefect server, unless the
    client names a server, and no CSRF tokens, which that server does not take (its env says so)."""
    if not prefect_api_url or env.get("PREFECT_API_URL"):
        return {}
    return {"PREFECT_API_URL": prefect_api_url, "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED": "false"}


SettingsKey = tuple[tuple[tuple[str, str], ...], str, int | None]


def settings_inputs(env: dict[str, str] | os._Environ[str], cwd: Path) -> SettingsKey | None:
    """What Prefect builds its settings from, beside its defaults: the PREFECT_* variables and
    the profiles file (by its modification time). None where the directory holds a config file
    Prefect also reads (.env, prefect.toml, a [tool.prefect] table in pyproject.toml): then a
    child always builds its settings itself."""
    if (cwd / ".env").exists() or (cwd / "prefect.toml").exists():
        return None
    try:
        if "tool.prefect" in (cwd / "pyproject.toml").read_text(encoding="utf-8", errors="replace"):
            return None
    except OSError:
        pass
    home = Path(env.get("PREFECT_HOME") or "~/.prefect").expanduser()
    profiles = Path(env.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        modified: int | None = profiles.stat().st_mtime_ns
    except OSError:
        modified = None
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith("PREFECT_"))), str(profiles), modified


def settings_for_children(prefect_api_url: str | None) -> SettingsKey | None:
    """In the runner, before it serves: the Prefect settings a child of a client with the
    runner's own environment would build, built once here; their inputs, which each child
    compares with its own to reuse them."""
    import prefect.context

    overrides = prefect_overrides(os.environ, prefect_api_url)
    os.environ.update(overrides)
    prefect.context.refresh_global_settings_context()
    if overrides:
        without_heartbeats()
    return settings_inputs(os.environ, Path.cwd())


def without_heartbeats() -> None:
    """No flow-run heartbeats against the runner's own server. They exist to flag crashed runs,
    which only a server's background services do, and the temporary server runs none; yet the
    heartbeat thread sleeps in 1 s steps, so ending each flow waited up to a second for it."""
    import prefect.context

    root = prefect.context.GLOBAL_SETTINGS_CONTEXT
    flows = root.settings.flows.model_copy(update={"heartbeat_frequency": None})
    settings = root.settings.model_copy(update={"flows": flows})
    prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.SettingsContext(profile=root.profile, settings=settings)


def _answer(conn: socket.socket, code: int) -> None:
    try:
        conn.sendall(encode({"exit": code}))
    except OSError:
        pass  # the client is gone
    conn.close()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _kill_group(pid: int, signum: int) -> None:
    """Signal the process group a child leads (its pid), with what its command started."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        _kill(pid, signum)  # no group (yet): the child alone


def serve(key: str) -> int:
    """The runner's main: claim the name first (a second runner exits at once), then warm up."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(address(key))
    except OSError:
        print(f"gptpipe warm runner {key}: another runner holds the name; exiting", flush=True)
        return 0
    # Listening before the warm-up: clients connect at once and wait in the backlog.
    listener.listen(16)
    started = time.perf_counter()
    server = None
    try:
        if not os.environ.get("PREFECT_API_URL"):
            # Prefect's server boots in its own process while this one imports.
            server = PrefectServer()
        from pipelines import preload

        preload.preload()
        snapshot = project_snapshot()
        if server is not None:
            server.wait_healthy()
        url = server.api_url if server is not None else None
        preload.warm_prefect(url or os.environ["PREFECT_API_URL"], own_server=server is not None)
        os.chdir("/")  # hold no project directory open
        settings_key = settings_for_children(url)
        # Everything built so far lives as long as the runner: out of the collector's sight, so a
        # child's full collection (0.4 s over ~800k objects here) never walks it, nor copies its
        # pages (copy-on-write) to update their GC headers.
        gc.collect()
        gc.freeze()
        print(f"gptpipe warm runner {key} (pid {os.getpid()}) ready in {time.perf_counter() - started:.1f} s; "
              f"Prefect API {url or os.environ['PREFECT_API_URL']}", flush=True)
        Runner(listener, key, url, idle_seconds(), snapshot, settings_key).serve()
    finally:
        listener.close()
        if server is not None:
            server.stop()
    print(f"gptpipe warm runner {key}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"] and len(sys.argv) == 3:
        code = serve(sys.argv[2])
        sys.stdout.flush()
        # Skip the interpreter's tear-down of thousands of modules: seconds of CPU for nothing.
        os._exit(code)
    sys.exit("usage: python -m pipelines.warm serve KEY (started by `gptpipe <stage>`; see `gptpipe warm`)")
