"""Resolve a dataset's configured source (url, hf, local) into local files or rows, with provenance."""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steps.config import HfSource, LocalSource, UrlSource
from steps.data.fetch import (
    FetchError,
    archive_kind,
    cached_fetch,
    extract_all,
    extract_member,
    forget,
)
from steps.data.readers import FORMAT_BY_SUFFIX, DataError, data_suffix
from steps.hashing import sha256_file

log = logging.getLogger("gptpipe.sources")

# Local files here are a DVC dependency of the download stage, so editing them reruns it.
WATCHED_LOCAL = Path("data/local")
# Describe at most this many files one by one in the provenance record.
MAX_LISTED_FILES = 200


@dataclass
class Fetched:
    """A source made local: files to read, or the rows of a loaded dataset."""

    where: str
    """How error messages name the source."""
    files: list[Path] = field(default_factory=list)
    rows: Iterable[Mapping[str, Any]] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def fetch_url(src: UrlSource, cache_dir: Path, work_dir: Path) -> Fetched:
    """Download once into the cache (checksum-verified), then pick the archive member if any."""
    archive = cached_fetch(src.url, cache_dir, sha256=src.sha256, timeout_s=src.timeout_s)
    try:
        kind = archive_kind(archive)
    except FetchError:  # a truncated archive: an unpinned cached copy may be an interrupted one
        if src.sha256 is not None:
            raise
        archive = _fetch_afresh(src, cache_dir)
        kind = archive_kind(archive)
    provenance: dict[str, Any] = {"kind": "url", "url": src.url, "sha256": sha256_file(archive)}
    if src.member is None and kind in ("zip", "tar"):
        files = extract_all(archive, work_dir / "extracted")
        provenance["members"] = [str(p.relative_to(work_dir / "extracted")) for p in files][:MAX_LISTED_FILES]
        return Fetched(where=src.url, files=files, provenance=provenance)
    if src.member is None and kind != "gz":
        return Fetched(where=src.url, files=[archive], provenance=provenance)
    name = Path(src.member).name if src.member else (Path(archive.name).stem or "member")
    out = work_dir / name
    try:
        extract_member(archive, src.member, out, member_sha256=src.member_sha256)
    except FetchError:
        if src.sha256 is not None:
            raise
        # Without a pinned archive checksum the cached copy may predate an upstream change:
        # fetch it afresh once before calling the member's checksum wrong.
        archive = _fetch_afresh(src, cache_dir)
        provenance["sha256"] = sha256_file(archive)
        extract_member(archive, src.member, out, member_sha256=src.member_sha256)
    provenance.update(member=src.member, member_sha256=sha256_file(out))
    return Fetched(where=f"{src.url} ({src.member or 'gz'})", files=[out], provenance=provenance)


def _fetch_afresh(src: UrlSource, cache_dir: Path) -> Path:
    """Drop the cached copy of an unpinned archive and download it again, once."""
    forget(src.url, cache_dir)
    return cached_fetch(src.url, cache_dir, sha256=None, timeout_s=src.timeout_s)


def local_files(src: LocalSource, fmt: str) -> Fetched:
    """A file, every data file in a folder (recursively, hidden ones skipped), or a glob's matches."""
    path = Path(src.path).expanduser()
    pattern = any(ch in src.path for ch in "*?[")
    if pattern:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _wanted(p.relative_to(path), fmt))
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{src.path}: no such file or folder (a local source's path is relative to the "
                        f"repository root; check download.*.source.path in params.yaml)")
    if not files:
        raise DataError(f"{src.path}: matches no data files")
    # A pattern is watched when the folder it starts from is (`data/local/docs/**/*.txt`).
    if not _watched(_fixed_prefix(path) if pattern else path):
        log.warning("%s is outside %s/: DVC will not notice when its content changes; run "
                    "`dvc repro -f download` after editing it, or move it under %s/",
                    src.path, WATCHED_LOCAL, WATCHED_LOCAL)
    listed = [{"path": str(p), "sha256": sha256_file(p), "bytes": p.stat().st_size}
              for p in files[:MAX_LISTED_FILES]]
    provenance = {"kind": "local", "path": src.path, "files": len(files), "listed": listed}
    return Fetched(where=src.path, files=files, provenance=provenance)


def load_hf(src: HfSource) -> Fetched:
    """`datasets.load_dataset`, recording the revision it resolved (the hub commit, or a content hash
    for a local dataset folder). Honours HF_DATASETS_OFFLINE / HF_HUB_OFFLINE."""
    builder = _hf_builder(src)
    try:
        builder.download_and_prepare()
        rows = builder.as_dataset(split=src.split)
    except Exception as err:  # datasets raises many types (hub, network, missing split)
        raise _hf_error(src, err) from None
    provenance = {"kind": "hf", "name": src.name, "config": src.config, "split": src.split,
                  "revision": src.revision, "resolved_revision": builder.hash, "rows": len(rows)}
    return Fetched(where=f"hf:{src.name}[{src.split}]", rows=rows, provenance=provenance)


def hf_revision(src: HfSource) -> str:
    """The revision `load_hf` would resolve now (hub commit or local content hash), without
    downloading the data files: what a retrain compares with the recorded `resolved_revision`."""
    return _hf_builder(src).hash


def _hf_builder(src: HfSource) -> Any:
    import datasets

    try:
        return datasets.load_dataset_builder(src.name, src.config, revision=src.revision)
    except Exception as err:  # datasets raises many types (hub, network, missing split)
        raise _hf_error(src, err) from None


def _hf_error(src: HfSource, err: Exception) -> DataError:
    return DataError(f"hf:{src.name}: could not load split {src.split!r} "
                     f"(config {src.config!r}, revision {src.revision!r}): {err}")


def _fixed_prefix(pattern: Path) -> Path:
    """The folder a glob pattern starts from: its parts before the first wildcard."""
    fixed = []
    for part in pattern.parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _wanted(relative: Path, fmt: str) -> bool:
    if any(part.startswith(".") for part in relative.parts):
        return False
    return fmt != "auto" or data_suffix(relative) in FORMAT_BY_SUFFIX


def _watched(path: Path) -> bool:
    try:
        path.resolve().relative_to(WATCHED_LOCAL.resolve())
        return True
    except ValueError:
        return False
