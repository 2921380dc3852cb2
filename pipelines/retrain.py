"""Flow `retrain`: refresh the data sources, rerun what changed through DVC, register the finetuned
models, and move the `champion` alias only to a version that beats the champion on held-out data.

`gptpipe retrain` runs it once; `gptpipe schedule --cron "0 3 * * 1"` serves it as a Prefect
deployment on a schedule (one run at a time). Not a DVC stage: it drives `dvc repro`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from model.atomic import write_json
from pipelines import show_info_logs
from pipelines.retraining.promotion import CANDIDATES, CHAMPION, Candidate, decide
from pipelines.retraining.repo_lock import exclusive, refuse_beside_running_pipeline
from pipelines.retraining.repro import dvc_repro
from pipelines.retraining.what_ran import WhatRan, failed_stage, read_lock, what_ran
from steps import layout
from steps.config import Params, load_params, params_hash
from steps.data.fetch import default_cache_dir, transient_fetch_failure
from steps.data.refresh import SourceCheck, check_sources, read_recorded
from steps.tracking import runs as tracking

log = logging.getLogger("gptpipe.retrain")
show_info_logs()
DEFAULT_DEPLOYMENT = "scheduled"
# Tags a registered version carries: its held-out score (what a later challenger must beat) and
# where it came from.
METRIC_TAG, SCORE_TAG = "heldout_metric", "heldout_score"
PROVENANCE_TAGS = ("git_commit", "params_hash", "data_hash")


# A source check retries only what can heal by itself (network, 5xx), as the download does.
@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5, retry_condition_fn=transient_fetch_failure)
def refresh_sources(params: Params) -> list[SourceCheck]:
    """Compare every source with what the last download recorded in data/raw/sources.json."""
    checks = check_sources(params.download, read_recorded(layout.SOURCES), default_cache_dir())
    for check in checks:
        log.info("source %s (%s): %s - %s", check.dataset, check.kind,
                 "CHANGED" if check.changed else "unchanged", check.reason)
    return checks


@task(cache_policy=NO_CACHE)
def reproduce(force_download: bool, env: Mapping[str, str], experiment: str, retrain_id: str) -> WhatRan:
    """`dvc repro`, after forcing the download stage when a source changed in a way DVC cannot see
    (an hf revision, files outside data/local/). A stage whose output hash does not change lets
    everything below it skip. Returns what ran, from the stages' MLflow runs tagged with the
    retrain's id, checked against dvc.lock (pipelines/retraining/what_ran.py)."""
    root = Path.cwd()
    lock_before = read_lock(root)

    def failed() -> str | None:
        return failed_stage(experiment, retrain_id)

    if force_download:
        dvc_repro(root, ["--force", "--single-item", "download"], env, _log_line, failed_stage=failed)
    dvc_repro(root, [], env, _log_line, failed_stage=failed)
    ran = what_ran(root, lock_before, experiment, retrain_id)
    log.info("stages that ran: %s", ", ".join(ran.ran) or "none (everything was up to date)")
    return ran


def _log_line(line: str) -> None:
    if line.strip():
        log.info("dvc | %s", line)


