"""Finding PostgreSQL's programs, the account it runs as, and the errors that say how to fix things
(the real server is exercised in tests/pipelines/test_team_mode.py)."""

from __future__ import annotations

import os
import pwd
import urllib.parse
from pathlib import Path

import pytest

from pipelines.team import postgres
from pipelines.team.postgres import Account, Cluster, PostgresError


def fake_bindir(folder: Path, programs=postgres.SERVER_PROGRAMS) -> Path:
    folder.mkdir(parents=True)
    for name in programs:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture
def no_system_postgres(monkeypatch, tmp_path):
    """Nothing on PATH, and the Debian folders looked for under tmp_path/lib instead of /usr/lib."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.delenv("GPTPIPE_PG_BINDIR", raising=False)
    monkeypatch.setattr(postgres, "DEBIAN_BINDIRS", f"{tmp_path}/lib/postgresql/*/bin")
    return tmp_path / "lib" / "postgresql"


def test_the_newest_debian_version_wins_numerically(no_system_postgres):
    fake_bindir(no_system_postgres / "9" / "bin")
    newest = fake_bindir(no_system_postgres / "15" / "bin")
    assert postgres.find_bindir() == newest


def test_a_folder_missing_one_program_is_passed_over(no_system_postgres):
    fake_bindir(no_system_postgres / "16" / "bin", programs=("initdb", "pg_ctl"))  # no `postgres`
    complete = fake_bindir(no_system_postgres / "15" / "bin")
    assert postgres.find_bindir() == complete


def test_an_explicit_folder_comes_first(no_system_postgres, tmp_path):
    fake_bindir(no_system_postgres / "15" / "bin")
    mine = fake_bindir(tmp_path / "custom")
    assert postgres.find_bindir(mine) == mine


def test_the_environment_can_name_the_folder(no_system_postgres, tmp_path, monkeypatch):
    fake_bindir(no_system_postgres / "15" / "bin")
    mine = fake_bindir(tmp_path / "custom")
    monkeypatch.setenv("GPTPIPE_PG_BINDIR", str(mine))
    assert postgres.find_bindir() == mine


def test_pg_ctl_on_path_is_followed_to_its_real_folder(no_system_postgres, tmp_path, monkeypatch):
    real = fake_bindir(tmp_path / "real")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    (on_path / "pg_ctl").symlink_to(real / "pg_ctl")
    monkeypatch.setenv("PATH", str(on_path))
    assert postgres.find_bindir() == real


def test_missing_postgres_says_which_command_installs_it(no_system_postgres):
    assert postgres.find_bindir() is None
    with pytest.raises(PostgresError, match="apt-get install -y postgresql") as err:
        postgres.require_bindir()
    assert "GPTPIPE_PG_BINDIR" in str(err.value)


def test_as_root_the_server_runs_as_the_postgres_account(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    entry = pwd.struct_passwd(("postgres", "x", 101, 104, "", "/var/lib/postgresql", "/bin/sh"))
    monkeypatch.setattr(pwd, "getpwnam", lambda name: entry if name == "postgres" else pwd.getpwnam(name))
    assert postgres.server_account() == Account("postgres", 101, 104, switch=True)
    assert postgres.install_command()[0] == "apt-get"


def test_as_root_without_a_postgres_account_the_error_says_how_to_create_it(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)

    def no_such_account(name):
        raise KeyError(name)

    monkeypatch.setattr(pwd, "getpwnam", no_such_account)
    with pytest.raises(PostgresError, match="refuses to run as root.*useradd"):
        postgres.server_account()


def test_as_another_user_the_server_runs_as_ourselves(monkeypatch):
    me = pwd.getpwuid(os.getuid())
    monkeypatch.setattr(os, "geteuid", lambda: me.pw_uid if me.pw_uid else 1000)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: me)
    account = postgres.server_account()
    assert account.switch is False and account.name == me.pw_name
    assert postgres.install_command()[0] == "sudo"


def cluster(tmp_path: Path, password: str = "pw") -> Cluster:
    me = pwd.getpwuid(os.getuid())
    return Cluster(tmp_path / "pg", 5544, password, tmp_path, Account(me.pw_name, me.pw_uid, me.pw_gid, switch=False))


def test_url_escapes_the_password_and_names_the_driver(tmp_path):
    url = cluster(tmp_path, password="a/b@c:d%").url("mlflow")
    assert url.startswith("postgresql+psycopg://gptpipe:")
    parsed = urllib.parse.urlsplit(url)
    assert urllib.parse.unquote(parsed.password) == "a/b@c:d%"
    assert (parsed.hostname, parsed.port, parsed.path) == ("127.0.0.1", 5544, "/mlflow")
    assert cluster(tmp_path).url("prefect", "postgresql+asyncpg").startswith("postgresql+asyncpg://")


def test_a_non_empty_folder_without_a_cluster_is_left_alone(tmp_path):
    c = cluster(tmp_path)
    c.data_dir.mkdir()
    (c.data_dir / "notes.txt").write_text("mine")
    with pytest.raises(PostgresError, match="not empty and holds no PostgreSQL cluster"):
        c.init()
    assert (c.data_dir / "notes.txt").read_text() == "mine"


def test_database_names_are_checked_before_any_sql(tmp_path):
    with pytest.raises(ValueError, match="lower-case"):
        cluster(tmp_path).create_database('x"; DROP DATABASE mlflow; --')


def test_a_cluster_never_initialized_is_not_running(tmp_path):
    c = cluster(tmp_path)
    assert not c.running() and c.pid() is None


def test_a_refused_connection_names_the_database_and_port(tmp_path):
    from tests.conftest import free_port

    nobody_listens = Cluster(tmp_path / "pg", free_port(), "pw", tmp_path, cluster(tmp_path).account)
    with pytest.raises(PostgresError, match=rf"database 'mlflow' on 127.0.0.1:{nobody_listens.port}"):
        nobody_listens.connect("mlflow")
