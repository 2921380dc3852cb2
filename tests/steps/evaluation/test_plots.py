"""Tests for the PNG plots and the CSV files dvc plots reads (steps/evaluation/plots.py)."""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import numpy as np
import pytest

from steps.evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND"  # complete file, not truncated
    return struct.unpack(">II", data[16:24])


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


HISTORY = [
    {"step": 0, "val_loss": 4.16},
    {"step": 5, "train_loss": 3.6, "lr": 0.01, "tokens_per_s": 9000.0},
    {"step": 10, "train_loss": 2.18, "lr": 0.009, "tokens_per_s": 11000.0, "val_loss": 1.4161234567},
]


def test_write_csv(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "loss.csv"
    plots.write_csv(path, HISTORY, ["step", "train_loss", "val_loss"])
    assert path.read_text() == "step,train_loss,val_loss\n0,,4.16\n5,3.6,\n10,2.18,1.41612\n"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "5", "10"]
    assert files_in(path.parent) == ["loss.csv"]


def test_write_csv_skips_rows_without_any_value_and_formats(tmp_path: Path) -> None:
    rows = [
        {"step": 1, "lr": 0.1},  # none of the plotted columns: skipped
        {"step": 2, "val_accuracy": float("nan")},  # NaN: left empty, but the row is kept
        {"step": 3, "val_accuracy": np.float64(0.123456789)},
        {"step": 4, "val_accuracy": 1},
    ]
    path = tmp_path / "acc.csv"
    plots.write_csv(path, rows, ["step", "val_accuracy"])
    assert path.read_text() == "step,val_accuracy\n2,\n3,0.123457\n4,1\n"


def test_write_csv_header_only(tmp_path: Path) -> None:
    plots.write_csv(tmp_path / "empty.csv", [], ["step", "train_loss"])
    assert (tmp_path / "empty.csv").read_text() == "step,train_loss\n"


def test_write_confusion_csv(tmp_path: Path) -> None:
    path = tmp_path / "confusion.csv"
    plots.write_confusion_csv(path, preds=[0, 1, 1], refs=[0, 0, 1], labels=["ham", "spam"])
    assert path.read_text() == "actual,predicted\nham,ham\nham,spam\nspam,spam\n"


def test_curves_png(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "loss.png"
    plots.curves(path, HISTORY, ["train_loss", "val_loss", "missing"], "Loss", "nats",
                 baselines={"unigram": 3.9})
    assert png_size(path) == (770, 462)  # 7 x 4.2 inches at 110 dpi
    assert files_in(path.parent) == ["loss.png"]


def test_curves_many_points_no_baseline(tmp_path: Path) -> None:
    history = [{"step": i, "train_loss": 5.0 / (i + 1)} for i in range(100)]
    plots.curves(tmp_path / "c.png", history, ["train_loss"], "t", "y")
    assert png_size(tmp_path / "c.png") == (770, 462)


@pytest.mark.parametrize("matrix", [[[5, 1], [2, 7]], [[0, 0], [0, 0]]])
def test_confusion_matrix_png(tmp_path: Path, matrix: list[list[int]]) -> None:
    path = tmp_path / "confusion.png"
    plots.confusion_matrix(path, matrix, ["ham", "spam"], "Confusion")
    assert png_size(path) == (495, 440)
    assert files_in(tmp_path) == ["confusion.png"]


def test_grouped_bars_png(tmp_path: Path) -> None:
    path = tmp_path / "bars.png"
    plots.grouped_bars(path, ["accuracy", "f1"], {"start": [0.5, 0.4], "finetuned": [0.9, 0.85]}, "Before/after",
                       "score")
    assert png_size(path) == (770, 462)


def test_plots_overwrite_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "bars.png"
    path.write_bytes(b"old")
    plots.grouped_bars(path, ["a"], {"s": [1.0]}, "t", "y")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_overlaid_curves_one_panel_per_metric(tmp_path: Path):
    # Run "c" appears only in the second panel; the legend still lists it.
    panels = {"val_loss": {"a": [(0, 1.0), (5, 0.5)], "b": [(0, 1.2), (5, 0.4)]},
              "train_loss": {"b": [(5, 0.6)], "c": [(0, 2.0), (5, 1.0)]}}
    plots.overlaid_curves(tmp_path / "c.png", panels, ["a", "b", "c"], "title", highlight=["b"])
    width, height = png_size(tmp_path / "c.png")
    assert width > 2 * height  # two panels side by side


def test_a_png_is_the_same_bytes_for_the_same_figure(tmp_path: Path) -> None:
    """PNGs are DVC outputs: no library version (or date) in them, only the figure."""
    history = [{"step": 0, "train_loss": 3.0}, {"step": 5, "train_loss": 2.0}]
    for name in ("a.png", "b.png"):
        plots.curves(tmp_path / name, history, ["train_loss"], "Loss", "nats")
    data = (tmp_path / "a.png").read_bytes()
    assert data == (tmp_path / "b.png").read_bytes()
    assert b"tEXt" not in data and b"Matplotlib" not in data
