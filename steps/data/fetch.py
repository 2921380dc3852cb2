"""Download pinned source files into a content cache and unpack archive members safely."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import requests
import urllib3
from tqdm import tqdm

from model.atomic import atomic_path, write_json
from steps.hashing import sha256_file

log = logging.getLogger("gptpipe.fetch")

CHUNK = 1 << 20
LISTED_MEMBERS = 20
SIDECAR = "source.json"
PIN_FIX = "update the pinned sha256 in params.yaml if the source legitimately changed"
REFETCH = "delete it (from the download cache, if it is there) and fetch it again"
# A zip starts with a local file header (PK 3 4), or the end record when it is empty (PK 5 6).
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")

# Failures of the network itself, raised by requests before the body starts and by urllib3
# while it streams the raw body (we read the body raw, see _download).
_NETWORK_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.ReadTimeoutError,
)


class FetchError(RuntimeError):
    """A failure that retrying will not fix: the message says what to change."""


class TransientFetchError(FetchError):
    """A failure worth retrying: the network or the server may do better next time."""


def transient_fetch_failure(task_: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition of fetching tasks: retry only what can heal by itself (refused
    connection, timeout, 5xx); a 404 or a wrong checksum fails at once."""
    return isinstance(state.result(raise_on_failure=False), TransientFetchError)


def _pinned(sha256: str | None, source: str) -> str | None:
    """Lower-case a pinned hash, refusing a malformed one before any download is wasted on it."""
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise FetchError(f"{source}: pinned sha256 {sha256!r} is not 64 hex digits; fix it in params.yaml")
    return value


def _write_chunks(chunks: Iterable[bytes], out: Path, bar: tqdm | None = None) -> tuple[str, int]:
    """Write chunks to `out`, hashing them on the way, so no file is read twice."""
    digest = hashlib.sha256()
    size = 0
    with open(out, "wb") as f:
        for block in chunks:
            f.write(block)
            digest.update(block)
            size += len(block)
            if bar is not None:
                bar.update(len(block))
    return digest.hexdigest(), size


def _file_chunks(f: IO[bytes]) -> Iterator[bytes]:
    return iter(lambda: f.read(CHUNK), b"")


# ---------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """What a finished download was: enough to tell later whether the source changed."""

    url: str
    sha256: str
    bytes: int
    etag: str | None
    last_modified: str | None


def fetch_if_changed(
    url: str, dest: str | Path, *, etag: str | None, last_modified: str | None, timeout_s: float = 30.0
) -> Download | None:
    """Download `url` to `dest` unless the server says it is unchanged since the recorded ETag /
    Last-Modified (HTTP 304): None then, and nothing is written. Without either validator it
    always downloads, and the caller compares checksums."""
    conditions = {}
    if etag:
        conditions["If-None-Match"] = etag
    if last_modified:
        conditions["If-Modified-Since"] = last_modified
    return _download(url, Path(dest), sha256=None, timeout_s=timeout_s, progress=False, conditions=conditions)


def _download(url: str, dest: Path, *, sha256: str | None, timeout_s: float, progress: bool,
              conditions: dict[str, str] | None = None) -> Download | None:
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError(f"{url}: unsupported scheme {scheme or '(none)'!r}; only http(s) URLs can be fetched")
    expected = _pinned(sha256, url)
    headers = {
        "User-Agent": "gptpipe",
        # A pinned hash is of the bytes as published: ask servers not to re-encode them.
        "Accept-Encoding": "identity",
        **(conditions or {}),
    }
    try:
        with requests.get(url, stream=True, timeout=timeout_s, headers=headers) as resp:
            if conditions and resp.status_code == 304:
                return None
            _check_status(url, resp)
            length = _content_length(resp)
            with atomic_path(dest) as tmp, tqdm(
                total=length, unit="B", unit_scale=True, desc=dest.name, disable=not progress, leave=False
            ) as bar:
                # decode_content=False keeps a .gz served with "Content-Encoding: gzip" compressed,
                # as its pinned hash expects (requests' iter_content would unpack it).
                actual, size = _write_chunks(resp.raw.stream(CHUNK, decode_content=False), tmp, bar)
                # urllib3 2 already raises on a short body; this also holds if it ever does not.
                if length is not None and size < length:
                    raise TransientFetchError(
                        f"{url}: body ended after {size} of {length} bytes; will be retried "
                        "(if it persists, check the network or the URL)"
                    )
                if expected is not None and actual != expected:
                    raise FetchError(f"{url}: sha256 mismatch: expected {expected}, got {actual}; {PIN_FIX}")
            return Download(
                url=url,
                sha256=actual,
                bytes=size,
                etag=resp.headers.get("ETag"),
                last_modified=resp.headers.get("Last-Modified"),
            )
    except requests.exceptions.SSLError as exc:
        # A certificate problem does not heal by itself, so it is not worth retrying.
        raise FetchError(f"{url}: TLS error ({exc}); check the URL and the system certificates") from exc
    except _NETWORK_ERRORS as exc:
        raise TransientFetchError(
            f"{url}: network error ({exc}); will be retried (if it persists, check the network or the URL)"
        ) from exc
    except requests.exceptions.RequestException as exc:
        raise FetchError(f"{url}: request failed ({exc}); check the URL") from exc


