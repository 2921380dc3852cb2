"""Team mode on one machine: a PostgreSQL cluster, an MLflow tracking server on it (artifacts in a
folder or a bucket) and a Prefect server, started on loopback; settings, logs and PIDs in `.services/`.

`gptpipe services start|stop|status` (and `make services`) call `start`, `stop` and `status`.
Starting is idempotent: what already runs is kept, what is missing is started.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import psutil

from model.atomic import write_json, write_text
from pipelines import prefect_server
from pipelines.prefect_server import healthy, live_process, terminate
from pipelines.team.postgres import Cluster, PostgresError, import_driver

DEFAULT_DIR = Path(".services")
SETTINGS_FILE = "services.json"  # the settings in use and the server processes started
PASSWORD_FILE = "postgres.password"  # kept apart from the settings: created once, mode 0600
ENV_FILE = "env.sh"  # `source .services/env.sh` points the pipeline at the servers
MLFLOW_DATABASE = "mlflow"
PREFECT_DATABASE = "prefect"
HEALTH_TIMEOUT_S = 180  # first start of either server creates its tables: slow on a busy machine


class ServiceError(RuntimeError):
    """A service cannot start or stop; the message names it and says what to do."""


@dataclass(frozen=True)
class Settings:
    """How the services run. In `start`, a field left None keeps the value of the last start in the
    same folder, else the default below."""

    postgres_port: int = 5433  # not 5432: leave a system-wide PostgreSQL alone
    mlflow_port: int = 5000
    prefect_port: int = 4200
    # Where the MLflow server stores artifacts: a folder, or a bucket URI (s3://..., gs://...).
    # Relative folders are resolved against the services folder; default <dir>/mlartifacts.
    artifacts: str = "mlartifacts"
    prefect_db: str = "postgres"  # or "sqlite": a file in Prefect's home under the services folder
    mlflow_workers: int = 2


@dataclass
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    detail: str

    def line(self) -> str:
        state = "running" if self.running else "stopped"
        pid = f"pid {self.pid}" if self.pid else "-"
        return f"{self.name:<9}{state:<9}{pid:<12}{self.address}  ({self.detail})"


@dataclass
class Services:
    """The services of one folder: its settings and the process records of the two servers."""

    root: Path
    settings: Settings
    processes: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {pid, create_time}

    @property
    def cluster(self) -> Cluster:
        return Cluster.at(self.root / "postgres", self.settings.postgres_port, self._password())

    def _password(self) -> str:
        """The cluster's superuser password, generated at the first start."""
        path = self.root / PASSWORD_FILE
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    @property
    def artifacts(self) -> str:
        """Folder (absolute) or bucket URI the MLflow server writes artifacts to."""
        where = self.settings.artifacts
        if "://" in where:
            return where
        return str((self.root / where).resolve())

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.prefect_port}/api"

    def exports(self) -> dict[str, str]:
        """The environment a stage needs to record to these servers."""
        return {"MLFLOW_TRACKING_URI": self.mlflow_url, "PREFECT_API_URL": self.prefect_url}

    def save(self) -> None:
        write_json(self.root / SETTINGS_FILE, {"settings": asdict(self.settings), "processes": self.processes})
        write_text(self.root / ENV_FILE, "".join(f"export {k}={v}\n" for k, v in self.exports().items()))


def load(root: Path) -> Services | None:
    """The services recorded in `root`, or None if nothing was ever started there."""
    path = root / SETTINGS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return Services(root.resolve(), Settings(**data["settings"]), data.get("processes", {}))
    except (ValueError, KeyError, TypeError) as err:
        raise ServiceError(f"{path} is unreadable ({err}): stop the servers by hand, then delete it") from None


def start(root: Path = DEFAULT_DIR, **overrides: object) -> Services:
    """Start whatever of PostgreSQL, MLflow and Prefect is not running yet; wait until each is healthy."""
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # the postgres account (when we are root) must reach its cluster inside
    services = _with_settings(root, {k: v for k, v in overrides.items() if v is not None})
    if services.settings.prefect_db not in ("postgres", "sqlite"):
        raise ServiceError(f"prefect_db must be 'postgres' or 'sqlite', not {services.settings.prefect_db!r}")
    import_driver()  # fail before starting anything: MLflow's server needs it for postgresql://
    (root / "logs").mkdir(exist_ok=True)
    services.save()  # written first, so that `stop` finds whatever a failed start left running

    servers = [_mlflow_server(services), _prefect_server(services)]
    missing = [server for server in servers if _process(services.processes.get(server.name)) is None]
    for server in missing:  # every port checked before anything starts
        _require_free_port(server.port, server.name, f"--{server.name}-port")
    _start_postgres(services)
    if "://" not in services.artifacts:
        Path(services.artifacts).mkdir(parents=True, exist_ok=True)
    for server in missing:  # both at once: each spends most of its start-up importing
        _launch(services, server)
    for server in servers:
        _await_healthy(services, server)
    return services


def _with_settings(root: Path, overrides: dict[str, object]) -> Services:
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        raise ServiceError(f"unknown service setting(s): {', '.join(sorted(unknown))}")
    previous = load(root)
    if previous is None:
        return Services(root, Settings(**overrides))
    wanted = Settings(**{**asdict(previous.settings), **overrides})
    if wanted != previous.settings and any(s.running for s in status(root)):
        changed = ", ".join(f"{k}: {v!r} -> {getattr(wanted, k)!r}" for k, v in asdict(previous.settings).items()
                            if getattr(wanted, k) != v)
        raise ServiceError(f"the services in {root} are running with other settings ({changed}): "
                           "run `gptpipe services stop` first, then start them with the new settings")
    return Services(root, wanted, previous.processes)


