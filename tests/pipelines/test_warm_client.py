"""The warm runner's client (pipelines/warm_client.py): its key, its switches, its message format,
the process start it reports, and what it imports: every stage command pays for that."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import warm_client

ROOT = Path(__file__).resolve().parents[2]

# What pulls in `re` and friends (tens of ms per process on a small CPU): a stage command that
# hands over to the runner must not import any of them.
HEAVY = {"re", "json", "pathlib", "typing", "logging", "subprocess", "argparse", "importlib.metadata",
         "sysconfig", "steps", "model", "prefect", "torch", "mlflow"}


def test_the_key_changes_with_what_a_fork_cannot_change():
    base = {"PATH": "/bin", "PREFECT_HOME": "/a"}
    assert warm_client.runner_key(base) == warm_client.runner_key({**base, "PATH": "/usr/bin", "DVC_EXP_NAME": "x"})
    assert warm_client.runner_key(base) != warm_client.runner_key({**base, "PREFECT_HOME": "/b"})
    assert warm_client.runner_key(base) != warm_client.runner_key({**base, "PREFECT_API_URL": "http://127.0.0.1:1/api"})
    assert warm_client.runner_key(base) != warm_client.runner_key({**base, "OMP_NUM_THREADS": "1"})


def test_switched_off_by_the_environment():
    assert not warm_client.enabled({"GPTPIPE_WARM": "0"})
    assert warm_client.enabled({}) == sys.platform.startswith("linux")


def test_a_bad_idle_limit_names_the_variable():
    with pytest.raises(warm_client.WarmError, match="GPTPIPE_WARM_IDLE_S='soon'"):
        warm_client.idle_seconds({"GPTPIPE_WARM_IDLE_S": "soon"})
    assert warm_client.idle_seconds({}) == warm_client.DEFAULT_IDLE_S
    assert warm_client.idle_seconds({"GPTPIPE_WARM_IDLE_S": "2.5"}) == 2.5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_process_start_is_read_to_the_clock_tick():
    """startup_seconds counts from here: psutil's create_time() can be a second early on Linux."""
    code = "from pipelines.warm_client import process_start_time; print(repr(process_start_time()))"
    before = time.time()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    after = time.time()  # fork and exec are done when Popen returns
    started = float(proc.communicate(timeout=120)[0])
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert before - 2 * tick <= started <= after + 2 * tick


def test_messages_round_trip_and_a_non_dict_is_refused():
    message = {"op": "run", "argv": ["download"], "env": {"A": "1"}, "path": ["/x"], "started": 1.5}
    assert warm_client.decode(warm_client.encode(message)) == message
    with pytest.raises(ValueError, match="must be a dict"):
        warm_client.decode(warm_client.encode(["op"]))


def test_the_log_sits_in_prefect_home():
    assert warm_client.log_file({"PREFECT_HOME": "/srv/p"}) == "/srv/p/gptpipe-warm.log"
    assert warm_client.log_file({}) == os.path.expanduser("~/.prefect/gptpipe-warm.log")


def test_the_key_follows_the_installed_packages_folder():
    folder = warm_client.installed_packages()
    assert folder and Path(folder).is_dir()
    assert any(Path(p) == Path(folder) for p in sys.path)  # the folder this interpreter imports from


def test_a_stage_command_imports_nothing_slow_before_it_hands_over():
    """`python -m pipelines <stage>` up to the hand-over: os, sys, socket, signal, hashlib,
    marshal and our two small modules; the rest is paid once, in the runner."""
    code = ("import sys; before = set(sys.modules); import pipelines.__main__ as m, pipelines.warm_client; "
            "m.stage_request(['download']); print('\\n'.join(sorted(set(sys.modules) - before)))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSTARTUP"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert "pipelines.warm_client" in out
    assert not HEAVY & set(out), sorted(HEAVY & set(out))


def test_a_refused_command_runs_in_this_process_and_an_answered_one_keeps_its_exit(monkeypatch, capsys):
    """A stopping runner starts nothing and says so: hand_over returns None (the caller runs the
    command itself); an answer is the command's exit status."""
    import socket

    monkeypatch.setattr(warm_client, "enabled", lambda env=None: True)
    for reply, expected in (({"refused": "the warm runner is stopping"}, None), ({"exit": 3}, 3)):
        ours, runners = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        monkeypatch.setattr(warm_client, "connect", lambda start=True, sock=ours: sock)
        with runners:
            runners.sendall(warm_client.encode(reply))  # queued: read after the request is sent
            assert warm_client.hand_over(["download", "--params", "params.yaml"]) == expected
            request, fds, _, _ = socket.recv_fds(runners, warm_client.MAX_MESSAGE, 3)
            for fd in fds:
                os.close(fd)
            assert warm_client.decode(request)["argv"] == ["download", "--params", "params.yaml"]
    assert "the warm runner is stopping" in capsys.readouterr().err
