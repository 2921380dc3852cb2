"""The only module that talks to MLflow: one run per stage, with params, metrics, artifacts, tags.

Default store: `mlflow.db` (SQLite) in the repository root, artifacts in `mlartifacts/`.
Set MLFLOW_TRACKING_URI to use a team server instead. Runs are read back as plain records
(`fetch_runs`, `metric_histories`) for `gptpipe compare`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import psutil
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from steps.hashing import sha256_file

log = logging.getLogger("gptpipe.tracking")
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
RETRAIN_ID_ENV = "GPTPIPE_RETRAIN_ID"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch
PARENT_RUN_TAG = "mlflow.parentRunId"  # how MLflow (and its UI) nests a run under another


def tracking_uri(root: Path | None = None) -> str:
    root = (root or Path.cwd()).resolve()
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root / DEFAULT_DB}"


def _ensure_experiment(name: str, root: Path, local_store: bool) -> str:
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if local_store:
        # Next to the SQLite store, not in whatever directory the first run happened to start in.
        artifact_location = (root / DEFAULT_ARTIFACTS).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:
        # Another stage process created it between our lookup and our create.
        return client.get_experiment_by_name(name).experiment_id


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def data_hash(paths: Iterable[str | Path]) -> str:
    """sha256 over the stage's input files (folders walked in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            digest.update(str(f).encode())
            digest.update(sha256_file(f).encode())
    return digest.hexdigest()[:16]


# Per-step metrics reach the store in batches at most this many seconds apart (and with every
# summary, and at the run's end): one SQLite transaction per logging step cost ~10 ms of a 2-core
# CPU's training time, a hundred times per pipeline. MLflow's UI lags by as much.
METRIC_FLUSH_S = 10.0


class StageRun:
    """Handle on the active MLflow run of one stage. `seconds` is the time its calls took so far
    (MLflow's, while the stage runs): run_stage counts it as orchestration, not computation."""

    def __init__(self, run: mlflow.ActiveRun, log_models: bool) -> None:
        self.run_id = run.info.run_id
        self.log_models = log_models
        self.last_step = 0
        self.seconds = 0.0
        self._pending: list[Metric] = []
        self._flushed_at = time.monotonic()
        self._last_stamp = 0

    @contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Per-step metrics with `step` (stamped now, stored with the next batch: METRIC_FLUSH_S);
        a stage's summary without one, stored at once with what is pending. The summary goes at
        the highest step logged so far, since MLflow's "latest" value of a metric is the one at the
        highest step: at step 0 a run-wide figure (tokens/s) would hide behind the last window's."""
        with self._timed():
            clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            if step is not None:
                self.last_step = max(self.last_step, step)
            # MLflow's latest value is the one with the highest (step, timestamp, value): a summary
            # at the last step must come later than that step's own values, if only by 1 ms.
            stamp = max(int(time.time() * 1000), self._last_stamp + (step is None))
            self._last_stamp = stamp
            at = self.last_step if step is None else step
            self._pending.extend(Metric(k, v, stamp, at) for k, v in clean.items())
            if step is None or time.monotonic() - self._flushed_at >= METRIC_FLUSH_S:
                self._flush_metrics()

    def flush(self) -> None:
        """Store the pending per-step metrics now."""
        with self._timed():
            self._flush_metrics()

    def _flush_metrics(self) -> None:
        pending, self._pending = self._pending, []
        self._flushed_at = time.monotonic()
        if not pending:
            return
        client = MlflowClient()
        for i in range(0, len(pending), MAX_METRICS_PER_BATCH):
            client.log_batch(self.run_id, metrics=pending[i:i + MAX_METRICS_PER_BATCH])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._timed():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        with self._timed():
            mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def log_model_folder(self, folder: str | Path) -> None:
        """The stage's model folder (weights, config, tokenizer) as the run's MLflow model `model`, a
        pyfunc model that `mlflow.pyfunc.load_model` and `mlflow models serve` take
        (steps/tracking/pyfunc_models.py), unless tracking.log_models is off."""
        if self.log_models:
            with self._timed():
                # pandas and MLflow's model flavors load here, at the stage's end, not at its start.
                from steps.tracking.pyfunc_models import log_pyfunc_model

                log_pyfunc_model(folder)

    def log_text(self, text: str, name: str) -> None:
        with self._timed():
            mlflow.log_text(text, name)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        with self._timed():
            mlflow.set_tags(dict(tags))

    def log_child_run(self, name: str, params: Mapping[str, Any], metrics: Mapping[str, float],
                      tags: Mapping[str, str], seconds: float | None = None) -> str:
        """A finished run nested under this one (MLflow's `mlflow.parentRunId` tag): one point of
        something the stage measures several times (a label-efficiency point), which `gptpipe compare
        --stage <its stage tag>` then lists beside the others. It keeps this run's provenance tags
        (git commit, params and data hashes, DVC experiment) unless `tags` sets them; not the process
        tags, since no process runs it. `seconds`: how long its work took (it ends now), so that its
        wall time says so. Returns its run id."""
        with self._timed():
            client = MlflowClient()
            parent = client.get_run(self.run_id)
            inherited = {k: v for k, v in parent.data.tags.items()
                         if not k.startswith(("mlflow.", "gptpipe.")) or k == "mlflow.source.git.commit"}
            started = int((time.time() - (seconds or 0.0)) * 1000)
            child = client.create_run(parent.info.experiment_id, start_time=started, run_name=name,
                                      tags={**inherited, **tags, PARENT_RUN_TAG: self.run_id})
            child_id = child.info.run_id
            try:
                stamp = int(time.time() * 1000)
                client.log_batch(child_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
                                 params=[Param(k, _param_value(v)) for k, v in params.items()])
            except BaseException:
                client.set_terminated(child_id, status="FAILED")
                raise
            client.set_terminated(child_id, status="FINISHED")
        return child_id


