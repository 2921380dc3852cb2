"""Runs side by side: the params that differ, metrics and cost, the best run, as markdown and HTML."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from model.atomic import write_text
from steps.evaluation import plots

if TYPE_CHECKING:  # the records are plain data; importing tracking at runtime would pull in MLflow
    from steps.tracking.runs import RunRecord

# What is worth a column when the user names no metrics: quality first, then cost.
DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "finetune_classifier": ("test_accuracy", "test_f1", "val_accuracy", "trainable_parameters",
                            "peak_memory_mb", "seconds_per_step", "tokens_per_s"),
    "finetune_instruct": ("val_loss", "train_loss", "trainable_parameters", "peak_memory_mb",
                          "seconds_per_step", "tokens_per_s"),
    "evaluate": ("classifier_test_accuracy", "instruct_rougeL", "instruct_exact_match"),
    # The stage's run (the pretrained model's margins) and each point's own run nested in it.
    "label_efficiency": ("headline_pretrained_minus_random_init", "headline_pretrained_minus_tfidf",
                         "full_pretrained_minus_tfidf"),
    "label_efficiency_point": ("test_accuracy",),
    "pretrain": ("val_loss", "tokens_per_s"),
}
# Per-step histories drawn as overlaid curves, one figure per group.
CURVE_FIGURES: dict[str, tuple[str, ...]] = {
    "curves.png": ("train_loss", "val_loss"),
    "accuracy.png": ("val_accuracy",),
}
BEST_MARK = "★ best"
MISSING = "—"


class CompareError(ValueError):
    """The comparison cannot be made as asked; the message says how to fix it."""


@dataclass(frozen=True)
class Filters:
    """Which runs were asked for, as the report's header describes them."""

    experiment: str
    stage: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    run_ids: tuple[str, ...] = ()
    status: str | None = "FINISHED"
    last: int | None = None

    def describe(self) -> str:
        parts = [f"experiment `{self.experiment}`"]
        if self.stage:
            parts.append(f"stage `{self.stage}`")
        parts += [f"tag `{k}={v}`" for k, v in self.tags.items()]
        if self.run_ids:
            parts.append("runs " + ", ".join(f"`{r}`" for r in self.run_ids))
        parts.append(f"status {self.status}" if self.status else "any status")
        if self.last:
            parts.append(f"newest {self.last}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Best:
    metric: str
    maximize: bool
    run_ids: frozenset[str]  # several when tied; empty when no run has the metric


@dataclass(frozen=True)
class Comparison:
    filters: Filters
    runs: list[RunRecord]  # in table order
    stage: str | None  # the stage every run shares, if they do
    key_params: list[str]  # params whose values differ between the runs
    shared_params: dict[str, str]  # params every run has with one value
    metrics: list[str]
    best: Best | None

    def is_best(self, run: RunRecord) -> bool:
        return self.best is not None and run.run_id in self.best.run_ids


def parse_tags(items: Sequence[str]) -> dict[str, str]:
    """`["dvc_exp=cls-lora", ...]` -> `{"dvc_exp": "cls-lora"}`."""
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CompareError(f"--tag {item!r}: expected KEY=VALUE, e.g. --tag dvc_exp=cls-lora")
        tags[key.strip()] = value.strip()
    return tags


def minimize_by_default(metric: str) -> bool:
    """Losses, perplexities, times and memory are better low; everything else better high."""
    name = metric.lower()
    return name.endswith(("loss", "perplexity")) or any(w.startswith(("seconds", "memory")) for w in name.split("_"))


def run_label(run: RunRecord) -> str:
    """What a person calls the run: its DVC experiment, else its MLflow name."""
    return run.tags.get("dvc_exp") or run.name or run.run_id[:8]


def common_stage(runs: Sequence[RunRecord]) -> str | None:
    stages = {run.tags.get("stage") for run in runs}
    return stages.pop() if len(stages) == 1 else None


def key_params(runs: Sequence[RunRecord]) -> list[str]:
    """Params whose value differs between runs (a param some runs lack counts as differing)."""
    names = sorted({name for run in runs for name in run.params})
    return [n for n in names if len({run.params.get(n) for run in runs}) > 1]


def available_metrics(runs: Sequence[RunRecord]) -> list[str]:
    return sorted({name for run in runs for name in run.metrics})


def default_metrics(runs: Sequence[RunRecord], stage: str | None) -> list[str]:
    """The stage's usual columns that some run logged; for mixed stages, every stage's."""
    stages = [stage] if stage else sorted({run.tags.get("stage", "") for run in runs})
    wanted = [m for s in stages for m in DEFAULT_METRICS.get(s, ())]
    present = set(available_metrics(runs))
    chosen = list(dict.fromkeys(m for m in wanted if m in present))
    return chosen or sorted(present)


def pick_best(runs: Sequence[RunRecord], metric: str, maximize: bool) -> Best:
    """The run(s) with the best value; runs without the metric (or with NaN) never win."""
    scored = {run.run_id: run.metrics[metric] for run in runs
              if metric in run.metrics and not math.isnan(run.metrics[metric])}
    if not scored:
        return Best(metric, maximize, frozenset())
    top = max(scored.values()) if maximize else min(scored.values())
    return Best(metric, maximize, frozenset(r for r, v in scored.items() if v == top))


def compare(
    runs: Sequence[RunRecord],
    filters: Filters,
    metrics: Sequence[str] | None = None,
    best: str | None = None,
    maximize: bool | None = None,
) -> Comparison:
    """Decide the columns and the best run; raises CompareError for metrics no run logged."""
    if not runs:
        raise CompareError(f"no runs match {filters.describe()}")
    available = available_metrics(runs)
    unknown = [m for m in [*(metrics or []), *([best] if best else [])] if m not in available]
    if unknown:
        raise CompareError(f"no selected run logged {', '.join(unknown)}; "
                           f"metrics they have: {', '.join(available) or '(none)'}")
    stage = filters.stage or common_stage(runs)
    columns = list(metrics) if metrics else default_metrics(runs, stage)
    if best is None:
        # The stage's headline metric: the first of its default columns.
        best = next((m for m in DEFAULT_METRICS.get(stage or "", ()) if m in available), None)
    chosen = None
    if best is not None:
        chosen = pick_best(runs, best, not minimize_by_default(best) if maximize is None else maximize)
        if best not in columns:
            columns.insert(0, best)
    differing = key_params(runs)
    shared = {n: v for n, v in sorted(runs[0].params.items()) if n not in differing}
    return Comparison(filters, list(runs), stage, differing, shared, columns, chosen)


def curve_points(history: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """A metric's history as a curve, in step order.

    Stages log their summary values without a step (MLflow stores step 0) after training; a point
    logged at a lower step than one already logged is such a summary, not part of the curve.
    """
    points: list[tuple[int, float]] = []
    highest = None
    for step, value in history:
        if highest is None or step >= highest:
            points.append((step, value))
            highest = step
    return sorted(points, key=lambda p: p[0])


def curve_panels(
    comparison: Comparison, histories: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    metrics: Sequence[str],
) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{metric: {run label: points}} for the metrics some run has a curve (2+ points) of."""
    panels = {}
    for metric in metrics:
        lines = {plot_label(run, comparison): curve_points(histories.get(run.run_id, {}).get(metric, []))
                 for run in comparison.runs}
        if any(len(points) > 1 for points in lines.values()):
            panels[metric] = {label: points for label, points in lines.items() if points}
    return panels


def plot_label(run: RunRecord, comparison: Comparison | None = None) -> str:
    """A legend entry. Names repeat (every run of a stage is named after it), so a run outside a
    DVC experiment is told apart by the params that differ (`trainable=all lr=0.0005`), and the
    short id keeps lines apart whatever happens."""
    name = run_label(run)
    if comparison is not None and "dvc_exp" not in run.tags and comparison.key_params:
        shown = comparison.key_params[:3]
        name = " ".join(f"{_param_label(p, comparison.stage, comparison.key_params)}={run.params.get(p, MISSING)}"
                        for p in shown)
    return f"{name} ({run.run_id[:8]})"


def write_report(
    comparison: Comparison, histories: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], out: Path
) -> list[Path]:
    """compare.md, compare.html and the curve PNGs under `out`; returns the paths written."""
    labels = [plot_label(run, comparison) for run in comparison.runs]
    images: dict[str, bytes] = {}
    for name, metrics in CURVE_FIGURES.items():
        panels = curve_panels(comparison, histories, metrics)
        if panels:
            title = f"{comparison.stage or 'all stages'}: {' and '.join(panels)} per step"
            best = [plot_label(run, comparison) for run in comparison.runs if comparison.is_best(run)]
            plots.overlaid_curves(out / name, panels, labels, title, highlight=best)
            images[name] = (out / name).read_bytes()
    write_text(out / "compare.md", markdown(comparison, list(images)))
    write_text(out / "compare.html", html_page(comparison, images))
    return [out / "compare.md", out / "compare.html", *(out / name for name in images)]


def table(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """Header and formatted cells, one row per run: the same table for markdown and HTML."""
    c = comparison
    show_status = any(run.status != "FINISHED" for run in c.runs)
    header = ["run", "id", "started", "commit", *(["status"] if show_status else []),
              *(_param_label(p, c.stage, c.key_params) for p in c.key_params), *c.metrics, "wall time"]
    rows = []
    for run in c.runs:
        cells = [
            run_label(run) + (f" {BEST_MARK}" if c.is_best(run) else ""),
            run.run_id[:8],
            run.start_time.strftime("%Y-%m-%d %H:%M") if run.start_time else MISSING,
            run.tags.get("git_commit", "")[:7] or MISSING,
            *([run.status] if show_status else []),
            *(run.params.get(p, MISSING) for p in c.key_params),
            *(format_value(run.metrics.get(m)) for m in c.metrics),
            format_seconds(run.seconds),
        ]
        rows.append(cells)
    return header, rows


def _param_label(name: str, stage: str | None, names: Sequence[str]) -> str:
    """`finetune_classifier.lr` -> `lr` when all runs are of that stage and nothing else is `lr`."""
    prefix = f"{stage}."
    short = name.removeprefix(prefix) if stage else name
    clash = sum(n == short or n.removeprefix(prefix) == short for n in names) > 1
    return name if clash else short


def format_value(value: float | None) -> str:
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    if value == int(value) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def summary_lines(comparison: Comparison) -> list[str]:
    """What was compared and who won, in markdown (the HTML page converts the backticks)."""
    c = comparison
    lines = [f"Compared {len(c.runs)} run{'s' * (len(c.runs) != 1)}: {c.filters.describe()}."]
    if c.best is None:
        lines.append("No best run marked: pass --best METRIC.")
    else:
        direction = "higher" if c.best.maximize else "lower"
        winners = [f"**{run_label(r)}** (`{r.run_id[:8]}`)" for r in c.runs if c.is_best(r)]
        lines.append(f"Best by `{c.best.metric}` ({direction} is better): "
                     + (", ".join(winners) if winners else "no run logged it") + ".")
    if c.key_params:
        total = len(c.key_params) + len(c.shared_params)
        lines.append(f"Param columns: only the params whose values differ between these runs "
                     f"({len(c.key_params)} of {total}).")
    else:
        lines.append("Every run has the same params.")
    return lines


def markdown_table(comparison: Comparison) -> str:
    header, rows = table(comparison)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, cells in zip(comparison.runs, rows):
        if comparison.is_best(run):
            cells = [f"**{cells[0]}**", *cells[1:]]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def markdown(comparison: Comparison, images: Sequence[str]) -> str:
    lines = ["# Run comparison", "", *summary_lines(comparison), "", markdown_table(comparison)]
    lines += [f"![{name.removesuffix('.png')}]({name})\n" for name in images]
    if comparison.shared_params:
        lines += ["## Params every run shares", "", "| param | value |", "|---|---|"]
        lines += [f"| {_md_cell(k)} | {_md_cell(v)} |" for k, v in comparison.shared_params.items()]
    return "\n".join(lines) + "\n"


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff3c4; font-weight: 600; }
img { max-width: 100%; display: block; margin: 1em 0; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""


NUM_TD = '<td class="num">'


def html_page(comparison: Comparison, images: Mapping[str, bytes]) -> str:
    """One self-contained page: inline CSS and the PNGs embedded, so the file can be shared alone."""
    header, rows = table(comparison)
    first_number = 4 + ("status" in header) + len(comparison.key_params)
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>gptpipe run comparison</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        "<h1>Run comparison</h1>",
        *(f"<p>{_inline_html(line)}</p>" for line in summary_lines(comparison)),
        "<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>",
    ]
    for run, cells in zip(comparison.runs, rows):
        row_class = ' class="best"' if comparison.is_best(run) else ""
        tds = [(NUM_TD if i >= first_number else "<td>") + html.escape(c) + "</td>" for i, c in enumerate(cells)]
        parts.append(f"<tr{row_class}>" + "".join(tds) + "</tr>")
    parts.append("</table>")
    for name, data in images.items():
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">')
    if comparison.shared_params:
        parts += ["<details><summary>Params every run shares</summary>", "<table>"]
        parts += [f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                  for k, v in comparison.shared_params.items()]
        parts += ["</table>", "</details>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _inline_html(line: str) -> str:
    """The summary's markdown `code` and **bold** as HTML."""
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(line))
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
