"""Tests for downloading, the content cache and safe archive extraction (steps/data/fetch.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import stat
import tarfile
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from steps.data.fetch import (
    FetchError,
    TransientFetchError,
    archive_kind,
    cache_entry,
    cached_fetch,
    default_cache_dir,
    extract_all,
    extract_member,
    forget,
)
from steps.hashing import sha256_file
from tests.conftest import QuietHandler, free_port

BODY = b"hello gptpipe\n" * 1000


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# A loopback HTTP server whose routes each test sets
# ---------------------------------------------------------------------------


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_length: int | None = None  # announce a length other than the body's, to cut it short


class Server:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        # Set at teardown so a handler sleeping past a client timeout stops at once.
        self.release = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))

    def route(self, path: str, **kwargs: object) -> str:
        self.routes[path] = Route(**kwargs)  # type: ignore[arg-type]
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


def _handler(server: Server) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            server.hits[self.path] += 1
            route = server.routes.get(self.path, Route(status=404, body=b"not found"))
            if route.delay_s and server.release.wait(route.delay_s):
                return
            self.reply(route.status, route.body, route.headers, route.content_length)

    return Handler


@pytest.fixture
def server(loopback) -> Server:
    srv = Server()
    loopback.start(srv.httpd, on_stop=srv.release.set)
    return srv


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------
# Downloading (through cached_fetch, the one entry point)
# ---------------------------------------------------------------------------


def test_sha256_file(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(BODY)
    assert sha256_file(path) == sha(BODY)
    assert sha256_file(path, chunk=7) == sha(BODY)


def test_download_writes_verified_file(server: Server, tmp_path: Path) -> None:
    url = server.route("/data.txt", body=BODY)
    dest = cached_fetch(url, tmp_path / "cache", sha256=sha(BODY).upper(), progress=False)  # pin case is ignored
    assert dest.name == "data.txt"
    assert dest.read_bytes() == BODY
    assert sha256_file(dest) == sha(BODY)
    assert leftovers(dest.parent) == sorted(["data.txt", "source.json"])  # no temp file left beside it


def test_download_without_pin(server: Server, tmp_path: Path) -> None:
    url = server.route("/data.txt", body=BODY)
    assert cached_fetch(url, tmp_path / "cache", progress=False).read_bytes() == BODY


def test_download_keeps_gzip_bytes_as_published(server: Server, tmp_path: Path) -> None:
    # A server that labels a .gz as Content-Encoding: gzip must not get it unpacked on the way.
    packed = gzip.compress(BODY)
    url = server.route("/data.gz", body=packed, headers={"Content-Encoding": "gzip"})
    dest = cached_fetch(url, tmp_path / "cache", sha256=sha(packed), progress=False)
    assert dest.read_bytes() == packed


def test_checksum_mismatch_leaves_nothing(server: Server, tmp_path: Path) -> None:
    url = server.route("/data.txt", body=BODY)
    wrong = "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(FetchError) as err:
        cached_fetch(url, cache, sha256=wrong, progress=False)
    assert not isinstance(err.value, TransientFetchError)
    message = str(err.value)
    assert url in message and wrong in message and sha(BODY) in message
    assert "update the pinned sha256 in params.yaml" in message
    assert leftovers(cache) == []  # neither the file, nor a temp file, nor an entry


def test_checksum_mismatch_leaves_no_cache_entry(server: Server, tmp_path: Path) -> None:
    url = server.route("/data.txt", body=BODY)
    cache = tmp_path / "cache"
    with pytest.raises(FetchError, match="sha256 mismatch"):
        cached_fetch(url, cache, sha256="1" * 64, progress=False)
    assert leftovers(cache) == []


def test_malformed_pin_is_refused_before_any_request(server: Server, tmp_path: Path) -> None:
    url = server.route("/data.txt", body=BODY)
    with pytest.raises(FetchError, match="not 64 hex digits"):
        cached_fetch(url, tmp_path / "d", sha256="abc", progress=False)
    assert server.hits["/data.txt"] == 0


def test_404_is_permanent(server: Server, tmp_path: Path) -> None:
    url = server.url("/missing.txt")
    with pytest.raises(FetchError) as err:
        cached_fetch(url, tmp_path / "d", progress=False)
    assert not isinstance(err.value, TransientFetchError)
    assert "404" in str(err.value) and url in str(err.value)
    assert leftovers(tmp_path / "d") == []


@pytest.mark.parametrize("status", [403, 410, 300])
def test_other_failures_are_permanent(server: Server, tmp_path: Path, status: int) -> None:
    url = server.route("/x", status=status, body=b"no")
    with pytest.raises(FetchError, match=str(status)) as err:
        cached_fetch(url, tmp_path / "d", progress=False)
    assert not isinstance(err.value, TransientFetchError)


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_rate_limits_are_transient(server: Server, tmp_path: Path, status: int) -> None:
    url = server.route("/busy", status=status, body=b"busy", headers={"Retry-After": "3"})
    with pytest.raises(TransientFetchError, match=str(status)) as err:
        cached_fetch(url, tmp_path / "d", progress=False)
    assert url in str(err.value) and "Retry-After: 3" in str(err.value)
    assert leftovers(tmp_path / "d") == []


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/data.txt"
    with pytest.raises(TransientFetchError, match="retried") as err:
        cached_fetch(url, tmp_path / "d", progress=False)
    assert url in str(err.value)


def test_timeout_is_transient(server: Server, tmp_path: Path) -> None:
    url = server.route("/slow", body=BODY, delay_s=5.0)
    start = time.monotonic()
    with pytest.raises(TransientFetchError) as err:
        cached_fetch(url, tmp_path / "d", timeout_s=0.2, progress=False)
    assert time.monotonic() - start < 3.0
    assert url in str(err.value)
    assert leftovers(tmp_path / "d") == []


def test_truncated_body_is_transient(server: Server, tmp_path: Path) -> None:
    url = server.route("/cut", body=BODY[:100], content_length=len(BODY))
    with pytest.raises(TransientFetchError) as err:
        cached_fetch(url, tmp_path / "d", progress=False)
    assert url in str(err.value)
    assert leftovers(tmp_path / "d") == []


@pytest.mark.parametrize("url", ["ftp://example.com/x.txt", "file:///etc/passwd", "example.com/x.txt"])
def test_non_http_scheme_is_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(FetchError, match="scheme") as err:
        cached_fetch(url, tmp_path / "d", progress=False)
    assert not isinstance(err.value, TransientFetchError)


# ---------------------------------------------------------------------------
# cached_fetch
# ---------------------------------------------------------------------------


def test_pinned_cache_hit_makes_no_request(server: Server, tmp_path: Path) -> None:
    url = server.route("/files/corpus.txt?v=1", body=BODY)
    cache = tmp_path / "cache"
    first = cached_fetch(url, cache, sha256=sha(BODY), progress=False)
    assert first == cache / sha(BODY) / "corpus.txt"
    assert first.read_bytes() == BODY
    second = cached_fetch(url, cache, sha256=sha(BODY), progress=False)
    assert second == first
    assert server.hits["/files/corpus.txt?v=1"] == 1


def test_corrupt_pinned_entry_is_refetched(server: Server, tmp_path: Path) -> None:
    url = server.route("/corpus.txt", body=BODY)
    cache = tmp_path / "cache"
    path = cached_fetch(url, cache, sha256=sha(BODY), progress=False)
    path.write_bytes(b"bit rot")
    again = cached_fetch(url, cache, sha256=sha(BODY), progress=False)
    assert again == path and again.read_bytes() == BODY
    assert server.hits["/corpus.txt"] == 2


def test_unpinned_entry_is_reused_as_is(server: Server, tmp_path: Path) -> None:
    url = server.route("/corpus.txt", body=BODY)
    cache = tmp_path / "cache"
    first = cached_fetch(url, cache, progress=False)
    assert first.parent.name.startswith("url-") and first.name == "corpus.txt"
    server.route("/corpus.txt", body=b"changed upstream")
    assert cached_fetch(url, cache, progress=False).read_bytes() == BODY
    assert server.hits["/corpus.txt"] == 1


def test_sidecar_records_the_source(server: Server, tmp_path: Path) -> None:
    headers = {"ETag": '"v1-abc"', "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT"}
    url = server.route("/corpus.txt", body=BODY, headers=headers)
    path = cached_fetch(url, tmp_path / "cache", sha256=sha(BODY), progress=False)
    meta = json.loads((path.parent / "source.json").read_text())
    assert meta == {
        "url": url,
        "sha256": sha(BODY),
        "etag": '"v1-abc"',
        "last_modified": "Wed, 01 Jan 2025 00:00:00 GMT",
        "bytes": len(BODY),
    }


def test_forget_removes_the_entry(server: Server, tmp_path: Path) -> None:
    url = server.route("/corpus.txt", body=BODY)
    cache = tmp_path / "cache"
    path = cached_fetch(url, cache, progress=False)
    forget(url, cache)
    assert not path.parent.exists()
    forget(url, cache)  # forgetting twice is harmless
    cached_fetch(url, cache, progress=False)
    assert server.hits["/corpus.txt"] == 2


def test_cache_key_and_file_name(tmp_path: Path) -> None:
    pinned = cache_entry("https://h/x.zip", tmp_path, sha256="AB" * 32)
    assert pinned == tmp_path / ("ab" * 32)
    by_url = cache_entry("https://h/x.zip", tmp_path)
    assert by_url.name == "url-" + sha(b"https://h/x.zip")[:16]
    assert by_url != cache_entry("https://h/y.zip", tmp_path)


def test_bare_url_is_cached_as_download(server: Server, tmp_path: Path) -> None:
    server.route("/", body=BODY)
    path = cached_fetch(server.url("/"), tmp_path, progress=False)
    assert path.name == "download" and path.read_bytes() == BODY


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPTPIPE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("GPTPIPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gptpipe" / "downloads"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "gptpipe" / "downloads"


# ---------------------------------------------------------------------------
# Archives
# ---------------------------------------------------------------------------

FILES = {"data/train.txt": b"train rows\n" * 50, "data/test.txt": b"test rows\n", "README": b"readme"}


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            # A ZipInfo keeps the name exactly as given (writestr(str) would too, but say so).
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, files: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None) -> Path:
    """`links` maps a member name to (tarfile.SYMTYPE or LNKTYPE, target)."""
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return path


def test_archive_kind(tmp_path: Path) -> None:
    assert archive_kind(make_zip(tmp_path / "a.zip", FILES)) == "zip"
    assert archive_kind(make_tar(tmp_path / "a.tar", FILES)) == "tar"
    assert archive_kind(make_tar(tmp_path / "a.tar.gz", FILES)) == "tar"
    for suffix in ("bz2", "xz"):
        with tarfile.open(tmp_path / f"a.tar.{suffix}", f"w:{suffix}") as tf:
            tf.add(tmp_path / "a.zip", arcname="a.zip")
        assert archive_kind(tmp_path / f"a.tar.{suffix}") == "tar"
    (tmp_path / "one.gz").write_bytes(gzip.compress(b"just text\n"))
    assert archive_kind(tmp_path / "one.gz") == "gz"
    (tmp_path / "plain.txt").write_bytes(b"not an archive at all\n")
    assert archive_kind(tmp_path / "plain.txt") is None
    # Content decides, not the name; and a tar whose last member is a zip is still a tar.
    (tmp_path / "misnamed.bin").write_bytes((tmp_path / "a.zip").read_bytes())
    assert archive_kind(tmp_path / "misnamed.bin") == "zip"
    assert archive_kind(tmp_path / "a.tar.bz2") == "tar"
    with tarfile.open(tmp_path / "zip-inside.tar", "w") as tf:
        tf.add(tmp_path / "a.zip", arcname="a.zip")
    assert archive_kind(tmp_path / "zip-inside.tar") == "tar"


@pytest.mark.parametrize("name", ["a.zip", "a.tar.gz"])
def test_extract_member_from_zip_and_tar(tmp_path: Path, name: str) -> None:
    archive = (make_zip if name.endswith(".zip") else make_tar)(tmp_path / name, FILES)
    data = FILES["data/train.txt"]
    dest = tmp_path / "out" / "train.txt"
    got = extract_member(archive, "data/train.txt", dest, member_sha256=sha(data))
    assert got == dest and dest.read_bytes() == data
    assert leftovers(dest.parent) == ["train.txt"]


def test_extract_member_from_gz(tmp_path: Path) -> None:
    data = b"line\n" * 1000
    archive = tmp_path / "corpus.txt.gz"
    archive.write_bytes(gzip.compress(data))
    dest = extract_member(archive, None, tmp_path / "corpus.txt", member_sha256=sha(data))
    assert dest.read_bytes() == data


def test_tar_member_named_with_dot_slash(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar", {"./data/x.txt": b"x"})
    assert extract_member(archive, "data/x.txt", tmp_path / "x").read_bytes() == b"x"


@pytest.mark.parametrize("name", ["a.zip", "a.tar.gz", "a.gz"])
def test_member_checksum_mismatch_leaves_nothing(tmp_path: Path, name: str) -> None:
    if name == "a.gz":
        archive, member = tmp_path / name, None
        archive.write_bytes(gzip.compress(b"content"))
    else:
        archive = (make_zip if name.endswith(".zip") else make_tar)(tmp_path / name, FILES)
        member = "README"
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="sha256 mismatch") as err:
        extract_member(archive, member, out / "member", member_sha256="2" * 64)
    assert "2" * 64 in str(err.value)
    assert leftovers(out) == []


@pytest.mark.parametrize("name", ["a.zip", "a.tar"])
def test_missing_member_lists_the_available_ones(tmp_path: Path, name: str) -> None:
    archive = (make_zip if name.endswith(".zip") else make_tar)(tmp_path / name, FILES)
    with pytest.raises(FetchError) as err:
        extract_member(archive, "data/valid.txt", tmp_path / "out")
    message = str(err.value)
    assert str(archive) in message and "data/valid.txt" in message
    assert all(n in message for n in FILES)
    assert not (tmp_path / "out").exists()


def test_member_required_for_zip_and_listing_is_capped(tmp_path: Path) -> None:
    many = {f"f{i:02d}.txt": b"x" for i in range(25)}
    archive = make_zip(tmp_path / "many.zip", many)
    with pytest.raises(FetchError, match="needs a member name") as err:
        extract_member(archive, None, tmp_path / "out")
    message = str(err.value)
    assert "f19.txt" in message and "f20.txt" not in message and "5 more" in message


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil", "C:/evil", "a/../../evil", "..\\evil"])
def test_escaping_zip_member_is_refused(tmp_path: Path, member: str) -> None:
    archive = make_zip(tmp_path / "bad.zip", {member: b"pwned", "ok.txt": b"ok"})
    with pytest.raises(FetchError, match="refusing") as err:
        extract_member(archive, member, tmp_path / "out" / "x")
    assert str(archive) in str(err.value) and repr(member) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_escaping_tar_member_is_refused(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "bad.tar", {"a/../../evil": b"pwned", "ok.txt": b"ok"})
    with pytest.raises(FetchError, match="refusing"):
        extract_member(archive, "a/../../evil", tmp_path / "out" / "x")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_link_member_is_refused(tmp_path: Path, kind: bytes) -> None:
    archive = make_tar(tmp_path / "links.tar", {"ok.txt": b"ok"}, links={"link": (kind, "ok.txt")})
    with pytest.raises(FetchError, match="refusing member 'link'"):
        extract_member(archive, "link", tmp_path / "out" / "x")
    assert not (tmp_path / "out").exists()


def test_zip_symlink_member_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(FetchError, match="symlink"):
        extract_member(archive, "link", tmp_path / "x")
    with pytest.raises(FetchError, match="symlink"):
        extract_all(archive, tmp_path / "out" / "all")
    assert leftovers(tmp_path / "out") == []


def test_not_an_archive(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("hello")
    with pytest.raises(FetchError, match="not an archive"):
        extract_member(plain, "x", tmp_path / "x")
    with pytest.raises(FetchError, match="not found"):
        extract_member(tmp_path / "nope.zip", "x", tmp_path / "x")


def test_corrupt_gz_is_a_fetch_error(tmp_path: Path) -> None:
    archive = tmp_path / "cut.gz"
    archive.write_bytes(gzip.compress(b"line\n" * 10_000)[:-40])
    with pytest.raises(FetchError, match="corrupt"):
        extract_member(archive, None, tmp_path / "out" / "x")
    assert leftovers(tmp_path / "out") == []


# ---------------------------------------------------------------------------
# extract_all
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.zip", "a.tar.gz"])
def test_extract_all(tmp_path: Path, name: str) -> None:
    archive = (make_zip if name.endswith(".zip") else make_tar)(tmp_path / name, FILES)
    dest = tmp_path / "out" / "dataset"
    got = extract_all(archive, dest)
    assert got == sorted(dest / n for n in FILES)
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in got} == FILES
    assert leftovers(dest.parent) == ["dataset"]


def test_extract_all_replaces_an_earlier_extraction(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "dataset"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from an older archive")
    extract_all(make_zip(tmp_path / "a.zip", FILES), dest)
    assert not (dest / "stale.txt").exists()
    assert leftovers(dest.parent) == ["dataset"]


def test_extract_all_keeps_internal_symlinks_out_of_the_list(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "a.tar", FILES, links={"latest": (tarfile.SYMTYPE, "data/train.txt")})
    dest = tmp_path / "out"
    got = extract_all(archive, dest)
    assert got == sorted(dest / n for n in FILES)
    assert (dest / "latest").is_symlink() and (dest / "latest").read_bytes() == FILES["data/train.txt"]


@pytest.mark.parametrize(
    "files, links",
    [
        ({}, {"passwd": (tarfile.SYMTYPE, "/etc/passwd")}),
        ({}, {"up": (tarfile.SYMTYPE, "../../outside")}),
        ({}, {"hard": (tarfile.LNKTYPE, "../outside")}),
        # Harmless by name, escaping once "d" exists on disk: Python's data filter catches it.
        ({}, {"d": (tarfile.SYMTYPE, "."), "d/e": (tarfile.SYMTYPE, "../outside")}),
        ({"../x": b"pwned"}, {}),
        ({"a/../../x": b"pwned"}, {}),
        ({"/tmp/gptpipe-evil": b"pwned"}, {}),
    ],
)
def test_extract_all_refuses_escaping_tar_entries(
    tmp_path: Path, files: dict[str, bytes], links: dict[str, tuple[bytes, str]]
) -> None:
    # Good files come first, so a refusal must also undo what was already written.
    (tmp_path / "in").mkdir()
    archive = make_tar(tmp_path / "in" / "bad.tar", {**FILES, **files}, links=links)
    out = tmp_path / "out"
    with pytest.raises(FetchError, match="refusing"):
        extract_all(archive, out / "dataset")
    assert leftovers(out) == []
    assert leftovers(tmp_path) == ["in", "out"]
    assert not Path("/tmp/gptpipe-evil").exists()


def test_extract_all_refuses_device_files(tmp_path: Path) -> None:
    archive = tmp_path / "dev.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("null")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        tf.addfile(info)
    with pytest.raises(FetchError, match="device"):
        extract_all(archive, tmp_path / "out" / "d")
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil"])
def test_extract_all_refuses_escaping_zip_entries(tmp_path: Path, member: str) -> None:
    archive = make_zip(tmp_path / "bad.zip", {**FILES, member: b"pwned"})
    with pytest.raises(FetchError, match="refusing"):
        extract_all(archive, tmp_path / "out" / "dataset")
    assert leftovers(tmp_path / "out") == []
    assert not (tmp_path / "evil.txt").exists()


def test_extract_all_needs_zip_or_tar(tmp_path: Path) -> None:
    archive = tmp_path / "one.gz"
    archive.write_bytes(gzip.compress(b"x"))
    with pytest.raises(FetchError, match="gz file"):
        extract_all(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_truncated_zip_is_called_truncated_not_a_non_archive(tmp_path: Path) -> None:
    whole = make_zip(tmp_path / "whole.zip", {"m.txt": b"hello " * 5000}).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FetchError, match=rf"{cut}: truncated or corrupt zip archive .*fetch it again"):
        archive_kind(cut)
    with pytest.raises(FetchError, match="truncated or corrupt zip archive"):
        extract_member(cut, "m.txt", tmp_path / "out" / "m.txt")
    with pytest.raises(FetchError, match="truncated or corrupt zip archive"):
        extract_all(cut, tmp_path / "out" / "all")
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("name", ["a.tar", "a.tar.gz"])
def test_a_truncated_tar_says_so(tmp_path: Path, name: str) -> None:
    big = {"m.bin": bytes(range(256)) * 800}
    whole = make_tar(tmp_path / name, big).read_bytes()
    cut = tmp_path / f"cut-{name}"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FetchError, match=rf"{cut}: truncated or corrupt (tar|gz) archive"):
        extract_all(cut, tmp_path / "out" / "all")
    with pytest.raises(FetchError, match=rf"{cut}: truncated or corrupt (tar|gz) archive"):
        extract_member(cut, "m.bin", tmp_path / "out" / "m.bin")
