"""The client side of the warm stage runner (pipelines/warm.py): what `python -m pipelines <stage>`
runs before it hands the stage over, and `gptpipe warm start|status|stop`.

Every stage command that `dvc repro` starts pays this module's imports before anything else
happens, so it imports only modules that load fast: no `re` (which json, pathlib, typing, logging
and subprocess all pull in), no third-party code. Messages go as `marshal` data: both ends are the
same interpreter (the runner's key names it) and the runner accepts only its own user's
connections (SO_PEERCRED), so a format meant for trusted data is the right one.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import signal
import site
import socket
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: `typing` imports `re`
    import subprocess
    from typing import Any

ENABLE_ENV = "GPTPIPE_WARM"
IDLE_ENV = "GPTPIPE_WARM_IDLE_S"
DEFAULT_IDLE_S = 300.0
# The client's process start (Unix time): a stage's startup_seconds counts from there, not from
# the fork, so the reported cost is what the caller waited.
STARTED_ENV = "GPTPIPE_STAGE_STARTED"
# Variables a fork cannot change after the fact: read at import or server start-up.
KEY_ENV = ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_PROFILE", "PYTHONPATH", "OMP_NUM_THREADS",
           "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTORCH_CUDA_ALLOC_CONF")
# The runner's own code: a change to any of these files means a different runner.
RUNNER_SOURCES = ("warm.py", "warm_client.py", "preload.py")
MAX_MESSAGE = 1 << 20  # one request: argv, cwd, environment, sys.path (a few kB)
CONNECT_TIMEOUT_S = 600.0  # a cold start imports everything and starts Prefect's server


class WarmError(RuntimeError):
    """The runner could not be reached or started; the caller runs the stage in-process."""


def encode(message: dict[str, Any]) -> bytes:
    return marshal.dumps(message)


def decode(data: bytes) -> dict[str, Any]:
    message = marshal.loads(data)
    if not isinstance(message, dict):
        raise ValueError(f"a warm-runner message must be a dict, got {type(message).__name__}")
    return message


def process_start_time() -> float:
    """When this process started (Unix time), to the kernel's clock tick (10 ms): what a stage's
    startup_seconds counts from. Not psutil's create_time(), which adds Linux's boot time in whole
    seconds (/proc/stat's btime) and so reads up to a second early; /proc/uptime has the tick."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            stat = f.read()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime: ticks after boot
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):  # not Linux
        import psutil

        return psutil.Process().create_time()


