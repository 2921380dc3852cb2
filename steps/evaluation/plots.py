"""Plots people look at (PNG via matplotlib) and the CSV data `dvc plots` renders."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Collection, Sequence
from pathlib import Path

from typing import TYPE_CHECKING

from model.atomic import atomic_path, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot():  # -> the matplotlib.pyplot module
    """matplotlib, imported when a stage plots (not when it starts: ~0.3 s), with no display."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot

    return matplotlib.pyplot


def write_csv(path: str | Path, rows: Sequence[dict[str, float]], columns: Sequence[str]) -> None:
    """Rows with the given columns; a value a row lacks is left empty (dvc plots skips it)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        if any(c in row for c in columns[1:]):
            writer.writerow({c: _fmt(row.get(c)) for c in columns})
    write_text(path, buf.getvalue())


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def curves(
    path: str | Path,
    history: Sequence[dict[str, float]],
    series: Sequence[str],
    title: str,
    ylabel: str,
    baselines: dict[str, float] | None = None,
) -> None:
    """One line per series against step, plus dashed horizontal reference lines."""
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    for name in series:
        points = [(r["step"], r[name]) for r in history if name in r]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3, label=name)
    for name, value in (baselines or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="gray")
        ax.annotate(name, (0, value), textcoords="offset points", xytext=(4, 4), fontsize=8, color="gray")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def confusion_matrix(path: str | Path, matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    ax.set_title(title)
    _save(fig, path)


def write_confusion_csv(path: str | Path, preds: Sequence[int], refs: Sequence[int], labels: Sequence[str]) -> None:
    """One row per example, the format of DVC's confusion template."""
    rows = [{"actual": labels[r], "predicted": labels[p]} for p, r in zip(preds, refs)]
    write_csv(path, rows, ["actual", "predicted"])


def grouped_bars(
    path: str | Path, groups: Sequence[str], series: dict[str, Sequence[float]], title: str, ylabel: str
) -> None:
    """Bars per group (e.g. per metric), one colour per series (e.g. before vs after finetuning)."""
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, values, width=width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def overlaid_curves(
    path: str | Path,
    panels: dict[str, dict[str, Sequence[tuple[float, float]]]],
    runs: Sequence[str],
    title: str,
    highlight: Collection[str] = (),
) -> None:
    """One subplot per metric ({metric: {run: [(step, value), ...]}}), one line per run.

    A run keeps its colour in every subplot (and in every figure given the same `runs` order);
    the `highlight` runs (e.g. the best) are drawn thicker.
    """
    colours = pyplot().get_cmap("tab10" if len(runs) <= 10 else "tab20").colors
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    handles = {}
    for ax, (metric, lines) in zip(axes[0], panels.items()):
        for i, run in enumerate(runs):
            points = sorted(lines.get(run, ()))
            if points:
                xs, ys = zip(*points)
                (handles[run],) = ax.plot(xs, ys, color=colours[i % len(colours)], label=run,
                                          linewidth=2.8 if run in highlight else 1.4,
                                          marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    # One legend for the figure, listing runs in `runs` order even if the first panel lacks some.
    axes[0][0].legend(handles=[handles[r] for r in runs if r in handles], fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def accuracy_by_labels(
    path: str | Path, lines: dict[str, Sequence[tuple[int, float]]], title: str, empty_note: str = "no points"
) -> None:
    """Test accuracy against the number of labelled training examples (log x axis), one line per
    method ({method: [(labels, accuracy), ...]}); with no points, an empty frame saying `empty_note`."""
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    drawn = False
    for name, points in lines.items():
        if points:
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", markersize=4, label=name)
            drawn = True
    if drawn:
        ax.set_xscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, empty_note, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xlabel("labelled training examples (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    _save(fig, path)


def _save(fig: Figure, path: str | Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        # No "Software: Matplotlib version ..." text chunk: a PNG is a DVC output, and the same
        # figure should be the same bytes whichever matplotlib drew it.
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
    pyplot().close(fig)