@contextmanager
def stage_run(
    stage: str,
    params: dict[str, Any],
    params_hash: str,
    inputs: Iterable[str | Path],
    experiment: str,
    log_models: bool = True,
    root: Path | None = None,
) -> Iterator[StageRun]:
    """Open one MLflow run for a stage; it ends FAILED if the stage raises. The stage's runs that a
    killed process left RUNNING end FAILED first (close_orphaned_runs)."""
    root = (root or Path.cwd()).resolve()
    # Decide before set_tracking_uri: MLflow exports the URI it is given into the environment.
    local_store = not os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(root))
    experiment_id, commit = _ensure_experiment(experiment, root, local_store), git_commit(root)
    tags = {
        "stage": stage,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "params_hash": params_hash,
        "data_hash": data_hash(inputs),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    # Set by the retraining flow for the `dvc repro` it starts: how it finds the runs it caused.
    if os.environ.get(RETRAIN_ID_ENV):
        tags["retrain_id"] = os.environ[RETRAIN_ID_ENV]
    close_orphaned_runs(experiment_id, stage)
    tags.update(process_tags())
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags) as run:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})
        log.info("MLflow run %s (%s)", run.info.run_id, mlflow.get_tracking_uri())
        handle = StageRun(run, log_models)
        try:
            yield handle
        except BaseException:
            try:
                handle.flush()  # a failed stage's curve up to the failure
            except Exception as err:  # noqa: BLE001 - the stage's own error is the one to raise
                log.warning("MLflow run %s: pending metrics not stored: %s", handle.run_id, err)
            raise
        handle.flush()


# Which process runs a stage's MLflow run: a run still RUNNING whose process is gone (killed by
# SIGKILL, the machine's OOM killer, a power cut) never ended; the stage's next start ends it.
PID_TAG, HOST_TAG, PROCESS_START_TAG = "gptpipe.pid", "gptpipe.host", "gptpipe.process_start"
ORPHANED_TAG = "gptpipe.orphaned"


def process_tags() -> dict[str, str]:
    """This process as tags: pid, host and start time (a later process may reuse the pid)."""
    me = psutil.Process()
    return {PID_TAG: str(me.pid), HOST_TAG: socket.gethostname(), PROCESS_START_TAG: repr(me.create_time())}


def close_orphaned_runs(experiment_id: str, stage: str) -> list[str]:
    """Mark FAILED, with a tag saying why, each RUNNING run of `stage` whose recorded process no
    longer runs on this host. Runs recorded on another host, or without the process tags, are left
    alone: nothing here can tell whether they still run. Returns the run ids it ended."""
    client = MlflowClient()
    running = client.search_runs([experiment_id], filter_string=_filter_string(stage, {}, [], "RUNNING"))
    host, ended = socket.gethostname(), []
    for run in running:
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or PID_TAG not in tags or PROCESS_START_TAG not in tags:
            continue
        pid, started = int(tags[PID_TAG]), float(tags[PROCESS_START_TAG])
        if _process_runs(pid, started):
            continue
        reason = f"process {pid} on {host} no longer runs"
        client.set_tag(run.info.run_id, ORPHANED_TAG, reason)
        client.set_terminated(run.info.run_id, status="FAILED")
        log.warning("MLflow run %s of stage %s was left RUNNING (%s): marked FAILED", run.info.run_id, stage, reason)
        ended.append(run.info.run_id)
    return ended


