"""What the warm runner (pipelines/warm.py) does once, before it serves, so that no stage's child
pays for it again: import what the stages import, lazily too, and build what every flow run and
MLflow run would otherwise rebuild. The figures are per stage, measured on a 2-core CPU.

Runs in the runner only (the client imports nothing from here). Everything here must be safe to
inherit through fork(): no threads, no open connections, no state tied to a project folder.
"""

from __future__ import annotations

import importlib
import os
import ssl
import sys
from typing import Any

# Modules stages import lazily, inside functions: preloaded too, so no child pays for them
# (each import costs every stage again, about 0.25 s in all, since a child's imports die with it).
# Found with GPTPIPE_WARM_IMPORTS_LOG (pipelines/warm.py), which lists what a child imported
# itself; tests/pipelines/test_warm.py keeps that list empty for a warm stage.
LAZY_IMPORTS = (
    # MLflow's SQLite store (with steps.tracking.runs.STORE_MODULES, imported in preload()): the
    # workspace layer
    "mlflow.store.tracking.sqlalchemy_workspace_store",
    # MLflow's run start: GitPython for its git tags, the tracing exporter it configures
    "git", "mlflow.tracing.export", "mlflow.tracing.export.utils", "mlflow.tracing.processor.otel",
    "mlflow.tracing.processor.base_mlflow", "mlflow.tracing.utils.environment",
    # Prefect's flow and task engines, its client and the services that ship logs and events
    "prefect.flow_engine", "prefect.task_engine", "prefect.client.orchestration",
    "prefect.events.worker", "prefect.logging.handlers", "prefect.utilities.visualization",
    "anyio._backends._asyncio", "netrc", "rich._emoji_codes",
    # plots: matplotlib's Agg backend and Pillow's image plugins (PIL.Image.preinit below)
    "matplotlib.backends.backend_agg", "PIL.Image",
    # torch: checkpoint loading, the profiler's hooks the training loop touches, and the exit
    # handler's table of compile statistics
    "torch.utils.serialization", "torch.profiler._cupti_monitor", "tabulate",
)

# DVC, for `gptpipe repro` (pipelines/cli.py's repro_command), which runs `dvc repro` in a child:
# DVC imports most of itself inside functions (about 650 modules, 0.4-0.5 s of a `dvc` process's
# start). Its command modules (the parser imports them all), the repository, stage and lock-file
# code, data hashing and checkout, and the git backends it stages dvc.lock with (core.autostage).
DVC_IMPORTS = (
    "dvc.cli", "dvc.cli.parser", "dvc._debug", "dvc.analytics", "dvc.dirs", "dvc.types", "dvc.scm",
    "dvc.repo", "dvc.repo.reproduce", "dvc.repo.index", "dvc.repo.graph", "dvc.repo.stage", "dvc.repo.trie",
    "dvc.repo.scm_context", "dvc.repo.open_repo", "dvc.repo.params", "dvc.repo.metrics", "dvc.repo.plots",
    "dvc.repo.datasets", "dvc.repo.artifacts", "dvc.stage.run", "dvc.stage.cache", "dvc.stage.serialize",
    "dvc.stage.loader", "dvc.dvcfile", "dvc.output", "dvc.dependency", "dvc.parsing", "dvc.schema", "dvc.ignore",
    "dvc.rwlock", "dvc.lock", "dvc.utils.serialize", "dvc.utils.strictyaml", "dvc.cachemgr", "dvc.data_cloud",
    "dvc_data.index", "dvc_data.hashfile.build", "dvc_data.hashfile.checkout", "dvc_data.hashfile.state",
    "dvc_data.hashfile.status", "dvc_data.hashfile.transfer", "dvc_data.hashfile.db.local",
    "dvc_data.hashfile._progress", "dvc_render", "scmrepo.noscm", "scmrepo.git", "scmrepo.git.backend.dulwich",
    "scmrepo.git.backend.pygit2", "scmrepo.git.backend.pygit2.filter", "scmrepo.git.backend.gitpython",
    "dulwich.repo", "dulwich.index", "dulwich.ignore", "dulwich.line_ending", "dulwich.worktree", "dulwich.patch",
    "dulwich.attrs", "dulwich.filters", "pygit2", "networkx", "ruamel.yaml", "ruamel.yaml.mergevalue", "diskcache",
    "sqltrie", "flufl.lock", "zc.lockfile", "configobj", "platformdirs", "flatten_dict",
    "fsspec.implementations.memory",
)


