"""Tests for resolving url / local / hf sources into files or rows (steps/data/sources.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from steps.config import HfSource, LocalSource, UrlSource
from steps.data.fetch import FetchError
from steps.data.readers import DataError
from steps.data.sources import fetch_url, load_hf, local_files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def site(tmp_path: Path, serve_folder):
    folder = tmp_path / "site"
    folder.mkdir()
    return folder, serve_folder(folder)


# --- url ----------------------------------------------------------------------------------------

def test_plain_file_is_fetched_once(site, tmp_path: Path) -> None:
    folder, server = site
    (folder / "corpus.txt").write_text("hello\n")
    src = UrlSource(url=f"{server.url}/corpus.txt", sha256=sha(b"hello\n"))
    first = fetch_url(src, tmp_path / "cache", tmp_path / "work")
    second = fetch_url(src, tmp_path / "cache", tmp_path / "work2")
    assert first.files[0].read_text() == "hello\n" and second.files == first.files
    assert server.requests == ["/corpus.txt"]  # the second call came from the cache
    assert first.provenance == {"kind": "url", "url": src.url, "sha256": sha(b"hello\n")}


def test_zip_member_pinned_by_its_own_checksum(site, tmp_path: Path) -> None:
    folder, server = site
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("SMSSpamCollection", "ham\thi\n")
        zf.writestr("readme", "about")
    (folder / "sms.zip").write_bytes(buf.getvalue())
    src = UrlSource(url=f"{server.url}/sms.zip", member="SMSSpamCollection", member_sha256=sha(b"ham\thi\n"))
    got = fetch_url(src, tmp_path / "cache", tmp_path / "work")
    assert got.files == [tmp_path / "work" / "SMSSpamCollection"]
    assert got.files[0].read_text() == "ham\thi\n"
    assert got.provenance["member_sha256"] == sha(b"ham\thi\n")


def test_member_checksum_mismatch_refetches_once_then_fails(site, tmp_path: Path) -> None:
    folder, server = site
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("data.tsv", "changed upstream\n")
    (folder / "a.zip").write_bytes(buf.getvalue())
    src = UrlSource(url=f"{server.url}/a.zip", member="data.tsv", member_sha256="0" * 64)
    with pytest.raises(FetchError, match="0" * 64):
        fetch_url(src, tmp_path / "cache", tmp_path / "work")
    assert len(server.requests) == 2  # the stale cache is not trusted: one fresh download
    assert not (tmp_path / "work" / "data.tsv").exists()


def test_a_truncated_unpinned_zip_is_fetched_again_once_then_named(site, tmp_path: Path) -> None:
    folder, server = site
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("data.tsv", "ham\thi\n" * 2000)
    (folder / "a.zip").write_bytes(buf.getvalue()[:300])  # the server holds a cut copy
    src = UrlSource(url=f"{server.url}/a.zip", member="data.tsv", member_sha256="0" * 64)
    with pytest.raises(FetchError, match=r"a.zip: truncated or corrupt zip archive \(it starts like one"):
        fetch_url(src, tmp_path / "cache", tmp_path / "work")
    assert len(server.requests) == 2  # the cached copy may be the cut one: one fresh download


def test_missing_archive_member_is_named(site, tmp_path: Path) -> None:
    folder, server = site
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme", "x")
    (folder / "a.zip").write_bytes(buf.getvalue())
    src = UrlSource(url=f"{server.url}/a.zip", sha256=sha(buf.getvalue()), member="SMSSpamCollection")
    with pytest.raises(FetchError, match=r"SMSSpamCollection.*readme"):
        fetch_url(src, tmp_path / "cache", tmp_path / "work")


def test_gz_needs_no_member_and_a_zip_without_member_is_extracted_whole(site, tmp_path: Path) -> None:
    folder, server = site
    (folder / "corpus.txt.gz").write_bytes(gzip.compress(b"text\n"))
    got = fetch_url(UrlSource(url=f"{server.url}/corpus.txt.gz", sha256=sha(gzip.compress(b"text\n"))),
                    tmp_path / "cache", tmp_path / "work")
    assert [p.read_text() for p in got.files] == ["text\n"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("docs/a.txt", "A")
        zf.writestr("docs/b.txt", "B")
    (folder / "docs.zip").write_bytes(buf.getvalue())
    got = fetch_url(UrlSource(url=f"{server.url}/docs.zip", sha256=sha(buf.getvalue())),
                    tmp_path / "cache", tmp_path / "work2")
    assert [p.read_text() for p in got.files] == ["A", "B"]
    assert got.provenance["members"] == ["docs/a.txt", "docs/b.txt"]


def test_url_source_must_be_pinned() -> None:
    with pytest.raises(ValueError, match="needs `sha256`"):
        UrlSource(url="https://example.org/a.txt")
    with pytest.raises(ValueError, match="http:// or https://"):
        UrlSource(url="ftp://example.org/a.txt", sha256="0" * 64)
    with pytest.raises(ValueError, match="`member_sha256` needs `member`"):
        UrlSource(url="https://example.org/a.zip", member_sha256="0" * 64)


# --- local --------------------------------------------------------------------------------------

def test_local_file_folder_and_glob(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    docs = tmp_path / "data" / "local" / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.txt").write_text("A")
    (docs / "sub" / "b.txt").write_text("B")
    (docs / ".hidden.txt").write_text("no")
    (docs / "notes.bin").write_bytes(b"\x00")
    folder = local_files(LocalSource(path="data/local/docs"), "auto")
    assert [p.name for p in folder.files] == ["a.txt", "b.txt"]
    assert folder.provenance["files"] == 2 and folder.provenance["listed"][0]["sha256"] == sha(b"A")
    pattern = local_files(LocalSource(path="data/local/docs/**/*.txt"), "auto")
    assert [p.name for p in pattern.files] == ["a.txt", "b.txt"]
    single = local_files(LocalSource(path="data/local/docs/a.txt"), "auto")
    assert [p.name for p in single.files] == ["a.txt"]
    (docs / "c.csv.gz").write_bytes(gzip.compress(b"text\nC\n"))
    (docs / "d.txt.xz").write_bytes(b"")
    (docs / "e.bin.gz").write_bytes(b"")  # compressed, but not a data format
    compressed = local_files(LocalSource(path="data/local/docs"), "auto")
    assert [p.name for p in compressed.files] == ["a.txt", "c.csv.gz", "d.txt.xz", "b.txt"]


def test_local_paths_that_match_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data/local/nope: no such file or folder"):
        local_files(LocalSource(path="data/local/nope"), "auto")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="matches no data files"):
        local_files(LocalSource(path="empty"), "auto")


def test_local_files_outside_data_local_get_a_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "local").mkdir(parents=True)
    (tmp_path / "data" / "local" / "a.txt").write_text("x")
    local_files(LocalSource(path="data/local/*.txt"), "auto")
    local_files(LocalSource(path="data/local/a.txt"), "auto")
    assert "DVC will not notice" not in caplog.text
    (tmp_path / "corpus.txt").write_text("x")
    local_files(LocalSource(path="*.txt"), "auto")
    assert "*.txt is outside data/local/: DVC will not notice" in caplog.text


# --- hf -----------------------------------------------------------------------------------------

@pytest.fixture
def offline_hf(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hf_dataset_folder_offline_records_its_revision(tmp_path: Path, offline_hf) -> None:
    ds = tmp_path / "my_dataset"
    ds.mkdir()
    (ds / "train.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    got = load_hf(HfSource(name=str(ds), split="train"))
    assert [row["text"] for row in got.rows] == ["a", "b"]
    first = got.provenance["resolved_revision"]
    assert first and got.provenance["rows"] == 2
    (ds / "train.jsonl").write_text('{"text": "changed", "label": "x"}\n')
    assert load_hf(HfSource(name=str(ds), split="train")).provenance["resolved_revision"] != first


def test_hf_errors_name_the_dataset(tmp_path: Path, offline_hf) -> None:
    with pytest.raises(DataError, match=r"hf:nobody/nothing: could not load split 'train'"):
        load_hf(HfSource(name="nobody/nothing"))
