"""Check a running classroom hub as students would use it, before the class comes.

    .venv/bin/python classroom/check_hub.py --url http://127.0.0.1:8000 alice:PASSWORD bob:PASSWORD

For each account (two test accounts of the students' group): log in through the hub's login page,
start the student's server, check that it serves the student's own copy of the notebooks (a file one
student writes is not seen by the other), and run in a kernel what a notebook's first cells run:
``start()``, then ``tutorial.train()``, the glyphs preset's run that notebooks 06 and 07 load. It
must come from the teacher's store (loaded in seconds, nothing written to the student's own store).
Then the servers are stopped (the students' files stay). Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from urllib.parse import urlparse

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

NOTEBOOKS_EXPECTED = 7  # 01-07
NOTEBOOK = "07_full_scale_recipe.ipynb"  # whose kernel runs the check (the notebook itself is not run)
KERNEL_CODE = """
import json, os, time
from mpn_tutorial.notebook import start
tutorial = start()
began = time.perf_counter()
result = tutorial.train()
print("CHECK " + json.dumps({"cwd": os.getcwd(), "runs": str(tutorial.runs), "shared": str(tutorial.shared_runs),
    "load_seconds": time.perf_counter() - began, "own_store": sorted(os.listdir(tutorial.runs)),
    "test_recall@1": result.test_metrics["recall@1"]}))
"""


def log_in(url: str, name: str, password: str) -> tuple[requests.Session, str]:
    """A session logged in through the login form, and an API token of the student's."""
    session = requests.Session()
    session.get(f"{url}/hub/login").raise_for_status()
    xsrf = session.cookies.get("_xsrf", path="/hub/")
    answer = session.post(f"{url}/hub/login?next=", data={"username": name, "password": password, "_xsrf": xsrf},
                          allow_redirects=False)  # not on to /hub/spawn: start_server starts the server
    if answer.status_code != 302:
        raise SystemExit(f"{name}: the hub refused the login (wrong password, or not in the students' group?)")
    xsrf = session.cookies.get("_xsrf", path="/hub/")  # a new one, for the logged-in user
    token = session.post(f"{url}/hub/api/users/{name}/tokens", headers={"X-XSRFToken": xsrf},
                         json={"note": "check_hub.py", "expires_in": 3600})
    token.raise_for_status()
    return session, token.json()["token"]


def start_server(url: str, name: str, token: str, timeout: float = 180) -> float:
    """Start the student's server (unless it runs) and wait until it answers; returns the seconds it took."""
    headers = {"Authorization": f"token {token}"}
    began = time.perf_counter()
    if not requests.get(f"{url}/hub/api/users/{name}", headers=headers).json()["servers"].get(""):
        requests.post(f"{url}/hub/api/users/{name}/server", headers=headers).raise_for_status()
    while time.perf_counter() - began < timeout:
        server = requests.get(f"{url}/hub/api/users/{name}", headers=headers).json()["servers"].get("", {})
        if server.get("ready"):
            return time.perf_counter() - began
        time.sleep(1)
    raise SystemExit(f"{name}: the server did not start within {timeout:.0f} s (see the hub's log)")


async def execute(url: str, name: str, token: str, code: str, timeout: float = 600) -> str:
    """Run ``code`` in a new kernel of a notebook of the student's, as opening it would start one;
    returns what it printed (an error raises)."""
    headers = {"Authorization": f"token {token}"}
    session = requests.post(f"{url}/user/{name}/api/sessions", headers=headers,
                            json={"path": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"}})
    session.raise_for_status()
    kernel_id = session.json()["kernel"]["id"]
    socket_url = urlparse(url)._replace(scheme="ws" if url.startswith("http:") else "wss").geturl()
    connection = await websocket_connect(HTTPRequest(f"{socket_url}/user/{name}/api/kernels/{kernel_id}/channels",
                                                     headers=headers))
    message_id = uuid.uuid4().hex
    await connection.write_message(json.dumps({
        "header": {"msg_id": message_id, "msg_type": "execute_request", "username": name,
                   "session": uuid.uuid4().hex, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                    "allow_stdin": False, "stop_on_error": True},
    }))
    printed, deadline = [], time.perf_counter() + timeout
    try:
        while time.perf_counter() < deadline:
            message = json.loads(await asyncio.wait_for(connection.read_message(), deadline - time.perf_counter()))
            if message.get("parent_header", {}).get("msg_id") != message_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                printed.append(content["text"])
            elif kind == "error":
                raise SystemExit(f"{name}: the kernel raised {content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(printed)
        raise SystemExit(f"{name}: the kernel did not finish within {timeout:.0f} s")
    finally:
        connection.close()
        requests.delete(f"{url}/user/{name}/api/sessions/{session.json()['id']}", headers=headers)


def check(url: str, accounts: list[tuple[str, str]]) -> list[str]:
    """Run every check; returns the problems found (none: all is well)."""
    problems, tokens = [], {}
    for name, password in accounts:
        _, tokens[name] = log_in(url, name, password)
        print(f"{name}: logged in; server ready in {start_server(url, name, tokens[name]):.1f} s", flush=True)
    for name, token in tokens.items():  # each student writes a file into their own notebooks folder
        requests.put(f"{url}/user/{name}/api/contents/check-{name}.txt", headers={"Authorization": f"token {token}"},
                     json={"type": "file", "format": "text", "content": name}).raise_for_status()
    for name, token in tokens.items():
        listing = requests.get(f"{url}/user/{name}/api/contents", headers={"Authorization": f"token {token}"}).json()
        names = sorted(item["name"] for item in listing["content"])
        notebooks = [item for item in names if item.endswith(".ipynb")]
        others = [item for item in names if item.startswith("check-") and item != f"check-{name}.txt"]
        print(f"{name}: sees {len(notebooks)} notebooks ({notebooks[0]} ... {notebooks[-1]}) and "
              f"{[item for item in names if item.startswith('check-')]}", flush=True)
        if len(notebooks) != NOTEBOOKS_EXPECTED or others or f"check-{name}.txt" not in names:
            problems.append(f"{name}: sees {names}, not their own copy of the {NOTEBOOKS_EXPECTED} notebooks")
        requests.delete(f"{url}/user/{name}/api/contents/check-{name}.txt", headers={"Authorization": f"token {token}"})
    for name, token in tokens.items():
        printed = asyncio.run(execute(url, name, token, KERNEL_CODE))
        seen = json.loads(printed.split("CHECK ", 1)[1])
        print(f"{name}: {printed.splitlines()[0]}\n{name}: {json.dumps(seen)}", flush=True)
        if seen["own_store"] or seen["load_seconds"] > 20:
            problems.append(f"{name}: the run was trained ({seen['load_seconds']:.0f} s, own store "
                            f"{seen['own_store']}), not loaded from the teacher's store: did `make tutorial` run "
                            "with this code, as this hub's MPN_TUTORIAL_THREADS, and can the students read the store?")
    for name, token in tokens.items():
        requests.delete(f"{url}/hub/api/users/{name}/server", headers={"Authorization": f"token {token}"})
        print(f"{name}: server stopped", flush=True)
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the hub's address")
    parser.add_argument("accounts", nargs="+", metavar="NAME:PASSWORD", help="test accounts of the students' group")
    args = parser.parse_args()
    accounts = [tuple(account.split(":", 1)) for account in args.accounts]
    if any(len(account) != 2 for account in accounts):
        parser.error("give each account as NAME:PASSWORD")
    problems = check(args.url.rstrip("/"), accounts)
    print("\n".join(problems) if problems else "the hub works as a class needs it")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
