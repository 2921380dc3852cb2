"""Tests for telling whether a dataset's source changed since the last download (steps/data/refresh.py)."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest

from steps.config import DatasetSource, HfSource, LocalSource, UrlSource
from steps.data.fetch import SIDECAR, cache_entry
from steps.data.refresh import (
    PinnedSourceChanged,
    check_source,
    check_sources,
    read_recorded,
)
from steps.data.sources import fetch_url, load_hf, local_files
from tests.params import shipped_params


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_before_the_first_download_everything_counts_as_changed(tmp_path: Path) -> None:
    checks = check_sources(shipped_params().download, read_recorded(tmp_path / "sources.json"), tmp_path)
    assert [(c.dataset, c.kind, c.changed) for c in checks] == [
        ("corpus", "builtin", True), ("classification", "builtin", True), ("instructions", "builtin", True),
        ("preferences", "builtin", True)]


def test_builtin_sources_never_change_and_a_new_kind_does(tmp_path: Path) -> None:
    recorded = {name: {"kind": "builtin", "seed": 1} for name in ("corpus", "classification", "instructions", "preferences")}
    assert not any(c.changed for c in check_sources(shipped_params().download, recorded, tmp_path))
    local = DatasetSource(source=LocalSource(path="data/local/x.txt"))
    check = check_source("corpus", local, {"kind": "builtin"}, tmp_path)
    assert check.changed and "builtin to local" in check.reason


def test_a_broken_record_names_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "sources.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"sources.json: not valid JSON.*dvc repro -f download"):
        read_recorded(tmp_path / "sources.json")


# --- local --------------------------------------------------------------------------------------

@pytest.fixture
def local_folder(tmp_path: Path, monkeypatch) -> tuple[DatasetSource, dict]:
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "local" / "texts"
    folder.mkdir(parents=True)
    (folder / "a.txt").write_text("first\n")
    (folder / "b.txt").write_text("second\n")
    cfg = DatasetSource(source=LocalSource(path="data/local/texts"))
    return cfg, local_files(cfg.source, cfg.format).provenance


def test_unchanged_local_files(local_folder) -> None:
    cfg, recorded = local_folder
    check = check_source("corpus", cfg, recorded, Path("cache"))
    assert not check.changed and "2 file(s) unchanged" in check.reason


def test_edited_added_and_removed_local_files_are_named(local_folder) -> None:
    cfg, recorded = local_folder
    Path("data/local/texts/a.txt").write_text("first, edited\n")
    check = check_source("corpus", cfg, recorded, Path("cache"))
    assert check.changed and check.reason == "edited: data/local/texts/a.txt"
    Path("data/local/texts/b.txt").unlink()
    Path("data/local/texts/c.txt").write_text("third\n")
    check = check_source("corpus", cfg, recorded, Path("cache"))
    assert check.reason == ("added: data/local/texts/c.txt; removed: data/local/texts/b.txt; "
                            "edited: data/local/texts/a.txt")


# --- hf -----------------------------------------------------------------------------------------

def test_hf_dataset_changes_with_its_resolved_revision(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = tmp_path / "my_dataset"
    ds.mkdir()
    (ds / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    cfg = DatasetSource(source=HfSource(name=str(ds), split="train"))
    recorded = load_hf(cfg.source).provenance
    assert not check_source("classification", cfg, recorded, tmp_path).changed
    (ds / "train.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    check = check_source("classification", cfg, recorded, tmp_path)
    assert check.changed and check.reason.startswith(f"revision {recorded['resolved_revision']} -> ")


# --- url ----------------------------------------------------------------------------------------

@pytest.fixture
def site(tmp_path: Path, serve_folder):
    folder = tmp_path / "site"
    folder.mkdir()
    return folder, serve_folder(folder)


def _touch_later(path: Path, seconds: int = 5) -> None:
    """A later mtime, whole seconds on: Last-Modified has one-second resolution."""
    stamp = path.stat().st_mtime + seconds
    os.utime(path, (stamp, stamp))


def test_an_unchanged_url_costs_one_conditional_request(site, tmp_path: Path) -> None:
    folder, server = site
    (folder / "corpus.txt").write_bytes(b"hello\n")
    cfg = DatasetSource(source=UrlSource(url=f"{server.url}/corpus.txt", sha256=sha(b"hello\n")))
    recorded = fetch_url(cfg.source, tmp_path / "cache", tmp_path / "work").provenance
    check = check_source("corpus", cfg, recorded, tmp_path / "cache")
    assert not check.changed and "304" in check.reason
    assert server.requests == ["/corpus.txt", "/corpus.txt"]


def test_same_bytes_under_new_validators_are_unchanged_and_remembered(site, tmp_path: Path) -> None:
    folder, server = site
    (folder / "corpus.txt").write_bytes(b"hello\n")
    cfg = DatasetSource(source=UrlSource(url=f"{server.url}/corpus.txt", sha256=sha(b"hello\n")))
    recorded = fetch_url(cfg.source, tmp_path / "cache", tmp_path / "work").provenance
    _touch_later(folder / "corpus.txt")  # the server now sends a newer Last-Modified
    check = check_source("corpus", cfg, recorded, tmp_path / "cache")
    assert not check.changed and check.reason == "same bytes as the pinned sha256"
    # The sidecar learned the new Last-Modified: the next check is a 304 again.
    assert "304" in check_source("corpus", cfg, recorded, tmp_path / "cache").reason


def test_a_pinned_url_that_changed_upstream_says_to_update_the_pin(site, tmp_path: Path) -> None:
    folder, server = site
    (folder / "corpus.txt").write_bytes(b"hello\n")
    cfg = DatasetSource(source=UrlSource(url=f"{server.url}/corpus.txt", sha256=sha(b"hello\n")))
    recorded = fetch_url(cfg.source, tmp_path / "cache", tmp_path / "work").provenance
    (folder / "corpus.txt").write_bytes(b"hello, world\n")
    _touch_later(folder / "corpus.txt")
    with pytest.raises(PinnedSourceChanged, match=r"download.corpus: .*corpus.txt changed upstream: its sha256 is "
                                                  rf"now {sha(b'hello, world' + bytes([10]))}, params.yaml pins .*update "
                                                  r"download.corpus.source.sha256 in params.yaml"):
        check_source("corpus", cfg, recorded, tmp_path / "cache")


def test_without_recorded_validators_the_checksum_decides(site, tmp_path: Path) -> None:
    folder, server = site
    (folder / "corpus.txt").write_bytes(b"hello\n")
    cfg = DatasetSource(source=UrlSource(url=f"{server.url}/corpus.txt", sha256=sha(b"hello\n")))
    recorded = fetch_url(cfg.source, tmp_path / "cache", tmp_path / "work").provenance
    (cache_entry(cfg.source.url, tmp_path / "cache", sha256=cfg.source.sha256) / SIDECAR).unlink()
    check = check_source("corpus", cfg, recorded, tmp_path / "cache")
    assert not check.changed and check.reason == "same bytes as the pinned sha256"


def _zip(**members: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_a_pinned_member_decides_when_the_archive_bytes_move(site, tmp_path: Path) -> None:
    folder, server = site
    (folder / "data.zip").write_bytes(_zip(sms=b"ham\thi\n", readme=b"v1"))
    cfg = DatasetSource(source=UrlSource(url=f"{server.url}/data.zip", member="sms",
                                         member_sha256=sha(b"ham\thi\n")))
    recorded = fetch_url(cfg.source, tmp_path / "cache", tmp_path / "work").provenance
    (folder / "data.zip").write_bytes(_zip(sms=b"ham\thi\n", readme=b"v2"))
    _touch_later(folder / "data.zip")
    check = check_source("classification", cfg, recorded, tmp_path / "cache")
    assert not check.changed and check.reason == "archive bytes changed, the pinned member sms did not"
    (folder / "data.zip").write_bytes(_zip(sms=b"spam\twin\n", readme=b"v2"))
    _touch_later(folder / "data.zip", 10)  # later than the Last-Modified the check just remembered
    with pytest.raises(PinnedSourceChanged, match=r"member sms of .*data.zip changed upstream.*"
                                                  r"download.classification.source.member_sha256"):
        check_source("classification", cfg, recorded, tmp_path / "cache")
