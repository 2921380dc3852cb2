"""Stage `download`: fetch or generate the four datasets and write them, normalized, to data/raw/."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pipelines.stage import StageContext, run_stage, stage_flow, stage_task
from steps import layout
from steps.config import BuiltinSizes, DatasetSource, HfSource, LocalSource, UrlSource
from steps.data import datasets, sizes
from steps.data.fetch import default_cache_dir, transient_fetch_failure
from steps.data.sources import Fetched, fetch_url, load_hf, local_files
from steps.evaluation import plots

SECTIONS = ["seed", "download", "tracking"]
log = logging.getLogger("gptpipe.download")


@task(cache_policy=NO_CACHE, persist_result=False)
def fetch_source(dataset: str, cfg: DatasetSource, work_dir: Path) -> Fetched:
    src = cfg.source
    if isinstance(src, UrlSource):
        return fetch_url(src, default_cache_dir(), work_dir)
    if isinstance(src, LocalSource):
        return local_files(src, cfg.format)
    if isinstance(src, HfSource):
        return load_hf(src)
    raise ValueError(f"download.{dataset}: {src.kind} sources are generated, not fetched")


def fetch(dataset: str, cfg: DatasetSource, work_dir: Path) -> Fetched:
    """One Prefect task run per dataset; url sources retry transient errors with backoff."""
    src = cfg.source
    options: dict[str, Any] = {"task_run_name": f"fetch-{dataset}"}
    if isinstance(src, UrlSource):
        options.update(retries=src.retries, retry_delay_seconds=exponential_backoff(src.retry_delay_s),
                       retry_condition_fn=transient_fetch_failure)
    return fetch_source.with_options(**options)(dataset, cfg, work_dir)


def dataset_input(dataset: str, cfg: DatasetSource, ctx: StageContext, work: Path,
                  builtin: Callable[[int, BuiltinSizes], Iterable[Any]],
                  read: Callable[[Fetched, Any], Iterable[Any]]) -> tuple[Iterable[Any], str, dict[str, Any]]:
    """(items to write, how errors name the source, provenance) of one dataset: generated when its
    source is `builtin`, else fetched (a Prefect task) and read with its format and field mapping."""
    if cfg.source.kind == "builtin":
        seed = ctx.params.seed
        return builtin(seed, ctx.params.download.builtin), f"builtin {dataset}", {"kind": "builtin", "seed": seed}
    got = fetch(dataset, cfg, work / dataset)
    return read(got, cfg), got.where, got.provenance


@stage_task
def write_datasets(ctx: StageContext, staging: Path) -> dict[str, float]:
    cfg = ctx.params.download
    work = Path(tempfile.mkdtemp(prefix="gptpipe-download-"))
    provenance: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    try:
        docs, where, provenance["corpus"] = dataset_input(
            "corpus", cfg.corpus, ctx, work, datasets.builtin_documents, datasets.corpus_documents)
        metrics.update(datasets.write_corpus(docs, staging / layout.CORPUS.name, where))
        metrics.update(sizes.check_corpus(staging / layout.CORPUS.name, ctx.params.tokenize.val_fraction,
                                          ctx.params.pretrain_seq_len, where))

        examples, where, provenance["classification"] = dataset_input(
            "classification", cfg.classification, ctx, work, datasets.builtin_classification,
            datasets.classification_records)
        metrics.update(datasets.write_classification(examples, cfg.classification.labels,
                                                     staging / layout.CLASSIFICATION.name,
                                                     staging / layout.LABELS.name, where,
                                                     unlisted_labels=cfg.classification.unlisted_labels))
        check_classification_sizes(ctx, staging, where)

        records, where, provenance["instructions"] = dataset_input(
            "instructions", cfg.instructions, ctx, work, datasets.builtin_instructions,
            datasets.instruction_records)
        metrics.update(datasets.write_instructions(records, staging / layout.INSTRUCTIONS.name, where))
        sizes.check_instructions(int(metrics["instruction_records"]), where)

        records, where, provenance["preferences"] = dataset_input(
            "preferences", cfg.preferences, ctx, work, datasets.builtin_preferences, datasets.preference_records)
        metrics.update(datasets.write_preferences(records, staging / layout.PREFERENCES.name, where,
                                                  identical_pairs=cfg.preferences.identical_pairs))
        sizes.check_preferences(int(metrics["preference_records"]), where)
        datasets.write_provenance(staging / layout.SOURCES.name, provenance)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return metrics


def check_classification_sizes(ctx: StageContext, staging: Path, where: str) -> None:
    """The classification set as written fills every split finetune_classifier makes."""
    clf = ctx.params.finetune_classifier
    labels = json.loads((staging / layout.LABELS.name).read_text(encoding="utf-8"))
    counts = datasets.label_counts(staging / layout.CLASSIFICATION.name)
    sizes.check_classification(counts, labels, clf.train_fraction, clf.val_fraction, clf.balance, where)


def publish(staging: Path, target: Path) -> None:
    """Replace data/raw with the complete staging folder in one rename: never half of a dataset."""
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def _body(ctx: StageContext) -> dict[str, float]:
    staging = layout.RAW.with_name(layout.RAW.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        metrics = write_datasets(ctx, staging)
        publish(staging, layout.RAW)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    counts = datasets.label_counts(layout.CLASSIFICATION)
    names = json.loads(layout.LABELS.read_text(encoding="utf-8"))  # as write_datasets wrote them
    plots.grouped_bars(ctx.plots / "labels.png", names, {"records": [counts[n] for n in names]},
                       "Classification set: records per label", "records")
    return metrics


@stage_flow("download")
def download_flow(params_path: str = "params.yaml") -> dict[str, float]:
    return run_stage("download", params_path, SECTIONS, [], _body)
