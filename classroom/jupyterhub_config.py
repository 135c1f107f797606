"""JupyterHub for a class on one machine: one account per student, each with their own copy of the
notebooks and their own run store, all reading the run store the teacher filled before class.

Started by ``make classroom`` (as root: the hub starts each student's server as that student).
Students log in with their account on this machine (PAM) and must belong to the group
``$CLASSROOM_GROUP`` (``students``). On a student's first start, ``start-singleuser.sh`` copies the
repository's ``notebooks/`` to ``~/mpn_tutorial/notebooks`` and gives them a run store in
``~/mpn_tutorial/runs``; the teacher's store (``$CLASSROOM_SHARED_RUNS``, the project's
``data/runs`` by default) is read, never written (``$MPN_TUTORIAL_SHARED_RUNS``). A kernel idle for
``$CLASSROOM_KERNEL_IDLE`` seconds is shut down, and a server idle for ``$CLASSROOM_SERVER_IDLE``
seconds stopped (its files stay). Settings come from the environment so that this file stays as
committed; see the README's "For teachers".
"""

import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - JupyterHub's config loader defines it

REPOSITORY = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # the hub runs from the project's environment; so do the students
STATE = Path(os.environ.get("CLASSROOM_STATE", REPOSITORY / "build" / "classroom"))  # the hub's database
STATE.mkdir(parents=True, exist_ok=True)

ADDRESS = f"{os.environ.get('CLASSROOM_IP', '127.0.0.1')}:{os.environ.get('CLASSROOM_PORT', '8000')}"
c.JupyterHub.bind_url = f"http://{ADDRESS}"
if os.environ.get("CLASSROOM_SSL_CERT"):  # serving a network: HTTPS, with the school's certificate
    c.JupyterHub.bind_url = f"https://{ADDRESS}"
    c.JupyterHub.ssl_cert = os.environ["CLASSROOM_SSL_CERT"]
    c.JupyterHub.ssl_key = os.environ["CLASSROOM_SSL_KEY"]
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")

# Accounts: the machine's own (PAM, JupyterHub's default), in one group; a teacher can be an admin.
c.JupyterHub.authenticator_class = "pam"
c.LocalAuthenticator.allowed_groups = {os.environ.get("CLASSROOM_GROUP", "students")}
c.Authenticator.admin_users = {name for name in os.environ.get("CLASSROOM_ADMINS", "").split(",") if name}

# Each student's server: JupyterLab on their own notebooks, their own store beside the teacher's.
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [str(REPOSITORY / "classroom" / "start-singleuser.sh")]
c.Spawner.notebook_dir = "~/mpn_tutorial/notebooks"
c.Spawner.default_url = "/lab"
c.Spawner.environment = {
    "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
    "LANG": os.environ.get("LANG", "C.UTF-8"),
    "MPN_TUTORIAL_NOTEBOOKS": str(REPOSITORY / "notebooks"),  # what start-singleuser.sh copies
    "MPN_TUTORIAL_DATA": str(REPOSITORY / "data"),  # the glyphs, generated once by the teacher
    "MPN_TUTORIAL_SHARED_RUNS": os.environ.get("CLASSROOM_SHARED_RUNS", str(REPOSITORY / "data" / "runs")),
    # a stored run's key holds the thread count: the same as the teacher's `make tutorial` (2)
    "MPN_TUTORIAL_THREADS": os.environ.get("MPN_TUTORIAL_THREADS", "2"),
    "MPLBACKEND": "Agg",
}
kernel_idle = os.environ.get("CLASSROOM_KERNEL_IDLE", "1800")
c.Spawner.args = [
    f"--MappingKernelManager.cull_idle_timeout={kernel_idle}",
    "--MappingKernelManager.cull_interval=60",
    "--MappingKernelManager.cull_connected=True",  # an open tab does not keep an idle kernel alive
]
c.Spawner.start_timeout = 120

# A student who left: their server stops after an idle hour (jupyterhub-idle-culler).
c.JupyterHub.services = [{
    "name": "idle-culler",
    "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                f"--timeout={os.environ.get('CLASSROOM_SERVER_IDLE', '3600')}"],
}]
c.JupyterHub.load_roles = [{
    "name": "idle-culler",
    "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    "services": ["idle-culler"],
}]