def _process_runs(pid: int, started: float) -> bool:
    """Whether process `pid`, started at `started` (Unix time), still runs: not exited, not a zombie,
    and not a later process that got the same pid (a start time more than 1 s off)."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) <= 1 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # a zombie too
        return False
    except psutil.AccessDenied:  # another user's process: it exists, so it may still be the run's
        return True


def _param_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run as plain data, so code that compares runs never handles MLflow types."""

    run_id: str
    name: str
    status: str
    start_time: datetime | None
    end_time: datetime | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def seconds(self) -> float | None:
        """Wall time of the run, from MLflow's start and end timestamps."""
        if self.start_time is None or self.end_time is None:
            return None
        return (self.end_time - self.start_time).total_seconds()


def fetch_runs(
    experiment: str,
    stage: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_ids: Sequence[str] | None = None,
    max_runs: int | None = None,
    status: str | None = "FINISHED",
    root: Path | None = None,
) -> list[RunRecord]:
    """Runs of an experiment matching every filter given (status None: any), newest first."""
    uri = tracking_uri(root)
    if not _store_exists(uri):
        return []
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    query = _filter_string(stage, tags or {}, run_ids or [], status)
    runs: list[Any] = []
    token = None
    while max_runs is None or len(runs) < max_runs:
        page = client.search_runs([exp.experiment_id], filter_string=query, page_token=token,
                                  max_results=min(1000, max_runs - len(runs)) if max_runs else 1000,
                                  order_by=["attributes.start_time DESC"])
        runs.extend(page)
        token = page.token
        if not token:
            break
    return [_record(client, run) for run in runs]


def metric_histories(run_id: str, keys: Iterable[str], root: Path | None = None) -> dict[str, list[tuple[int, float]]]:
    """Every value logged for each metric, in the order it was logged: {metric: [(step, value), ...]}.

    Metrics the run never logged are left out.
    """
    client = MlflowClient(tracking_uri(root))
    histories = {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}
    return {key: points for key, points in histories.items() if points}


def experiment_names(root: Path | None = None) -> list[str]:
    """Names of the experiments in the store (for error messages that suggest one)."""
    uri = tracking_uri(root)
    if not _store_exists(uri):
        return []
    return sorted(exp.name for exp in MlflowClient(uri).search_experiments())


def _store_exists(uri: str) -> bool:
    # Opening a SQLite URI creates the database; a read-only command must not leave one behind.
    prefix = "sqlite:///"  # SQLAlchemy: the file name is everything after the third slash
    if not uri.startswith(prefix):
        return True
    path = uri[len(prefix):].split("?", 1)[0]
    return path in ("", ":memory:") or Path(path).exists()


def _filter_string(stage: str | None, tags: Mapping[str, str], run_ids: Sequence[str], status: str | None) -> str:
    wanted = dict(tags)
    if stage:
        wanted["stage"] = stage
    clauses = [f"tags.`{_tag_key(key)}` = {_quote(value)}" for key, value in wanted.items()]
    if run_ids:
        clauses.append("attributes.run_id IN (" + ", ".join(_quote(r) for r in run_ids) + ")")
    if status:
        clauses.append(f"attributes.status = {_quote(status)}")
    return " AND ".join(clauses)


def _tag_key(key: str) -> str:
    if "`" in key:
        raise ValueError(f"a tag name cannot contain a backtick: {key!r}")
    return key


def _quote(value: str) -> str:
    # MLflow's filter grammar has no escapes: pick the quote the value does not contain.
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"a filter value cannot contain both kinds of quote: {value!r}")


def _record(client: MlflowClient, run: Any) -> RunRecord:
    info = run.info
    return RunRecord(
        run_id=info.run_id,
        name=info.run_name or "",
        status=info.status,
        start_time=_time(info.start_time),
        end_time=_time(info.end_time),
        params=dict(run.data.params),
        metrics=_final_metrics(client, info.run_id, run.data.metrics),
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
    )


def _final_metrics(client: MlflowClient, run_id: str, latest: Mapping[str, float]) -> dict[str, float]:
    """The value logged last in time for each metric.

    MLflow's own "latest" value is the one with the highest step, but a stage logs its summary
    (e.g. overall tokens_per_s, full-split train_loss) without a step, i.e. at step 0, after the
    per-step history: MLflow would report the last training window instead of the summary.
    """
    final = {}
    for key, value in latest.items():
        history = client.get_metric_history(run_id, key)  # ordered by timestamp, then step
        final[key] = history[-1].value if history else value
    return final