def _check_status(url: str, resp: requests.Response) -> None:
    code = resp.status_code
    if code == 429 or code >= 500:
        wait = resp.headers.get("Retry-After")
        hint = f" (Retry-After: {wait})" if wait else ""
        raise TransientFetchError(f"{url}: HTTP {code} {resp.reason}{hint}; the server is busy, will be retried")
    # Redirects were already followed, so any other status but 2xx would save an error page.
    if not 200 <= code < 300:
        raise FetchError(f"{url}: HTTP {code} {resp.reason}; check the URL in params.yaml (the file may have moved)")


def _content_length(resp: requests.Response) -> int | None:
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------
# Content cache
# ---------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$GPTPIPE_CACHE, else the XDG cache folder: shared by every checkout of the project."""
    if os.environ.get("GPTPIPE_CACHE"):
        return Path(os.environ["GPTPIPE_CACHE"]).expanduser()
    # The XDG spec says an empty variable counts as unset.
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gptpipe" / "downloads"


def cache_entry(url: str, cache_dir: str | Path, *, sha256: str | None = None) -> Path:
    """The folder holding one cached source: keyed by content when pinned, else by URL."""
    pinned = _pinned(sha256, url)
    key = pinned if pinned is not None else "url-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return Path(cache_dir) / key


def cached_fetch(
    url: str,
    cache_dir: str | Path,
    *,
    sha256: str | None = None,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> Path:
    """Fetch `url` through the cache, so an unchanged source is downloaded only once.

    A pinned entry is trusted only after its hash is checked again; an unpinned one is
    returned as is (the caller verifies what it extracts, and calls `forget` on a mismatch).
    """
    pinned = _pinned(sha256, url)
    entry = cache_entry(url, cache_dir, sha256=pinned)
    path = entry / _url_filename(url)
    if path.is_file():
        if pinned is None:
            log.info("cache hit (unpinned) %s -> %s", url, path)
            return path
        if sha256_file(path) == pinned:
            log.info("cache hit %s -> %s", url, path)
            return path
        log.warning("cached %s does not match its pinned sha256; fetching it again", path)
        path.unlink()
    try:
        got = _download(url, path, sha256=pinned, timeout_s=timeout_s, progress=progress)
        assert got is not None  # only a conditional request can come back empty
    except BaseException:
        _drop_if_hollow(entry)
        raise
    write_json(
        entry / SIDECAR,
        {
            "url": got.url,
            "sha256": got.sha256,
            "etag": got.etag,
            "last_modified": got.last_modified,
            "bytes": got.bytes,
        },
    )
    return path


def forget(url: str, cache_dir: str | Path, *, sha256: str | None = None) -> None:
    """Drop one cache entry, e.g. after a member it held failed its own checksum."""
    entry = cache_entry(url, cache_dir, sha256=sha256)
    if entry.is_dir():
        shutil.rmtree(entry)


def _url_filename(url: str) -> str:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    # "source.json" would be overwritten by the sidecar, so it falls back like a bare URL does.
    if name in ("", ".", "..", SIDECAR) or "\x00" in name:
        return "download"
    return name


def _drop_if_hollow(entry: Path) -> None:
    """After a failed fetch, remove an entry left with no file (at most a stale sidecar)."""
    if entry.is_dir() and all(p.name == SIDECAR for p in entry.iterdir()):
        shutil.rmtree(entry)


# ---------------------------------------------------------------------------
# Archives
# ---------------------------------------------------------------------------


def archive_kind(path: str | Path) -> str | None:
    """"zip", "tar" (plain or compressed), "gz" (one gzip-compressed file) or None, by content."""
    # Tar first: a tar whose last member is a zip file passes is_zipfile (it looks for the zip
    # end record near the end of the file), while a zip never passes the tar header checksum.
    if tarfile.is_tarfile(path):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    head = _head(path)
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    # Starts like an archive but the checks above found none whole: cut short or damaged.
    started = "zip" if head.startswith(_ZIP_MAGIC) else "tar" if head[257:262] == b"ustar" else None
    if started is not None:
        raise FetchError(f"{path}: truncated or corrupt {started} archive (it starts like one but is not whole); "
                         f"{REFETCH}")
    return None


def _head(path: str | Path) -> bytes:
    """The first 512 bytes: room for every magic number, the tar header's `ustar` included."""
    with open(path, "rb") as f:
        return f.read(512)


def unsafe_member_reason(name: str) -> str | None:
    """Why a member name could land outside its folder, or None when it cannot."""
    if not name:
        return "its name is empty"
    if "\x00" in name:
        return "its name contains a NUL byte"
    if name.startswith(("/", "\\")):
        return "it is an absolute path"
    if re.match(r"[A-Za-z]:", name):
        return "it starts with a drive letter"
    # Backslashes count as separators too: the same archive may be unpacked on Windows.
    if ".." in re.split(r"[/\\]", name):
        return "it contains a '..' component"
    return None


def extract_member(
    archive: str | Path, member: str | None, dest: str | Path, *, member_sha256: str | None = None
) -> Path:
    """Stream one member of a zip, tar or gz archive to the file `dest` (atomically, verified).

    For a gz the member name is not needed (it holds one file) and is ignored.
    """
    archive, dest = Path(archive), Path(dest)
    kind = _require_archive(archive, ("zip", "tar", "gz"))
    expected = _pinned(member_sha256, f"{archive}:{member}")
    if kind != "gz":
        if member is None:
            raise FetchError(
                f"{archive}: a {kind} archive needs a member name; it holds {_listing(_file_members(archive, kind))}"
            )
        reason = unsafe_member_reason(member)
        if reason is not None:
            raise FetchError(f"{archive}: refusing member {member!r}: {reason}; name a member inside the archive")
    try:
        with ExitStack() as opened:
            src = _open_member(archive, kind, member, opened)
            with atomic_path(dest) as tmp:
                actual, _ = _write_chunks(_file_chunks(src), tmp)
                if expected is not None and actual != expected:
                    raise FetchError(
                        f"{archive}: member {member!r} sha256 mismatch: expected {expected}, got {actual}; "
                        f"{PIN_FIX} (or forget the cached archive if it is corrupt)"
                    )
    except (tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise FetchError(f"{archive}: truncated or corrupt {kind} archive ({exc}); {REFETCH}") from exc
    return dest


def _open_member(archive: Path, kind: str, member: str | None, opened: ExitStack) -> IO[bytes]:
    """A stream of the member's content; `opened` closes it and its archive."""
    if kind == "gz":
        return opened.enter_context(gzip.open(archive, "rb"))
    assert member is not None
    if kind == "zip":
        zf = opened.enter_context(zipfile.ZipFile(archive))
        return opened.enter_context(zf.open(_zip_member(archive, zf, member)))
    tf = opened.enter_context(tarfile.open(archive, "r:*"))
    stream = tf.extractfile(_tar_member(archive, tf, member))
    assert stream is not None  # _tar_member returns regular files only
    return opened.enter_context(stream)


def _zip_member(archive: Path, zf: zipfile.ZipFile, member: str) -> zipfile.ZipInfo:
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise FetchError(_missing(archive, member, _zip_files(zf))) from None
    kind = _zip_type(info)
    if kind == "symlink":
        raise FetchError(f"{archive}: refusing member {member!r}: it is a symlink; name the file it points to")
    if kind != "file":
        raise FetchError(f"{archive}: member {member!r} is a {kind}, not a file; name a file member")
    return info


def _tar_member(archive: Path, tf: tarfile.TarFile, member: str) -> tarfile.TarInfo:
    # Tars made with `tar -C dir .` name members "./x": accept "x" for them. Later duplicates
    # win, as they would when tar itself extracts.
    index = {m.name.removeprefix("./"): m for m in tf.getmembers()}
    info = index.get(member.removeprefix("./"))
    if info is None:
        raise FetchError(_missing(archive, member, _tar_files(tf)))
    if info.issym() or info.islnk():
        raise FetchError(
            f"{archive}: refusing member {member!r}: it is a {'symlink' if info.issym() else 'hardlink'} "
            f"to {info.linkname!r}; name the file it points to"
        )
    reason = unsafe_member_reason(info.name)
    if reason is not None:
        raise FetchError(f"{archive}: refusing member {info.name!r}: {reason}")
    if not info.isfile():
        raise FetchError(f"{archive}: member {member!r} is not a regular file; name a file member")
    return info


def _missing(archive: Path, member: str, available: list[str]) -> str:
    return f"{archive}: no member {member!r}; it holds {_listing(available)}"


def _listing(names: list[str]) -> str:
    if not names:
        return "no files"
    shown = ", ".join(repr(n) for n in names[:LISTED_MEMBERS])
    more = len(names) - LISTED_MEMBERS
    return f"{len(names)} file(s): {shown}" + (f" and {more} more" if more > 0 else "")


def _file_members(archive: Path, kind: str) -> list[str]:
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            return _zip_files(zf)
    with tarfile.open(archive, "r:*") as tf:
        return _tar_files(tf)


def _zip_files(zf: zipfile.ZipFile) -> list[str]:
    return [i.filename for i in zf.infolist() if _zip_type(i) == "file"]


def _tar_files(tf: tarfile.TarFile) -> list[str]:
    return [m.name for m in tf.getmembers() if m.isfile()]


def _zip_type(info: zipfile.ZipInfo) -> str:
    """"file", "folder", "symlink" or "special file", from the Unix mode a zip may carry."""
    if info.is_dir():
        return "folder"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symlink"
    # Zips made on Windows carry no Unix mode (0): those entries are plain files.
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        return "special file"
    return "file"


def _require_archive(archive: Path, kinds: tuple[str, ...]) -> str:
    if not archive.is_file():
        raise FetchError(f"{archive}: archive not found; fetch it first")
    kind = archive_kind(archive)
    if kind not in kinds:
        raise FetchError(
            f"{archive}: is {'not an archive' if kind is None else f'a {kind} file'}; "
            f"expected one of {', '.join(kinds)} (check the URL or the file pinned in params.yaml)"
        )
    return kind


def extract_all(archive: str | Path, dest_dir: str | Path) -> list[Path]:
    """Unpack every file of a zip or tar into `dest_dir`, which it replaces as a whole.

    Everything is unpacked into a temp folder beside `dest_dir` first, so a refused or broken
    archive leaves nothing behind and an earlier `dest_dir` stays intact until the new one is whole.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    kind = _require_archive(archive, ("zip", "tar"))
    if dest_dir.is_symlink() or (dest_dir.exists() and not dest_dir.is_dir()):
        raise FetchError(f"{dest_dir}: exists and is not a folder; remove it or pick another destination")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".tmp", dir=dest_dir.parent))
    try:
        if kind == "zip":
            _unzip_all(archive, tmp)
        else:
            _untar_all(archive, tmp)
        _install_dir(tmp, dest_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _regular_files(dest_dir)


def _unzip_all(archive: Path, root: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                kind = _zip_type(info)
                reason = unsafe_member_reason(info.filename)
                if reason is None and kind in ("symlink", "special file"):
                    # zipfile would write a link's target path as the file's content: refuse instead.
                    reason = f"it is a {kind}"
                if reason is not None:
                    raise FetchError(f"{archive}: refusing member {info.filename!r}: {reason}")
                target = _inside(root, info.filename, archive)
                if kind == "folder":
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src:
                    _write_chunks(_file_chunks(src), target)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise FetchError(f"{archive}: truncated or corrupt zip archive ({exc}); {REFETCH}") from exc


def _untar_all(archive: Path, root: Path) -> None:
    def checked(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
        reason = _tar_entry_problem(member)
        if reason is not None:
            raise FetchError(f"{archive}: refusing member {member.name!r}: {reason}")
        # Python's own "data" filter as a second line: it also resolves links against the disk.
        return tarfile.data_filter(member, path)

    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(root, filter=checked)
    except tarfile.FilterError as exc:
        raise FetchError(f"{archive}: refusing member: {exc}") from exc
    except (tarfile.TarError, zlib.error, EOFError) as exc:
        raise FetchError(f"{archive}: truncated or corrupt tar archive ({exc}); {REFETCH}") from exc


def _tar_entry_problem(member: tarfile.TarInfo) -> str | None:
    reason = unsafe_member_reason(member.name)
    if reason is not None:
        return reason
    if member.isdev():
        return "it is a device file or fifo"
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith("/") or re.match(r"[A-Za-z]:", link):
            return f"it links to the absolute path {link!r}"
        # A symlink resolves from its own folder, a hardlink from the archive root.
        base = PurePosixPath(member.name).parent if member.issym() else PurePosixPath()
        if _escapes(base / link):
            return f"it links to {link!r}, outside the archive"
    return None


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def _inside(root: Path, name: str, archive: Path) -> Path:
    """The path of `name` under `root`, checked once more after resolving it."""
    target = (root / name).resolve()
    if not target.is_relative_to(root.resolve()):
        raise FetchError(f"{archive}: refusing member {name!r}: it resolves outside the destination")
    return target


def _install_dir(tmp: Path, dest: Path) -> None:
    """Move a finished folder into place; an earlier one is removed only after the swap."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.old")
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old)


def _regular_files(root: Path) -> list[Path]:
    found = []
    for folder, _dirs, files in os.walk(root):  # does not follow symlinked folders
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return sorted(found)