def preload() -> None:
    """Import every stage's modules and what they import lazily, and do once what each child
    would otherwise redo: Pillow's plugins, MLflow's schema head, exit-time finalizers."""
    from pipelines import STAGES
    from steps.tracking.runs import STORE_MODULES

    # The command line a child parses its stage command with, and every stage's flow.
    for module in ("pipelines.cli", *(module for module, _ in STAGES.values())):
        importlib.import_module(module)
    # What opening the MLflow store needs: also what lets a child open it on a thread.
    for module in (*STORE_MODULES, *LAZY_IMPORTS, *DVC_IMPORTS):
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # another version of a library, without that module: nothing to preload
    if "PIL.Image" in sys.modules:
        sys.modules["PIL.Image"].preinit()  # the plugins for the formats plots are saved in
    pin_mlflow_schema_head()
    share_prefect_ssl_context()
    skip_inherited_finalizers()
    rehearse_mlflow()


def rehearse_mlflow() -> None:
    """One throwaway stage run in a scratch MLflow store (steps.tracking.runs.rehearse_stage_run), so
    that children inherit what MLflow and SQLAlchemy build at their first call of each kind. The
    scratch store is a copy of a template kept next to the runner's log, made once per MLflow
    version: creating a store from nothing runs all of MLflow's migrations (~2 s)."""
    import shutil
    import tempfile
    from pathlib import Path

    import mlflow

    from pipelines.warm_client import log_file
    from steps.tracking.runs import DEFAULT_DB, rehearse_stage_run

    template = Path(log_file()).parent / "gptpipe-warm" / f"mlflow-{mlflow.__version__}.db"
    scratch = Path(tempfile.mkdtemp(prefix="gptpipe-rehearsal-"))
    try:
        if template.is_file():
            shutil.copyfile(template, scratch / DEFAULT_DB)
        if rehearse_stage_run(scratch) and not template.is_file():
            template.parent.mkdir(parents=True, exist_ok=True)
            partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
            shutil.copyfile(scratch / DEFAULT_DB, partial)
            partial.replace(template)  # atomic: a concurrent runner never copies half a file
    except Exception as err:  # noqa: BLE001 - a rehearsal is an optimisation; stages open their own store
        print(f"gptpipe warm runner: MLflow rehearsal skipped: {err}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def warm_prefect(api_url: str, own_server: bool = False) -> None:
    """Do once what every flow run would otherwise redo in each child: complete the pydantic
    models Prefect defers (hundreds, built at their first use) and check the API's version
    (Prefect checks once per process, keyed by API URL and client version; children inherit
    that it was done). On the runner's own server, also warm the server itself (below). A
    server that does not answer now is left for the children to find."""
    import prefect.client.orchestration
    from prefect.settings import PREFECT_API_URL, temporary_settings

    complete_prefect_models()
    try:
        with temporary_settings({PREFECT_API_URL: api_url}), \
                prefect.client.orchestration.get_client(sync_client=True) as client:
            client.raise_for_api_version_mismatch_once()
            if own_server:
                exercise_flow_runs(client)
    except Exception as err:  # noqa: BLE001 - the children's own check reports it properly
        print(f"gptpipe warm runner: Prefect API check at {api_url} failed: {err}", flush=True)


WARM_UP_FLOW = "gptpipe-warm-up"


def exercise_flow_runs(client: Any) -> None:
    """Take one throwaway flow run through the states a stage's run goes through, then delete it
    and its flow. A fresh server builds its caches (compiled SQL, validators, orchestration
    rules) at the first request of each kind: ~0.15 s that the first stage would otherwise wait
    for. Only ever on the runner's own server, never on one a team shares."""
    from prefect import flow
    from prefect.states import Completed, Pending, Running

    @flow(name=WARM_UP_FLOW, persist_result=False)
    def warm_up() -> None:
        """Never called: its flow run is only created and moved through states."""

    run = client.create_flow_run(warm_up, state=Pending())
    try:
        client.set_flow_run_state(run.id, Running())
        client.read_flow_run(run.id)
        client.set_flow_run_state(run.id, Completed())
    finally:
        client.delete_flow_run(run.id)
        client.delete_flow(run.flow_id)


def complete_prefect_models() -> None:
    import inspect

    import pydantic

    for name, module in list(sys.modules.items()):
        if not name.startswith("prefect.") or module is None:
            continue
        for value in list(vars(module).values()):
            if (inspect.isclass(value) and issubclass(value, pydantic.BaseModel) and value.__module__ == name
                    and not getattr(value, "__pydantic_complete__", True)):
                try:
                    value.model_rebuild()
                except Exception:  # noqa: BLE001 - left to be built at first use, as before
                    pass


def pin_mlflow_schema_head() -> None:
    """Read MLflow's migration scripts once, not in every child. Each MLflow store checks the
    database's schema against the newest revision among about 70 alembic scripts, re-read every
    time (tens of ms); that revision is a fact of the installed MLflow, which the runner's key
    pins. Where MLflow's internals differ from what this expects, nothing is changed."""
    import mlflow.store.db.utils as db_utils

    latest = getattr(db_utils, "_get_latest_schema_revision", None)
    if callable(latest):
        head = latest()
        db_utils._get_latest_schema_revision = lambda: head


class _PrefectSSL:
    """The `ssl` module as Prefect's client module sees it, except that a verifying context for a
    CA file is built once per file and shared. Prefect's client builds a new one for every flow
    run (parsing certifi's ~140 CA certificates, about 50 ms a stage here), though it is the same
    context each time and never changed after. Any other call, like the unverified context Prefect
    builds and then changes when told to skip TLS checks, goes to `ssl` as before."""

    def __init__(self) -> None:
        self._contexts: dict[str, ssl.SSLContext] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    def create_default_context(self, *args: Any, **kwargs: Any) -> ssl.SSLContext:
        cafile = kwargs.get("cafile")
        if args or set(kwargs) != {"cafile"} or not isinstance(cafile, str):
            return ssl.create_default_context(*args, **kwargs)
        if cafile not in self._contexts:
            self._contexts[cafile] = ssl.create_default_context(cafile=cafile)
        return self._contexts[cafile]


def share_prefect_ssl_context() -> None:
    """Give Prefect's client module the sharing `ssl` above, with certifi's context (Prefect's
    default CA file) built now, before any fork. Left alone where Prefect's client no longer
    calls `ssl` by that name."""
    import certifi
    import prefect.client.orchestration as orchestration

    if getattr(orchestration, "ssl", None) is ssl:
        shared = _PrefectSSL()
        shared.create_default_context(cafile=certifi.where())
        orchestration.ssl = shared  # type: ignore[assignment]


def skip_inherited_finalizers() -> None:
    """Exit-time finalizers that exist now (torch registers one per operator library) only free
    memory of this process; a child that inherits them would run them all at its exit (about
    0.1 s) just before the kernel frees that memory anyway. Finalizers a child creates itself
    (temporary folders, say) still run."""
    import weakref

    for finalizer in list(getattr(weakref.finalize, "_registry", {})):  # CPython's table of live ones
        finalizer.atexit = False
