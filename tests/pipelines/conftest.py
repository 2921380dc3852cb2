"""Fixtures of the end-to-end tests: a throwaway git copy of the project to run `dvc repro` in, tiny
params for it, a Prefect server of a module's own on loopback, and the team servers (PostgreSQL,
MLflow, Prefect) to record to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pipelines import (
    prefect_server as prefect_server_module,  # the fixture below is named prefect_server
)
from tests.conftest import apt_install_for_ci, free_port

ROOT = Path(__file__).resolve().parents[2]

# Params small enough for a whole `dvc repro` in a minute or two on a small CPU.
TINY = {
    "download": {"builtin": {"corpus_bytes": 150_000, "sms_messages": 400, "instructions_train": 170,
                             "instructions_test": 20, "instructions_val": 10, "preferences": 60}},
    "tokenize": {"vocab_size": 512},
    "model": {"context_length": 64, "emb_dim": 32, "n_heads": 2, "n_layers": 1},
    "pretrain": {"max_steps": 30, "batch_size": 8, "eval_interval": 10, "eval_batches": 2, "sample_tokens": 8},
    "finetune_classifier": {"epochs": 1, "batch_size": 32, "eval_interval": 5, "max_length": 32},
    "label_efficiency": {"fractions": [0.25, 1.0], "min_steps": 5},
    # phi3: with 512 tokens the alpaca prompt's fixed text alone is longer than 64 tokens, which the
    # stage refuses (it used to train on no response token at all, loss NaN).
    "finetune_instruct": {"epochs": 1, "batch_size": 16, "eval_interval": 5, "allowed_max_length": 64,
                          "max_new_tokens": 4, "prompt_style": "phi3"},
    "finetune_preference": {"epochs": 1, "batch_size": 16, "eval_interval": 2, "allowed_max_length": 64,
                            "max_new_tokens": 4},
    "evaluate": {"val_batches": 2},
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return out


def shrink_params(work: Path, override: dict | None = None) -> None:
    """Rewrite `work`/params.yaml with TINY (then `override`) merged over it."""
    params = _merge(yaml.safe_load((work / "params.yaml").read_text()), TINY)
    (work / "params.yaml").write_text(yaml.safe_dump(_merge(params, override or {}), sort_keys=False))


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 1200) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure the assertion shows the tail of its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def ran_stages(output: str) -> list[str]:
    """Stage names in the order `dvc repro` reports running them."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def make_project_copy(work: Path, edit: Callable[[Path, dict[str, str]], None] | None = None) -> tuple[Path, dict[str, str]]:
    """Copy the tracked (and untracked, not ignored) files into `work`, let `edit` change the
    copy (params, say), and commit it: a git + DVC repository of its own."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / name)
    # The session's local Prefect server (GPTPIPE_PREFECT_HOME, tests/conftest.py) is kept: the
    # copy's stage processes record to it, and no server of theirs outlives the tests.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PREFECT_API", "DVC_", "GPTPIPE_")) or k == prefect_server_module.HOME_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PREFECT_HOME"] = str(work.parent / "prefect-home")  # run history of this test only
    env["GPTPIPE_CACHE"] = str(work.parent / "download-cache")
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "gptpipe test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@gptpipe.invalid"
    if edit is not None:
        edit(work, env)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "test copy"]):
        run(cmd, work, env)
    return work, env


def eventually(probe: Callable[[], object], timeout: float = 60, interval: float = 0.5):
    """Call `probe` until it returns something truthy or `timeout` seconds pass; its last value.
    For records that reach a server after the command that made them has exited: Prefect ships task
    runs as events, which its server stores asynchronously."""
    deadline = time.monotonic() + timeout
    while not (got := probe()) and time.monotonic() < deadline:
        time.sleep(interval)
    return got


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s: a server the tests started never outlives them."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def project_copy(tmp_path_factory):
    """`project_copy(edit)` -> (work dir, env) for a fresh copy of the project."""

    def make(edit: Callable[[Path, dict[str, str]], None] | None = None) -> tuple[Path, dict[str, str]]:
        return make_project_copy(tmp_path_factory.mktemp("e2e") / "repo", edit)

    return make


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A Prefect server of this module's own (its own home and database, a free loopback port),
    started as the pipeline starts its local one; its API URL. Stopped after the module."""
    home = tmp_path_factory.mktemp("prefect-server")
    server, _ = prefect_server_module.start(home, port=free_port())
    try:
        yield server.api_url
    finally:
        prefect_server_module.stop(home)


@pytest.fixture(scope="session")
def postgres_bindir() -> Path:
    """PostgreSQL's server programs. Missing, they are installed from Debian packages when CI is set;
    otherwise (or if that fails) the test is skipped with the reason."""
    from pipelines.team import postgres

    bindir = postgres.find_bindir()
    if bindir is None and os.environ.get("CI"):
        _apt_install_postgres()
        bindir = postgres.find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl/postgres on PATH or under "
                    f"/usr/lib/postgresql/*/bin): `{' '.join(postgres.install_command())}`, "
                    "or set CI=1 to have the tests install it")
    try:
        postgres.server_account()
        postgres.import_driver()
    except postgres.PostgresError as err:
        pytest.skip(str(err))
    return bindir


def _apt_install_postgres() -> None:
    from pipelines.team import postgres

    apt_install_for_ci(postgres.install_command())  # apt-get install -y postgresql, after sudo unless root


@pytest.fixture(scope="module")
def team_services(postgres_bindir):
    """`make services` for a test module: PostgreSQL, an MLflow server on it and a Prefect server
    (on the same PostgreSQL) on free loopback ports; stopped and deleted after the module."""
    from pipelines.team import services

    # Under /tmp rather than pytest's tmp_path: as root, PostgreSQL runs as the `postgres` account,
    # which cannot enter pytest's private (0700) folders.
    root = Path(tempfile.mkdtemp(prefix="gptpipe-team-"))
    root.chmod(0o755)
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    postgres_port, mlflow_port, prefect_port = sorted(ports)
    try:
        yield services.start(root / "services", postgres_port=postgres_port, mlflow_port=mlflow_port,
                             prefect_port=prefect_port, mlflow_workers=1)
    finally:
        services.stop(root / "services")
        shutil.rmtree(root, ignore_errors=True)
