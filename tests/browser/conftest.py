"""A throwaway JupyterLab server and a headless Chromium page for the browser tests.

Everything the server writes (config, runtime files, settings, workspaces, IPython profile) goes to a
temporary folder, so the tests neither read nor change the user's Jupyter setup. Chromium comes from
Debian (`make browser-deps`); Playwright is only the driver and never downloads a browser.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google services, and on machines
# without internet those refused connections slow it down.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}
# User settings for the temporary server: autosave off so that running the committed notebooks never writes
# their outputs back to disk; every cell kept in the DOM (no windowing) so all prompts can be read;
# no news or update checks, whose pop-ups could cover the widgets.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


@dataclass
class JupyterLab:
    url: str
    token: str
    root: Path
    log: Path

    def open(self, notebook: str) -> str:
        """The URL that opens ``notebook`` (relative to the served folder) in JupyterLab."""
        path = self.root / notebook
        assert path.is_file(), f"{path} not found (MPN_BROWSER_NOTEBOOKS sets the folder of notebooks)"
        return f"{self.url}/lab/tree/{notebook}?token={self.token}"


def notebooks_folder() -> Path:
    """The folder JupyterLab serves: the repository's notebooks/, or MPN_BROWSER_NOTEBOOKS to test a scratch copy."""
    return Path(os.environ.get("MPN_BROWSER_NOTEBOOKS", REPOSITORY / "notebooks")).resolve()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_answering(server: subprocess.Popen, status_url: str, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(status_url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer {status_url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM lets the server shut its kernels down (they run in sessions of their own); SIGKILL if it hangs."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.fixture
def jupyter_lab(tmp_path) -> JupyterLab:
    """A JupyterLab server on 127.0.0.1 serving :func:`notebooks_folder`; always stopped afterwards."""
    home = tmp_path / "jupyter"
    for name in ("config", "runtime", "data", "workspaces", "ipython"):
        (home / name).mkdir(parents=True)
    for plugin, values in LAB_SETTINGS.items():
        path = home / "settings" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    # The widget labextension and the python3 kernel are found under sys.prefix, so empty user dirs suffice.
    environment = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
                       JUPYTER_DATA_DIR=str(home / "data"), IPYTHONDIR=str(home / "ipython"))
    port, token, root = _free_port(), secrets.token_hex(16), notebooks_folder()
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={home / 'workspaces'}",
               f"--LabApp.user_settings_dir={home / 'settings'}", "--LabApp.extension_manager=readonly",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = tmp_path / "jupyter-server.log"
    with log.open("w") as log_file:
        # A session of its own, so that stopping it reaches the server's whole process group and nothing else.
        server = subprocess.Popen(command, env=environment, stdout=log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_answering(server, f"{url}/api/status?token={token}", log)
        yield JupyterLab(url, token, root, log)
    finally:
        _stop(server)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # Keep each phase's report on the test item so that the page fixture knows whether the test failed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium; the browser tests skip, saying why, where it is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`make browser-deps`) to run the browser tests")
    return CHROMIUM


def _browser_page(request, tmp_path, chromium, server_log: Path | None):
    """A page in a fresh headless Chromium; on failure its screenshot, console and the server log go to artifacts/."""
    from playwright.sync_api import sync_playwright

    console: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile", executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
            viewport=VIEWPORT)
        page = context.pages[0] if context.pages else context.new_page()
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        try:
            yield page
        finally:
            _keep_artifacts_of_a_failure(request, page, console, server_log)
            context.close()


def _keep_artifacts_of_a_failure(request, page, console: list[str], server_log: Path | None) -> None:
    """When the test failed (or never got to run): the page's screenshot, its console and the server log."""
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        name = request.node.name
        page.screenshot(path=ARTIFACTS / f"{name}.png")
        (ARTIFACTS / f"{name}-console.log").write_text("\n".join(console))
        if server_log is not None:
            shutil.copy(server_log, ARTIFACTS / f"{name}-jupyter-server.log")


@pytest.fixture
def page(request, tmp_path, chromium, jupyter_lab):
    """A Chromium page for a test that drives JupyterLab (:func:`jupyter_lab`)."""
    yield from _browser_page(request, tmp_path, chromium, jupyter_lab.log)


@pytest.fixture(scope="module")
def static_browser(chromium):
    """One headless Chromium for a module's tests of static files: starting it once keeps many pages quick."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def static_page(request, static_browser):
    """A fresh Chromium page for a test of static files (no server); on failure, artifacts as for :func:`page`."""
    console: list[str] = []
    context = static_browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    try:
        yield page
    finally:
        _keep_artifacts_of_a_failure(request, page, console, None)
        context.close()