def _start_postgres(services: Services) -> None:
    cluster = services.cluster
    if not cluster.running():
        _require_free_port(services.settings.postgres_port, "PostgreSQL", "--postgres-port")
        cluster.init()
        cluster.start()
    cluster.create_database(MLFLOW_DATABASE)
    if services.settings.prefect_db == "postgres":
        cluster.create_database(PREFECT_DATABASE)


@dataclass(frozen=True)
class Server:
    """How to run one of the two servers, and where to ask whether it is up."""

    name: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    health_url: str


def _mlflow_server(services: Services) -> Server:
    port = services.settings.mlflow_port
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(services.settings.mlflow_workers),
           "--serve-artifacts", "--artifacts-destination", services.artifacts]
    return Server("mlflow", cmd, _mlflow_env(services), port, f"{services.mlflow_url}/health")


def _mlflow_env(services: Services) -> dict[str, str]:
    env = dict(os.environ)
    # The store URI holds the database password: through the environment it stays out of `ps`.
    env["MLFLOW_BACKEND_STORE_URI"] = services.cluster.url(MLFLOW_DATABASE)
    # MLflow's job runner (GenAI scorers, prompt optimization: nothing this pipeline uses) would add
    # eight more processes; export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true to have it anyway.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def _prefect_server(services: Services) -> Server:
    """Started as the project's local Prefect server is (pipelines/prefect_server.py), with the
    team's home, port and database (the same PostgreSQL, or SQLite in its home)."""
    port = services.settings.prefect_port
    database = (services.cluster.url(PREFECT_DATABASE, "postgresql+asyncpg")
                if services.settings.prefect_db == "postgres" else None)
    env = prefect_server.environment(services.root / "prefect", database)
    return Server("prefect", prefect_server.command(port), env, port, f"{services.prefect_url}/health")


def _launch(services: Services, server: Server) -> None:
    # The shared launcher: the server outlives this command in a session (process group) of its own.
    proc = prefect_server.spawn(server.cmd, server.env, services.root, _log(services, server.name))
    services.processes[server.name] = {"pid": proc.pid, "create_time": proc.create_time()}
    services.save()


def _await_healthy(services: Services, server: Server) -> None:
    """Wait until the server answers its health check; stop it and say why if it exits or never does."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while not healthy(server.health_url):
        proc = _process(services.processes.get(server.name))
        if proc is None or time.monotonic() > deadline:
            reason = "exited" if proc is None else f"is not healthy after {HEALTH_TIMEOUT_S} s"
            if proc is not None:
                terminate(proc)
            services.processes.pop(server.name, None)
            services.save()
            log = _log(services, server.name)
            raise ServiceError(f"the {server.name} server {reason} ({server.health_url}); the end of {log}:\n"
                               f"{prefect_server.log_tail(log)}")
        time.sleep(0.5)


def _log(services: Services, name: str) -> Path:
    return services.root / "logs" / f"{name}.log"


def stop(root: Path = DEFAULT_DIR) -> list[str]:
    """Stop Prefect, MLflow, then PostgreSQL (clients before their database); names of those stopped."""
    services = load(root.resolve())
    if services is None:
        return []
    running = {name: _process(services.processes.pop(name, None)) for name in ("prefect", "mlflow")}
    stopped = [name for name, proc in running.items() if proc is not None]
    terminate(*(proc for proc in running.values() if proc is not None))
    services.save()
    cluster = _cluster_or_none(services)
    if cluster is not None and cluster.running():
        cluster.stop()
        stopped.append("postgres")
    return stopped


def status(root: Path = DEFAULT_DIR) -> list[ServiceStatus]:
    """Each service's state; an empty list if nothing was ever started in `root`."""
    services = load(root.resolve())
    if services is None:
        return []
    cluster = _cluster_or_none(services)
    pg_running = cluster is not None and cluster.running()
    dbs = MLFLOW_DATABASE + (f", {PREFECT_DATABASE}" if services.settings.prefect_db == "postgres" else "")
    result = [ServiceStatus("postgres", pg_running, cluster.pid() if pg_running else None,
                            f"127.0.0.1:{services.settings.postgres_port}",
                            f"databases {dbs}; log {services.root / 'postgres' / 'server.log'}")]
    for name, url, detail in (
        ("mlflow", services.mlflow_url, f"artifacts {services.artifacts}"),
        ("prefect", services.prefect_url, f"database {services.settings.prefect_db}"),
    ):
        proc = _process(services.processes.get(name))
        running = proc is not None and healthy(f"{url}/health")
        result.append(ServiceStatus(name, running, proc.pid if proc else None, url,
                                    f"{detail}; log {_log(services, name)}"))
    return result


def _cluster_or_none(services: Services) -> Cluster | None:
    try:
        return services.cluster
    except PostgresError:  # the binaries went away: nothing of ours can be running
        return None


def _process(record: dict[str, float] | None) -> psutil.Process | None:
    """The live process a record names; None if it exited or its pid now belongs to another process."""
    try:
        return live_process(int(record["pid"]), record["create_time"]) if record else None
    except (KeyError, ValueError):
        return None


def _require_free_port(port: int, name: str, option: str) -> None:
    if not prefect_server.port_free(port):
        raise ServiceError(
            f"cannot start {name}: 127.0.0.1:{port} is already in use by another program "
            f"(`ss -ltnp 'sport = :{port}'` shows which). Stop it, or choose another port with {option}."
        )