@task(cache_policy=NO_CACHE)
def register_and_promote(candidate: Candidate, run: tracking.RunRecord | None, retrain_id: str,
                         metrics: Mapping[str, float]) -> dict[str, Any]:
    """Register the model its stage trained in this retrain (`run`, None when the stage did not
    run), then let the promotion gate decide on `champion`."""
    name = candidate.registered_name
    before = tracking.version_by_alias(name, CHAMPION)
    champion_score = _score(before, candidate)
    outcome: dict[str, Any] = {
        "model": candidate.key, "registered_name": name, "metric": candidate.metric,
        "higher_is_better": candidate.higher_is_better, "champion_version_before": before and before.version,
        "champion_score": _finite(champion_score), "new_version": None, "challenger_score": None,
        "promoted": False,
    }
    if run is None:
        outcome.update(reason=f"{candidate.stage} did not rerun: no new version",
                       champion_version_after=outcome["champion_version_before"])
        log.info("%s: %s; champion stays %s", name, outcome["reason"], outcome["champion_version_before"])
        return outcome
    challenger = metrics.get(candidate.metric)
    tags = {"stage": candidate.stage, "retrain_id": retrain_id, METRIC_TAG: candidate.metric,
            **{k: run.tags[k] for k in PROVENANCE_TAGS if k in run.tags}}
    if challenger is not None:
        tags[SCORE_TAG] = repr(float(challenger))
    version = tracking.register_version(name, run.run_id, tags,
                                        description=f"{candidate.stage} run {run.run_id} (retrain {retrain_id})")
    decision = decide(challenger, champion_score, candidate.higher_is_better, candidate.metric)
    if decision.promote:
        tracking.set_alias(name, CHAMPION, version.version)
    tracking.tag_version(name, version.version, {
        "promotion": "promoted" if decision.promote else "kept champion",
        "promotion_reason": decision.reason,
        "champion_version_at_decision": before.version if before else "none",
        "champion_score_at_decision": "none" if _finite(champion_score) is None else repr(champion_score),
    })
    after = version.version if decision.promote else outcome["champion_version_before"]
    outcome.update(new_version=version.version, challenger_score=challenger, promoted=decision.promote,
                   reason=decision.reason, champion_version_after=after, run_id=run.run_id)
    log.info("%s: registered version %s; %s; champion is now %s", name, version.version, decision.reason, after)
    return outcome


def _score(version: tracking.ModelVersionRecord | None, candidate: Candidate) -> float | None:
    """A version's recorded held-out score: None without a version, NaN when it has none for this metric."""
    if version is None:
        return None
    if version.tags.get(METRIC_TAG) != candidate.metric or SCORE_TAG not in version.tags:
        return math.nan
    return float(version.tags[SCORE_TAG])


def _finite(value: float | None) -> float | None:
    """A score for the JSON report: NaN (no score) becomes null."""
    return None if value is None or math.isnan(value) else value


def child_env(retrain_id: str) -> dict[str, str]:
    """The environment `dvc repro` gets: ours, with the retrain's id for the stage runs to carry.
    Prefect's per-run variables (PREFECT__FLOW_RUN_ID...) stay behind: each stage is a flow run
    of its own, not this one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
    env[tracking.RETRAIN_ID_ENV] = retrain_id
    return env


def retrain(params_path: str, retrain_id: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The flow's body, run in the repository root with the repository lock held."""
    started = _now()
    params = load_params(params_path)
    if not params.tracking.log_models:
        raise ValueError(f"{params_path}: tracking.log_models is false, so the stages log no model folder to "
                         "register; set it to true to retrain with a registry")
    report: dict[str, Any] = {"retrain_id": retrain_id, "started": started}
    with tracking.stage_run("retrain", {"params_path": params_path}, params_hash=params_hash(params, ["download"]),
                            inputs=[layout.SOURCES] if layout.SOURCES.exists() else [],
                            experiment=params.tracking.experiment) as run:
        try:
            checks = refresh_sources(params)
            report["sources"] = [vars(c) for c in checks]
            ran = reproduce(any(c.changed for c in checks), env, params.tracking.experiment, retrain_id)
            report.update(ran=ran.ran, changed=ran.changed, runs={s: r.run_id for s, r in ran.runs.items()})
            metrics = _read_metrics(layout.metrics_file("evaluate"))
            trained = ran.to_register(CANDIDATES)
            report["models"] = [register_and_promote(c, trained.get(c.key), retrain_id, metrics)
                                for c in CANDIDATES]
        except Exception as err:
            # The report always tells the last run's fate, so a stale success never stands in for it.
            report.update(status="failed", error=str(err), finished=_now())
            write_json(layout.RETRAIN_REPORT, report)
            raise
        report.update(status="completed", finished=_now())
        write_json(layout.RETRAIN_REPORT, report)
        run.log_metrics(_decision_metrics(report))
        run.set_tags({f"{o['model']}_decision": o["reason"] for o in report["models"]})
        run.log_artifact(layout.RETRAIN_REPORT)
    return report


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _decision_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {"sources_changed": sum(s["changed"] for s in report["sources"]),
                                 "stages_ran": len(report["ran"])}
    for o in report["models"]:
        metrics[f"{o['model']}_promoted"] = float(o["promoted"])
        for side in ("challenger", "champion"):
            value = o[f"{side}_score"]
            if value is not None and not math.isnan(value):
                metrics[f"{o['model']}_{side}_{o['metric']}"] = value
    return metrics


