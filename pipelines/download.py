"""Stage `download`: produce the raw datasets under data/raw/."""

from __future__ import annotations

from collections import Counter

from pipelines.stage import StageContext, io_task, run_stage
from prefect import flow
from steps import layout, plots
from steps.classification import read_labeled_tsv
from steps.datasets import write_builtin

SECTIONS = ["seed", "download", "tracking"]


@io_task
def fetch_datasets(ctx: StageContext) -> dict[str, float]:
    return write_builtin(ctx.params.download, ctx.params.seed, layout.CORPUS, layout.SMS, layout.INSTRUCTIONS)


def _body(ctx: StageContext) -> dict[str, float]:
    metrics = fetch_datasets(ctx)
    counts = Counter(e.label for e in read_labeled_tsv(layout.SMS))
    names = sorted(counts)
    plots.grouped_bars(ctx.plots / "sms_labels.png", names, {"messages": [counts[n] for n in names]},
                       "Classification set: messages per label", "messages")
    return metrics


@flow(name="download")
def download_flow(params_path: str = "params.yaml") -> dict[str, float]:
    return run_stage("download", params_path, SECTIONS, [], _body)
