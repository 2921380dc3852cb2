"""Has a dataset's source changed since the download stage read it? One check per source kind.

The download stage records what it read in data/raw/sources.json; each check compares that
record with the source as it is now: local files by sha256, an hf dataset by its resolved
revision, a url by a conditional request (ETag / Last-Modified) and then by checksum. A
builtin source is generated from params, which DVC already watches.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.atomic import write_json
from steps.config import DatasetSource, DownloadConfig, HfSource, LocalSource, UrlSource
from steps.data.fetch import SIDECAR, cache_entry, extract_member, fetch_if_changed
from steps.data.sources import MAX_LISTED_FILES, hf_revision, local_files
from steps.hashing import sha256_file

log = logging.getLogger("gptpipe.refresh")
DATASETS = ("corpus", "classification", "instructions", "preferences")
SHOWN = 3  # changed file names listed in a reason


class PinnedSourceChanged(RuntimeError):
    """A url source's bytes changed upstream although params.yaml pins them: a person must decide."""


@dataclass(frozen=True)
class SourceCheck:
    """The verdict on one dataset's source."""

    dataset: str
    kind: str
    changed: bool
    reason: str


def read_recorded(path: Path) -> dict[str, Any] | None:
    """The provenance the download stage wrote (None before the first download)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); delete it and run `dvc repro -f download`") from None


def check_sources(cfg: DownloadConfig, recorded: dict[str, Any] | None, cache_dir: Path) -> list[SourceCheck]:
    """One verdict per dataset, in the order the download stage reads them."""
    if recorded is None:
        return [SourceCheck(name, getattr(cfg, name).source.kind, True, "not downloaded yet") for name in DATASETS]
    return [check_source(name, getattr(cfg, name), recorded.get(name), cache_dir) for name in DATASETS]


def check_source(dataset: str, cfg: DatasetSource, recorded: dict[str, Any] | None, cache_dir: Path) -> SourceCheck:
    src = cfg.source
    if recorded is None:
        return SourceCheck(dataset, src.kind, True, "no record of it in sources.json")
    if recorded.get("kind") != src.kind:
        return SourceCheck(dataset, src.kind, True, f"source kind changed from {recorded.get('kind')} to {src.kind}")
    if isinstance(src, LocalSource):
        return _check_local(dataset, src, cfg.format, recorded)
    if isinstance(src, HfSource):
        return _check_hf(dataset, src, recorded)
    if isinstance(src, UrlSource):
        return _check_url(dataset, src, recorded, cache_dir)
    return SourceCheck(dataset, src.kind, False, "generated from params (DVC reruns it when they change)")


def _check_local(dataset: str, src: LocalSource, fmt: str, recorded: dict[str, Any]) -> SourceCheck:
    if recorded.get("path") != src.path:
        return SourceCheck(dataset, "local", True, f"path changed from {recorded.get('path')} to {src.path}")
    now = local_files(src, fmt).provenance  # hashes every file: only when the paths compare
    before = {f["path"]: f["sha256"] for f in recorded.get("listed", [])}
    after = {f["path"]: f["sha256"] for f in now["listed"]}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    edited = sorted(p for p in after.keys() & before.keys() if after[p] != before[p])
    parts = [f"{what}: {_few(names)}" for what, names in (("added", added), ("removed", removed),
                                                          ("edited", edited)) if names]
    if recorded.get("files") != now["files"] and not parts:
        parts.append(f"{recorded.get('files')} -> {now['files']} files")
    if parts:
        return SourceCheck(dataset, "local", True, "; ".join(parts))
    note = f" (the first {MAX_LISTED_FILES} compared)" if now["files"] > MAX_LISTED_FILES else ""
    return SourceCheck(dataset, "local", False, f"{now['files']} file(s) unchanged by sha256{note}")


def _check_hf(dataset: str, src: HfSource, recorded: dict[str, Any]) -> SourceCheck:
    was, now = recorded.get("resolved_revision"), hf_revision(src)
    if was == now:
        return SourceCheck(dataset, "hf", False, f"revision {now} unchanged")
    return SourceCheck(dataset, "hf", True, f"revision {was} -> {now}")


def _check_url(dataset: str, src: UrlSource, recorded: dict[str, Any], cache_dir: Path) -> SourceCheck:
    entry = cache_entry(src.url, cache_dir, sha256=src.sha256)
    sidecar = _read_sidecar(entry / SIDECAR)
    with tempfile.TemporaryDirectory(prefix="gptpipe-refresh-") as tmp:
        got = fetch_if_changed(src.url, Path(tmp) / "download", etag=sidecar.get("etag"),
                               last_modified=sidecar.get("last_modified"), timeout_s=src.timeout_s)
        if got is None:
            return SourceCheck(dataset, "url", False, "HTTP 304: not modified since the recorded "
                                                      + ("ETag" if sidecar.get("etag") else "Last-Modified"))
        unchanged = _url_unchanged(dataset, src, recorded, got.sha256, Path(tmp) / "download")
    # Same content under new validators: remember them, so the next check can be a cheap 304.
    if entry.is_dir():
        write_json(entry / SIDECAR, {**sidecar, "etag": got.etag, "last_modified": got.last_modified})
    return SourceCheck(dataset, "url", False, unchanged)


def _url_unchanged(dataset: str, src: UrlSource, recorded: dict[str, Any], sha256: str, file: Path) -> str:
    """Why the downloaded bytes still match the pin, or PinnedSourceChanged."""
    fix = (f"if the new content is what you want, update download.{dataset}.source.{{field}} in params.yaml "
           f"(DVC then reruns what it affects); otherwise pin a copy that does not move")
    if src.sha256 is not None:
        if sha256 == src.sha256.strip().lower():
            return "same bytes as the pinned sha256"
        raise PinnedSourceChanged(f"download.{dataset}: {src.url} changed upstream: its sha256 is now {sha256}, "
                                  f"params.yaml pins {src.sha256}; " + fix.format(field="sha256"))
    if sha256 == recorded.get("sha256"):
        return "same archive bytes as recorded"
    member = extract_member(file, src.member, file.with_name("member"))
    member_sha = sha256_file(member)
    if member_sha == (src.member_sha256 or "").strip().lower():
        return f"archive bytes changed, the pinned member {src.member} did not"
    raise PinnedSourceChanged(f"download.{dataset}: member {src.member} of {src.url} changed upstream: its "
                              f"sha256 is now {member_sha}, params.yaml pins {src.member_sha256}; "
                              + fix.format(field="member_sha256"))


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # no validators: the check downloads and compares checksums instead


def _few(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")
