"""`make lab` in a terminal: it prints a URL that answers, and Ctrl-C stops it (the README's promise)."""

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


@pytest.mark.skipif(not (REPOSITORY / ".venv" / "bin" / "jupyter").exists(), reason="needs `make setup` first")
def test_make_lab_serves_the_printed_url_and_stops_on_ctrl_c():
    port = _free_port()
    pid, terminal = pty.fork()  # JupyterLab only handles Ctrl-C when it runs in a terminal
    if pid == 0:
        os.chdir(REPOSITORY)
        os.execvp("make", ["make", "--no-print-directory", "lab", f"LAB_PORT={port}"])
    output, url, deadline = b"", None, time.time() + 300
    try:
        while url is None and time.time() < deadline:
            output += _read(terminal, 1.0)
            match = re.search(rb"http://127\.0\.0\.1:%d/lab\?token=[0-9a-f]+" % port, output)
            url = match.group().decode() if match else None
        assert url, output.decode(errors="replace")[-2000:]
        token = url.split("token=")[1]
        status = None
        for _ in range(30):  # the URL is printed just before the server accepts connections
            try:
                status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}"))
                break
            except OSError:
                time.sleep(0.5)
        assert status is not None and "started" in status

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
