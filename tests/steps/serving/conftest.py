"""Fixtures of the serving tests: an app on a live uvicorn server on loopback, and Debian's
Chromium driven by its chromedriver (Selenium) for the playground's browser test."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from tests.conftest import apt_install_for_ci

BROWSER_PACKAGES = ["chromium", "chromium-driver"]


@contextmanager
def live_server(app) -> Iterator[str]:
    """Serve `app` (ASGI) with uvicorn in a daemon thread on a free loopback port; its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # a free port, held from here on: no race with other processes
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@dataclass(frozen=True)
class Chromium:
    browser: Path
    driver: Path


def find_chromium() -> Chromium | None:
    """Debian's Chromium and chromedriver (packages chromium, chromium-driver) on PATH, or None."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return Chromium(Path(browser), Path(driver)) if browser and driver else None


def apt_get(*args: str) -> list[str]:
    """An apt-get command line: as is for root, after sudo otherwise."""
    cmd = ["apt-get", *args]
    return cmd if os.geteuid() == 0 else ["sudo", *cmd]


def _apt_install_chromium() -> None:
    apt_install_for_ci(apt_get("install", "-y", *BROWSER_PACKAGES))


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    """Chromium and chromedriver. Missing, they are installed from Debian packages when CI is set;
    otherwise (or if that fails) the test is skipped with the reason."""
    pytest.importorskip("selenium", reason="the browser test needs selenium (pip install -e '.[test]')")
    found = find_chromium()
    if found is None and os.environ.get("CI"):
        _apt_install_chromium()
        found = find_chromium()
    if found is None:
        pytest.skip("Chromium and chromedriver are not installed (no chromium/chromedriver on PATH): "
                    f"`{' '.join(apt_get('install', '-y', *BROWSER_PACKAGES))}`, or set CI=1 to have the tests "
                    "install them")
    return found


@pytest.fixture
def browser(chromium: Chromium, monkeypatch):
    """A headless Chromium (1280 x 900) under Selenium, quit after the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium.browser)
    options.add_argument("--headless=new")
    options.add_argument("--window-size=1280,900")
    options.add_argument("--no-proxy-server")  # the page is on loopback; a proxy in the environment must not see it
    options.add_argument("--disable-dev-shm-usage")  # containers often have a tiny /dev/shm
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root inside its sandbox
    # Selenium talks to chromedriver on loopback too: a proxy in the environment must not intercept it.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # An explicit driver path: Selenium Manager never looks for (or downloads) a driver.
    driver = webdriver.Chrome(service=Service(executable_path=str(chromium.driver)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
