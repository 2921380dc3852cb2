"""What a retrain's `dvc repro` ran, from the state MLflow and DVC keep, never from console text.

Source of truth: the MLflow runs tagged with the retrain's id. Every stage records one MLflow run
(`steps/tracking/runs.py` `stage_run`), and the retraining flow hands its id to the stages through
GPTPIPE_RETRAIN_ID, which `stage_run` stores as the tag `retrain_id`. So a finished run tagged with
the id exists for exactly the stages whose command executed in this retrain, and it is the very
run whose model folder gets registered: the same record answers "what ran" and "what to register".
A stage DVC skipped (up to date) or forced but left unchanged is told apart correctly, which a
dvc.lock comparison alone cannot do (a forced rerun with identical results leaves dvc.lock as it
was; a stage restored from DVC's run cache changes dvc.lock without running).

Cross-check: dvc.lock (a documented YAML file: one entry per stage with the hashes of its deps,
params and outs) read before and after. A stage whose entry changed was rerun by DVC: the retrain
runs `dvc repro --no-run-cache` (pipelines/retraining/repro.py), so a changed entry means its
command executed, and a changed stage with no tagged run means the stage recorded its run somewhere
else (another MLFLOW_TRACKING_URI, another experiment): an error, rather than silently registering
nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines.retraining.promotion import Candidate
from steps.tracking import runs as tracking

LOCK_FILE = "dvc.lock"


class LockFileError(ValueError):
    """dvc.lock cannot be read as DVC writes it: the message names the file and what is wrong."""


class UntrackedStages(RuntimeError):
    """DVC reran stages that left no MLflow run tagged with the retrain's id."""


@dataclass(frozen=True)
class WhatRan:
    """The stages a retrain's `dvc repro` executed, with their MLflow runs, and what dvc.lock says changed."""

    ran: list[str]
    """Stages with a finished MLflow run tagged with the retrain's id, in the order they started."""
    runs: dict[str, tracking.RunRecord]
    """Each stage in `ran` -> its run (the latest, should a stage have run twice)."""
    changed: list[str]
    """Stages whose dvc.lock entry (deps, params, outs hashes) differs from before the repro."""

    def to_register(self, candidates: Iterable[Candidate]) -> dict[str, tracking.RunRecord]:
        """The candidate models this retrain trained: candidate key -> the run holding its model."""
        return {c.key: self.runs[c.stage] for c in candidates if c.stage in self.runs}


def read_lock(root: Path) -> dict[str, dict[str, Any]]:
    """Each stage's entry in `root`/dvc.lock; {} before the first `dvc repro` wrote the file."""
    path = root / LOCK_FILE
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise LockFileError(f"{path}: not valid YAML ({err}); `dvc repro` rewrites it, or restore it "
                            f"from git (`git checkout {LOCK_FILE}`)") from None
    stages = (data or {}).get("stages", {}) if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        raise LockFileError(f"{path}: no `stages` mapping at the top, as DVC writes it; `dvc repro` rewrites "
                            f"the file, or restore it from git (`git checkout {LOCK_FILE}`)")
    return stages


def changed_stages(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Stages whose dvc.lock entry is new or different after, in dvc.lock's order."""
    return [name for name, entry in after.items() if before.get(name) != entry]


def tagged_runs(experiment: str, retrain_id: str, stages: Iterable[str] | None = None,
                status: str = "FINISHED") -> dict[str, tracking.RunRecord]:
    """The latest run of each stage tagged with the retrain's id and in `status`, oldest first;
    with `stages`, of those stages only."""
    wanted = None if stages is None else set(stages)
    latest: dict[str, tracking.RunRecord] = {}
    for run in tracking.fetch_runs(experiment, tags={"retrain_id": retrain_id}, status=status):  # newest first
        stage = run.tags.get("stage", "")
        if (wanted is None or stage in wanted) and stage not in latest:
            latest[stage] = run
    return dict(reversed(latest.items()))


def what_ran(root: Path, lock_before: Mapping[str, Any], experiment: str, retrain_id: str) -> WhatRan:
    """After a successful `dvc repro --no-run-cache` in `root`: the stages it executed, from MLflow,
    checked against the dvc.lock entries it changed (`lock_before` is `read_lock` from before it)."""
    after = read_lock(root)
    # Pipeline stages only: the retraining flow records a run of its own (stage `retrain`).
    runs = tagged_runs(experiment, retrain_id, after)
    changed = changed_stages(lock_before, after)
    missing = [stage for stage in changed if stage not in runs]
    if missing:
        raise UntrackedStages(
            f"{LOCK_FILE} shows that `dvc repro` reran {', '.join(missing)}, but MLflow experiment "
            f"{experiment!r} at {tracking.tracking_uri(root)} has no finished run of "
            f"{'it' if len(missing) == 1 else 'them'} tagged retrain_id={retrain_id}: the stages recorded "
            f"their runs elsewhere. Give `gptpipe retrain` the same MLFLOW_TRACKING_URI and "
            f"tracking.experiment as the stages, then retrain again (nothing was registered)")
    return WhatRan(ran=list(runs), runs=runs, changed=changed)


def failed_stage(experiment: str, retrain_id: str) -> str | None:
    """The stage whose MLflow run tagged with the retrain's id ended FAILED (the latest such), if any:
    which stage broke a repro, from the run the stage itself closed as failed. None when the stage
    failed before opening its run (bad params, an import error) or DVC itself failed."""
    failed = tagged_runs(experiment, retrain_id, status="FAILED")
    return next(reversed(failed), None) if failed else None
