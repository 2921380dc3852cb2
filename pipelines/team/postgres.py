"""A private PostgreSQL cluster for team mode: find the server binaries, create a cluster, start and
stop it on loopback, create databases.

PostgreSQL refuses to run as root, so when we are root every server command runs as the
unprivileged `postgres` account (which Debian's `postgresql` package creates) and the cluster's
folder belongs to that account.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

# Debian/Ubuntu install the server here, one folder per major version, and put only wrappers on PATH.
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
SERVER_ACCOUNT = "postgres"  # the account that runs the server when we are root
SUPERUSER = "gptpipe"  # the cluster's superuser (a database role, not an OS account)
START_TIMEOUT_S = 60


class PostgresError(RuntimeError):
    """PostgreSQL is missing, cannot start or refused a command; the message says how to fix it."""


def install_command() -> list[str]:
    """The Debian/Ubuntu command that installs the server (as root; with sudo otherwise)."""
    cmd = ["apt-get", "install", "-y", "postgresql"]
    return cmd if os.geteuid() == 0 else ["sudo", *cmd]


def find_bindir(extra: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: `extra` or $GPTPIPE_PG_BINDIR if given, else
    the one behind `pg_ctl` on PATH, else the newest /usr/lib/postgresql/<version>/bin; None if none."""
    candidates: list[Path] = []
    extra = extra or os.environ.get("GPTPIPE_PG_BINDIR")
    if extra:
        candidates.append(Path(extra))
    on_path = shutil.which("pg_ctl")
    if on_path:
        # Debian's /usr/bin/pg_ctl may be a wrapper script; its real binaries live in DEBIAN_BINDIRS.
        candidates.append(Path(on_path).resolve().parent)
    candidates.extend(sorted(Path("/").glob(DEBIAN_BINDIRS.lstrip("/")), key=_major_version, reverse=True))
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in SERVER_PROGRAMS):
            return folder
    return None


def require_bindir(extra: str | os.PathLike[str] | None = None) -> Path:
    folder = find_bindir(extra)
    if folder is None:
        raise PostgresError(
            "PostgreSQL's server programs (initdb, pg_ctl, postgres) were not found on PATH nor under "
            f"{DEBIAN_BINDIRS}. Install them with `{' '.join(install_command())}` (Debian/Ubuntu), or point "
            "GPTPIPE_PG_BINDIR at the folder that holds them (macOS: `brew install postgresql@16`, then "
            "GPTPIPE_PG_BINDIR=$(brew --prefix postgresql@16)/bin)."
        )
    return folder


def _major_version(folder: Path) -> int:
    match = re.search(r"/(\d+)/bin$", folder.as_posix())
    return int(match.group(1)) if match else -1


@dataclass(frozen=True)
class Account:
    """The OS account the server runs as; `switch` says whether we must change to it (we are root)."""

    name: str
    uid: int
    gid: int
    switch: bool

    def run(self, cmd: list[str], cwd: Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
        if self.switch:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=[])
            # HOME of root is unreadable for the server account; programs look there for config.
            kwargs["env"] = {**kwargs.get("env", os.environ), "HOME": str(cwd)}
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kwargs)

    def can_write(self, folder: Path) -> bool:
        """Whether the account can reach `folder` and create files in it."""
        return self.run(["test", "-w", str(folder), "-a", "-x", str(folder)], cwd=Path("/")).returncode == 0


