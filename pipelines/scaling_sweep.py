"""The Prefect flow of `gptpipe scaling sweep`: the sweep's points one after another, each a
Prefect task and an MLflow run (stage tag `scaling_sweep`).

One flow of runs rather than a queue of `dvc exp run`s: a point is not a pipeline output (nothing
downstream reads it, and DVC would copy the workspace and hash outputs per point), every point
reads the same token files the pipeline already made, and the runs are compared in MLflow, where
the fit finds them. Resuming is by MLflow: a point whose run of the same sweep finished is skipped.
"""

from __future__ import annotations

import logging

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines import show_info_logs
from steps import layout
from steps.config import Params, load_params
from steps.errors import ExpectedError
from steps.hashing import sha256_file
from steps.scaling.sweep import (
    POINT_TAG,
    STAGE,
    SWEEP_TAG,
    SweepPoint,
    SweepSettings,
    plan_points,
    point_metrics,
    point_params,
    sweep_key,
    tokens_per_step,
    train_point,
)
from steps.tokenization.tokenizer import load_tokenizer
from steps.tracking.runs import fetch_runs, stage_run

log = logging.getLogger("gptpipe.scaling")
show_info_logs()


class SweepError(ExpectedError):
    """The sweep cannot start (no token files, no point left); the message says what to run."""


@task(cache_policy=NO_CACHE, persist_result=False)
def sweep_point(point: SweepPoint, params: Params, key: str, vocab_size: int) -> dict[str, float]:
    """Pretrain one point in its own MLflow run; its metrics."""
    with stage_run(STAGE, params={**point_params(point), SWEEP_TAG: key}, params_hash=key,
                   inputs=[layout.TRAIN_BIN, layout.VAL_BIN], experiment=params.tracking.experiment,
                   log_models=False) as run:
        run.set_tags({SWEEP_TAG: key, POINT_TAG: point.key})
        loss = train_point(point, params, layout.TRAIN_BIN, layout.VAL_BIN, vocab_size, on_metrics=run.log_metrics)
        metrics = point_metrics(point, loss)
        run.log_metrics(metrics)
    return metrics


@flow(name="scaling-sweep", persist_result=False)
def scaling_sweep(params_path: str, budgets: list[float], sizes: int, min_steps: int) -> list[dict[str, float]]:
    """Every point of the sweep; those finished before (same sweep key) are skipped."""
    params = load_params(params_path)
    if not all(p.exists() for p in (layout.TRAIN_BIN, layout.VAL_BIN, layout.TOKENIZER)):
        raise SweepError(f"{layout.TOKENS}: no token files; the sweep trains on the pipeline's tokens: run "
                         "`dvc repro tokenize` first")
    vocab = load_tokenizer(layout.TOKENIZER).get_vocab_size()
    settings = SweepSettings(tuple(budgets), sizes, min_steps)
    points, skipped = plan_points(settings, params.model.gpt_config(vocab), params.pretrain_seq_len,
                                  tokens_per_step(params))
    for reason in skipped:
        log.warning("left out: %s", reason)
    if not points:
        raise SweepError("no point of the sweep trains min_steps steps or more: raise --budgets or lower --min-steps")
    key = sweep_key(params, [sha256_file(layout.TRAIN_BIN), sha256_file(layout.VAL_BIN)])
    finished = {run.tags[POINT_TAG]: run.metrics
                for run in fetch_runs(params.tracking.experiment, stage=STAGE, tags={SWEEP_TAG: key})}
    results = []
    for i, point in enumerate(points, 1):
        label = (f"point {i}/{len(points)}: {point.n_layers} x {point.emb_dim} ({point.params:,} parameters), "
                 f"{point.max_steps} steps, {point.flops:.3g} FLOPs")
        if point.key in finished:
            log.info("%s: finished in an earlier run of this sweep, skipped", label)
            results.append(finished[point.key])
            continue
        log.info("%s", label)
        results.append(sweep_point(point, params, key, vocab))
    log.info("sweep %s: %d points (%d run now); `gptpipe scaling fit` fits a law to them", key, len(points),
             len(points) - sum(p.key in finished for p in points))
    return results
