"""`make lab` in a terminal: it prints a URL that answers, Ctrl-C stops it (the README's promise), and
an idle kernel is shut down even with its notebook open (LAB_KERNEL_IDLE)."""

import contextlib
import json
import os
import pty
import re
import select
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not (REPOSITORY / ".venv" / "bin" / "jupyter").exists(),
                                reason="needs `make setup` first")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read(fd: int, timeout: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal closed: the process ended
        return b""


def _api(url: str, method: str = "GET", body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method)) as answer:
        return json.load(answer)


@contextlib.contextmanager
def _make_lab(*variables: str):
    """``make lab`` in a terminal: yields (the server's base URL, its token, the terminal, the pid, the
    output so far); ends it however the test ends."""
    port = _free_port()
    pid, terminal = pty.fork()  # JupyterLab only handles Ctrl-C when it runs in a terminal
    if pid == 0:
        os.chdir(REPOSITORY)
        os.execvp("make", ["make", "--no-print-directory", "lab", f"LAB_PORT={port}", *variables])
    output, url, deadline = bytearray(), None, time.time() + 300
    try:
        while url is None and time.time() < deadline:
            output += _read(terminal, 1.0)
            match = re.search(rb"http://127\.0\.0\.1:%d/lab\?token=[0-9a-f]+" % port, output)
            url = match.group().decode() if match else None
        assert url, output.decode(errors="replace")[-2000:]
        token = url.split("token=")[1]
        for _ in range(30):  # the URL is printed just before the server accepts connections
            try:
                status = _api(f"http://127.0.0.1:{port}/api/status?token={token}")
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"{url} did not answer")
        assert "started" in status
        yield f"http://127.0.0.1:{port}", token, terminal, pid, output
    finally:
        try:  # the child leads its own session, so this also ends JupyterLab if the test failed early
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        os.close(terminal)


def test_make_lab_serves_the_printed_url_and_stops_on_ctrl_c():
    with _make_lab() as (_, _, terminal, pid, output):
        os.write(terminal, b"\x03")  # Ctrl-C at the keyboard
        stop_deadline = time.time() + 30
        while time.time() < stop_deadline:
            output += _read(terminal, 0.5)
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished:
                break
        else:
            pytest.fail("make lab was still running 30 s after Ctrl-C")
        assert b"Shutting down" in output


def test_make_lab_shuts_down_a_kernel_left_idle_with_its_notebook_open():
    with _make_lab("LAB_KERNEL_IDLE=2", "LAB_CULL_INTERVAL=1") as (base, token, terminal, _, output):
        # a notebook opened in JupyterLab: a session with a kernel and a client connected to it
        session = _api(f"{base}/api/sessions?token={token}", "POST",
                       {"path": "01_data_and_retrieval.ipynb", "type": "notebook", "kernel": {"name": "python3"}})
        kernel = session["kernel"]["id"]
        assert kernel in [found["id"] for found in _api(f"{base}/api/kernels?token={token}")]
        from tornado.ioloop import IOLoop
        from tornado.websocket import websocket_connect

        connection = IOLoop.current().run_sync(
            lambda: websocket_connect(f"{base.replace('http', 'ws')}/api/kernels/{kernel}/channels?token={token}"))
        try:
            kernels = _api(f"{base}/api/kernels?token={token}")
            assert [found["connections"] for found in kernels if found["id"] == kernel] == [1]
            deadline = time.time() + 60
            while time.time() < deadline and kernel in [k["id"] for k in _api(f"{base}/api/kernels?token={token}")]:
                output += _read(terminal, 1.0)
        finally:
            connection.close()
        assert kernel not in [found["id"] for found in _api(f"{base}/api/kernels?token={token}")], \
            output.decode(errors="replace")[-2000:]
        assert b"Culling" in output