def enabled(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return sys.platform.startswith("linux") and env.get(ENABLE_ENV, "1") != "0"


def installed_packages() -> str:
    """The interpreter's site-packages folder (a venv's own), whose mtime changes when a package
    is installed or removed. site's answer: sysconfig would cost this import-lean module 5 ms."""
    for folder in site.getsitepackages():
        if os.path.isdir(folder):
            return folder
    return ""


def runner_key(env: dict[str, str] | None = None) -> str:
    """What a fork inherits and cannot change, hashed: runners with different keys never mix."""
    env = os.environ if env is None else env
    digest = hashlib.sha256()
    packages = installed_packages()
    for part in (sys.executable, str(os.stat(packages).st_mtime_ns) if packages else "",
                 *(f"{k}={env.get(k, '')}" for k in KEY_ENV)):
        digest.update(part.encode() + b"\0")
    here = os.path.dirname(os.path.abspath(__file__))
    for module in RUNNER_SOURCES:
        with open(os.path.join(here, module), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def address(key: str) -> str:
    # Leading NUL: Linux's abstract namespace, no file on disk.
    return f"\0gptpipe-warm-{os.getuid()}-{key}"


def log_file(env: dict[str, str] | None = None) -> str:
    """The runner's log: gptpipe-warm.log in PREFECT_HOME (default ~/.prefect)."""
    env = os.environ if env is None else env
    home = os.path.expanduser(env.get("PREFECT_HOME") or os.path.join("~", ".prefect"))
    return os.path.join(home, "gptpipe-warm.log")


def idle_seconds(env: dict[str, str] | None = None) -> float:
    env = os.environ if env is None else env
    text = env.get(IDLE_ENV, "")
    try:
        return float(text) if text else DEFAULT_IDLE_S
    except ValueError as err:
        raise WarmError(f"{IDLE_ENV}={text!r}: expected a number of seconds, e.g. 300") from err


def _connect(key: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.connect(address(key))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        return None
    return sock


def spawn_runner(key: str) -> subprocess.Popen[bytes]:
    """Start a runner for `key`, detached: its own session, no inherited pipes (a caller that
    reads our stdout to EOF, like `subprocess.run(capture_output=True)`, must not wait for it)."""
    import subprocess

    log = log_file()
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pipelines.warm", "serve", key], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def connect(start: bool = True, timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket | None:
    """A connection to this environment's runner; with `start`, one is started if none answers.
    None when none runs and `start` is off."""
    key = runner_key()
    sock = _connect(key)
    if sock is not None or not start:
        return sock
    proc = spawn_runner(key)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock = _connect(key)
        if sock is not None:
            return sock
        if proc.poll() is not None:
            # Lost the race for the name to another runner (it answers next try), or failed.
            sock = _connect(key)
            if sock is not None:
                return sock
            raise WarmError(f"the warm runner exited ({proc.returncode}) before listening; see {log_file()}")
        time.sleep(0.02)
    raise WarmError(f"no warm runner answered within {timeout_s:.0f} s; see {log_file()}")


def _request(message: dict[str, Any], start: bool = False) -> dict[str, Any] | None:
    sock = connect(start=start)
    if sock is None:
        return None
    with sock:
        sock.sendall(encode(message))
        reply = sock.recv(MAX_MESSAGE)
    return decode(reply) if reply else None


def status() -> dict[str, Any] | None:
    """The runner's pid, Prefect API URL, stages run and idle limit; None when none runs."""
    return _request({"op": "status"})


def start() -> dict[str, Any]:
    """Start this environment's runner (if none runs) and wait until it serves; its status."""
    reply = _request({"op": "status"}, start=True)
    if reply is None:
        raise WarmError(f"the warm runner closed the connection; see {log_file()}")
    return reply


def stop() -> bool:
    """Stop this environment's runner (after its running stages end); False when none ran."""
    return _request({"op": "stop"}) is not None


def run_command(argv: list[str], started: float, start: bool = True) -> int | None:
    """Run `gptpipe <argv>` in a child of the runner with this process's stdio, directory and
    environment; the child's exit status (None when no runner runs and `start` is off). Signals
    to this process go to the child's process group, as a terminal's go to its foreground job."""
    sock = connect(start=start)
    if sock is None:
        return None
    message = {"op": "run", "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "path": sys.path,
               "started": started}
    with sock:
        # An error up to here leaves nothing started: the caller may run the command itself. From
        # here on it runs in the runner's child; errors end this client, never rerun it.
        socket.send_fds(sock, [encode(message)], [0, 1, 2])

        def forward(signum: int, frame: Any) -> None:
            sock.sendall(encode({"signal": signum}))

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            # A forwarded signal does not end the wait (PEP 475 retries the call): the child
            # decides when it ends, and its exit status is ours.
            reply = sock.recv(MAX_MESSAGE)
        except OSError:
            reply = b""
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    if not reply:
        print(f"gptpipe: the warm runner died during `gptpipe {' '.join(argv)}`; see {log_file()}", file=sys.stderr)
        return 1
    answer = decode(reply)
    if "refused" in answer:  # nothing was started (a stopping runner): the caller may run it
        raise WarmError(str(answer["refused"]))
    return int(answer["exit"])


def hand_over(argv: list[str], start: bool = True) -> int | None:
    """The exit status of `gptpipe <argv>` (a stage, or `repro`) run in a child of the warm runner,
    which is started if none runs, unless `start` is off; None when the runner is off, not running
    (and not to be started) or unreachable: then the caller runs it in its own process."""
    # A torchrun rank (WORLD_SIZE set) is a process of its own by design: torchrun watches it and
    # the process group binds it to its device, so it never hands over to the runner.
    if not enabled() or "WORLD_SIZE" in os.environ:
        return None
    started = process_start_time()
    try:
        return run_command(argv, started, start)
    except (WarmError, OSError) as err:
        print(f"gptpipe: warm runner unavailable ({err}); running `gptpipe {' '.join(argv)}` in this process",
              file=sys.stderr)
        return None