def _time(millis: int | None) -> datetime | None:
    return datetime.fromtimestamp(millis / 1000) if millis else None


# ---------------------------------------------------------------------------
# Model Registry: versions of the finetuned models and the alias that marks the champion
# ---------------------------------------------------------------------------


class RegistryError(RuntimeError):
    """A registry operation that cannot succeed as asked: the message says what to change."""


@dataclass(frozen=True)
class ModelVersionRecord:
    """One registered model version as plain data."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        """What `mlflow.artifacts.download_artifacts` takes to fetch this version's files."""
        return f"models:/{self.name}/{self.version}"


def register_version(name: str, run_id: str, tags: Mapping[str, str], artifact_path: str = "model",
                     description: str | None = None, root: Path | None = None) -> ModelVersionRecord:
    """Register the MLflow model a run logged as `artifact_path` (or, from runs logged before models
    were MLflow models, its plain `artifact_path/` folder) as a new version of `name` (the registered
    model is created on first use)."""
    client = MlflowClient(tracking_uri(root))
    run = client.get_run(run_id)
    model_id = _logged_model_id(client, run, artifact_path)
    if model_id is None and not client.list_artifacts(run_id, artifact_path):
        raise RegistryError(
            f"MLflow run {run_id} ({run.data.tags.get('stage', run.info.run_name)}) logged no {artifact_path} "
            f"model to register; set `tracking.log_models: true` in params.yaml and rerun the stage")
    try:
        client.create_registered_model(name, description="gptpipe finetuned model; "
                                                         "the `champion` alias marks the one to serve")
    except mlflow.exceptions.MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    if model_id is not None:  # the version's files are the logged model's (MLmodel, code, artifacts)
        source = f"models:/{model_id}"
    else:
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id, tags=dict(tags), description=description,
                                          model_id=model_id)
    return _version_record(version)


def _logged_model_id(client: MlflowClient, run: Any, name: str) -> str | None:
    """The id of the MLflow model named `name` a run logged last, or None when it logged none."""
    outputs = sorted(run.outputs.model_outputs if run.outputs else [], key=lambda out: out.step)
    for out in reversed(outputs):
        if client.get_logged_model(out.model_id).name == name:
            return out.model_id
    return None


def version_by_alias(name: str, alias: str, root: Path | None = None) -> ModelVersionRecord | None:
    """The version an alias points at, or None when the model or the alias does not exist yet."""
    uri = tracking_uri(root)
    if not _store_exists(uri):
        return None
    try:
        return _version_record(MlflowClient(uri).get_model_version_by_alias(name, alias))
    except mlflow.exceptions.MlflowException as err:
        # An unknown model is RESOURCE_DOES_NOT_EXIST; an unknown alias INVALID_PARAMETER_VALUE.
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def set_alias(name: str, alias: str, version: str, root: Path | None = None) -> None:
    MlflowClient(tracking_uri(root)).set_registered_model_alias(name, alias, version)


def tag_version(name: str, version: str, tags: Mapping[str, Any], root: Path | None = None) -> None:
    client = MlflowClient(tracking_uri(root))
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def _version_record(v: Any) -> ModelVersionRecord:
    return ModelVersionRecord(name=v.name, version=str(v.version), run_id=v.run_id, source=v.source,
                              tags=dict(v.tags or {}), aliases=tuple(v.aliases or ()))


def download_model(uri: str, dest: Path, root: Path | None = None) -> Path:
    """The files of `models:/NAME@ALIAS`, `models:/NAME/VERSION` or `runs:/RUN_ID/PATH`,
    downloaded into `dest` (for `gptpipe generate|chat|classify|serve`); where they are."""
    uri_store = tracking_uri(root)
    if not _store_exists(uri_store):
        raise RegistryError(f"{uri}: there is no MLflow store at {uri_store} yet; run the pipeline first "
                            "(`make pipeline`) or point MLFLOW_TRACKING_URI at the store that holds the model")
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest), tracking_uri=uri_store,
                                                   registry_uri=uri_store)
    except (mlflow.exceptions.MlflowException, OSError) as err:
        raise RegistryError(f"{uri}: cannot be fetched from the MLflow store {uri_store} ({err}); check the name, "
                            "alias, version or run id (`gptpipe compare` lists runs; the MLflow UI lists registered "
                            "models), or set MLFLOW_TRACKING_URI to the store that holds it") from None
    return Path(path)
