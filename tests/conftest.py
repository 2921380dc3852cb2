"""Shared test fixtures."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny test models gain nothing from intra-op threads, and on a busy 2-core machine the
    hand-off between threads costs milliseconds per matmul (the slow end-to-end test runs its
    stages in subprocesses, which keep torch's default)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHARED = ROOT.parent / "shared"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (the book's files, GPT-2 BPE files), beside the checkout; skip when absent."""
    path = SHARED / "data"
    if not (path / "book").is_dir():
        pytest.skip(f"{path} is absent (the book's data lives beside the checkout)")
    return path


class _FileServer:
    """A loopback HTTP server over one folder; `fail` queues status codes for the next requests."""

    def __init__(self, folder: Path) -> None:
        import functools
        import http.server
        import threading

        self.requests: list[str] = []
        self.fail: list[int] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                if server.fail:
                    self.send_error(server.fail.pop(0))
                    return
                super().do_GET()

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve_folder(monkeypatch):
    """Start loopback HTTP servers over folders: `server = serve_folder(path)`; `server.url`."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    servers = []

    def start(folder: Path) -> _FileServer:
        servers.append(_FileServer(folder))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def serve_folder_module():
    """`serve_folder` for module-scoped fixtures (an end-to-end run shared by several tests)."""
    servers = []

    def start(folder: Path) -> _FileServer:
        servers.append(_FileServer(folder))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