def _read_metrics(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if isinstance(v, (int, float))}


@flow(name="retrain")
def retrain_flow(repo: str = ".", params_path: str = "params.yaml") -> dict[str, Any]:
    """Refresh sources, `dvc repro`, register the finetuned models, promote a better one to champion."""
    root = Path(repo).expanduser().resolve()
    if not (root / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{root}: no dvc.yaml here; pass the project's root as `repo`")
    # Stages, DVC and the MLflow store all resolve their paths from the repository root.
    os.chdir(root)
    retrain_id = str(flow_run.id or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"))
    env = child_env(retrain_id)  # before MLflow exports its tracking URI into our environment
    with exclusive(layout.RETRAIN_LOCK, f"a retrain of {root}"):
        refuse_beside_running_pipeline(root)  # a scheduled run too: not beside a `dvc repro` by hand
        return retrain(params_path, retrain_id, env)


class ScheduleError(ValueError):
    """The schedule cannot be served as given: the message says what to change."""


def cron_schedule(cron: str, timezone_name: str | None) -> Any:
    """A validated Prefect cron schedule (a bad cron string or time zone is a ScheduleError)."""
    import pydantic
    from prefect.client.schemas.schedules import CronSchedule

    try:
        return CronSchedule(cron=cron, timezone=timezone_name)
    except pydantic.ValidationError as err:
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise ScheduleError(f"{problems} (cron has five fields: minute hour day-of-month month day-of-week, "
                            f"e.g. \"0 3 * * 1\" = Mondays 03:00)") from None


def serve(cron: str, name: str = DEFAULT_DEPLOYMENT, timezone_name: str | None = None, repo: str = ".",
          params_path: str = "params.yaml") -> None:
    """Create (or update) the deployment `retrain/<name>` on the Prefect server and run its scheduled
    and triggered runs in subprocesses of this process until it is stopped (Ctrl-C).

    One run at a time, twice over: the deployment's concurrency limit of 1 cancels a run that
    would start beside another (CANCEL_NEW), and the repository lock stops any other retrain of
    the same checkout (`gptpipe retrain` by hand, a second server).
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.settings import PREFECT_API_URL

    schedule = cron_schedule(cron, timezone_name)
    if not PREFECT_API_URL.value():
        # `gptpipe schedule` points itself at the local server first; a caller of serve() from
        # Python must do the same (or name a team's server).
        raise ScheduleError("PREFECT_API_URL is not set: a schedule needs a Prefect server that outlives this "
                            "process. Run `gptpipe schedule ...` (it uses the local server, starting it if "
                            "needed: `gptpipe server status` shows it), or export PREFECT_API_URL=<server>/api")
    root = Path(repo).expanduser().resolve()
    if not (root / "dvc.yaml").is_file():
        raise ScheduleError(f"{root}: no dvc.yaml here; run from the project's root or pass --repo")
    retrain_flow.serve(
        name=name,
        schedules=[schedule],
        parameters={"repo": str(root), "params_path": params_path},
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        limit=1,
        tags=["gptpipe", "retrain"],
        description=f"Scheduled retraining of {root} ({cron}{' ' + timezone_name if timezone_name else ''})",
    )
