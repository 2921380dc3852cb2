"""The book's preference data (chapter 7, DPO), fetched the way the `book` profiles fetch it: its
count, its checksum and the 85/10/5 split in file order the book makes (skipped without ../shared)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from steps.data.datasets import preference_records, write_preferences
from steps.data.sizes import check_preferences
from steps.data.sources import fetch_url
from steps.tasks.splits import instruction_splits
from tests.params import shipped_params

ROOT = Path(__file__).resolve().parents[3]
NAME = "instruction-data-with-preference.json"


@pytest.mark.parametrize("profile", ["book", "book-small"])
def test_the_books_preference_file_gives_1100_records_split_935_110_55(
        shared_data: Path, serve_folder, tmp_path: Path, profile: str) -> None:
    server = serve_folder(shared_data / "book")
    download = yaml.safe_load((ROOT / "profiles" / f"{profile}.yaml").read_text())["download"]
    download["preferences"]["source"]["url"] = f"{server.url}/{NAME}"  # the profile's pin, served locally
    cfg = shipped_params({"download": {"preferences": download["preferences"]}}).download.preferences

    got = fetch_url(cfg.source, tmp_path / "cache", tmp_path / "work")
    out = tmp_path / "preferences.json"
    stats = write_preferences(preference_records(got, cfg), out, got.where, cfg.identical_pairs)

    assert cfg.identical_pairs == "keep"  # as the book does: 6 records have chosen = rejected
    assert (stats["preference_records"], stats["preference_identical_pairs"]) == (1100, 6)
    records = json.loads(out.read_text(encoding="utf-8"))
    source = json.loads((shared_data / "book" / NAME).read_text(encoding="utf-8"))
    # File order kept; the book's `output` field is not carried over.
    assert [(r["instruction"], r["chosen"], r["rejected"]) for r in records] == \
        [(r["instruction"], r["chosen"], r["rejected"]) for r in source]
    assert all(set(r) == {"instruction", "input", "chosen", "rejected"} for r in records)
    splits = check_preferences(len(records), got.where)
    assert (splits.train, splits.test, splits.val) == (935, 110, 55)
    assert splits == instruction_splits(1100)
