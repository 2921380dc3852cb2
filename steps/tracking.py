"""The only module that talks to MLflow: one run per stage, with params, metrics, artifacts, tags.

Default store: `mlflow.db` (SQLite) in the repository root, artifacts in `mlartifacts/`.
Set MLFLOW_TRACKING_URI to use a team server instead.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

log = logging.getLogger("gptpipe.tracking")
DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"


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
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


class StageRun:
    """Handle on the active MLflow run of one stage."""

    def __init__(self, run: mlflow.ActiveRun, log_models: bool) -> None:
        self.run_id = run.info.run_id
        self.log_models = log_models

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def log_model_folder(self, folder: str | Path) -> None:
        """The stage's model folder (weights, config, tokenizer), unless tracking.log_models is off."""
        if self.log_models:
            self.log_artifacts(folder, artifact_path="model")

    def log_text(self, text: str, name: str) -> None:
        mlflow.log_text(text, name)


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
    """Open one MLflow run for a stage; it ends FAILED if the stage raises."""
    root = (root or Path.cwd()).resolve()
    # Decide before set_tracking_uri: MLflow exports the URI it is given into the environment.
    local_store = not os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri(root))
    experiment_id = _ensure_experiment(experiment, root, local_store)
    commit = git_commit(root)
    tags = {
        "stage": stage,
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "params_hash": params_hash,
        "data_hash": data_hash(inputs),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp"] = os.environ["DVC_EXP_NAME"]
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags) as run:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})
        log.info("MLflow run %s (%s)", run.info.run_id, mlflow.get_tracking_uri())
        yield StageRun(run, log_models)


def _param_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def find_runs(experiment: str, stage: str | None = None, root: Path | None = None) -> list[Any]:
    """Finished and failed runs of an experiment, newest first, optionally of one stage."""
    mlflow.set_tracking_uri(tracking_uri(root))
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    query = f"tags.stage = '{stage}'" if stage else ""
    return client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"])