def server_account() -> Account:
    """Ourselves, unless we are root: then the unprivileged `postgres` account."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Account(me.pw_name, me.pw_uid, me.pw_gid, switch=False)
    try:
        entry = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no `{SERVER_ACCOUNT}` account to run it as. "
            f"Installing the server (`{' '.join(install_command())}`) creates it; or create it with "
            f"`useradd --system --user-group {SERVER_ACCOUNT}`."
        ) from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)


@dataclass(frozen=True)
class Cluster:
    """One PostgreSQL cluster in `data_dir`, listening on 127.0.0.1:`port` only (no Unix socket),
    with password authentication for its superuser."""

    data_dir: Path
    port: int
    password: str
    bindir: Path
    account: Account

    @classmethod
    def at(cls, data_dir: Path, port: int, password: str, bindir: str | os.PathLike[str] | None = None) -> Cluster:
        return cls(Path(data_dir).resolve(), port, password,
                   require_bindir(bindir), server_account())

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of a database: psycopg 3 by default (MLflow), `postgresql+asyncpg` for Prefect.
        The driver is named because SQLAlchemy's default for plain postgresql:// changed (psycopg2 in
        2.0, psycopg in 2.1)."""
        return f"{driver}://{SUPERUSER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{database}"

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def init(self) -> bool:
        """Create the cluster unless `data_dir` already holds one; True if it was created."""
        if self.initialized():
            return False
        parent = self.data_dir.parent
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise PostgresError(f"{self.data_dir} is not empty and holds no PostgreSQL cluster (no PG_VERSION): "
                                "move it away or delete it, then start again")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.account.switch:
            os.chown(self.data_dir, self.account.uid, self.account.gid)
        if not self.account.can_write(self.data_dir):
            self.data_dir.rmdir()
            raise PostgresError(
                f"PostgreSQL runs as the account `{self.account.name}` (it refuses root), which cannot reach "
                f"{self.data_dir}: a folder above it is private. Put the services elsewhere, e.g. "
                f"`gptpipe services start --dir /var/tmp/gptpipe-services`, or `chmod o+x` the folders above it."
            )
        # The password reaches initdb through a file only the server account can read, never argv.
        pwfile = parent / f".{self.data_dir.name}.pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            if self.account.switch:
                os.chown(pwfile, self.account.uid, self.account.gid)
            self._check(self.account.run(
                [str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                 "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"], cwd=parent), "initdb")
        finally:
            pwfile.unlink(missing_ok=True)
        return True

    def running(self) -> bool:
        if not self.initialized():
            return False
        # pg_ctl status: 0 running, 3 not running, 4 no accessible data directory.
        return self.account.run([str(self.bindir / "pg_ctl"), "status", "-D", str(self.data_dir)],
                                cwd=self.data_dir.parent).returncode == 0

    def pid(self) -> int | None:
        """The postmaster's process id (first line of postmaster.pid), if the file is there."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        # listen_addresses: loopback only; unix_socket_directories='': the distribution's socket
        # folder (/var/run/postgresql) may not exist or be writable, and TCP is all we use.
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
        proc = self.account.run([str(self.bindir / "pg_ctl"), "start", "-w", "-t", str(START_TIMEOUT_S),
                                 "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options],
                                cwd=self.data_dir.parent, timeout=START_TIMEOUT_S + 30)
        if proc.returncode != 0:
            raise PostgresError(f"PostgreSQL did not start on 127.0.0.1:{self.port} ({self.data_dir}):\n"
                                f"{proc.stdout}{proc.stderr}{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (fast mode: roll back open transactions, then shut down cleanly)."""
        if self.running():
            self._check(self.account.run([str(self.bindir / "pg_ctl"), "stop", "-w", "-m", "fast",
                                          "-D", str(self.data_dir)], cwd=self.data_dir.parent), "pg_ctl stop")

    def create_database(self, name: str) -> bool:
        """Create database `name` unless it exists; True if it was created."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _")
        with self.connect("postgres") as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return False
            conn.execute(f'CREATE DATABASE "{name}"')  # name checked above; DDL takes no parameters
        return True

    def connect(self, database: str):
        """A psycopg connection in autocommit mode (CREATE DATABASE cannot run in a transaction);
        `with` closes it."""
        psycopg = import_driver()
        try:
            return psycopg.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password,
                                   dbname=database, connect_timeout=10, autocommit=True)
        except psycopg.OperationalError as err:
            raise PostgresError(
                f"cannot connect to database {database!r} on 127.0.0.1:{self.port} as {SUPERUSER}: {err}. "
                f"If the password was changed or deleted, it no longer matches the cluster in {self.data_dir}: "
                "stop the services, move that folder away (the runs in it go with it) and start again."
            ) from None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _check(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        if proc.returncode != 0:
            raise PostgresError(f"{what} failed for {self.data_dir} (exit {proc.returncode}):\n"
                                f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}")


def import_driver():
    """psycopg (3), which MLflow's server needs for a PostgreSQL store; a clear error if absent."""
    try:
        import psycopg
    except ImportError:
        raise PostgresError("the PostgreSQL driver psycopg is not installed: "
                            "`pip install -e '.[team]'` (or `make setup`, which installs it too)") from None
    return psycopg
