"""The network rule: tests, demos and benchmarks reach 127.0.0.0/8 and ::1, nothing else.

Three layers, from the inside out:

* everything the harness starts listens on `LOOPBACK` (sshd, the release
  server, the fake LLM, fault listeners);
* the loopback guard (``loopback_guard/sitecustomize.py``) refuses any other
  destination -- and any DNS name but ``localhost`` -- before a packet
  leaves: `install_loopback_guard` puts it in this process, `guarded_env`
  into every Python child (the CLI under test) through PYTHONPATH;
* `IN_LOOPBACK_NETNS` (``in_loopback_netns CMD...``) runs a command in a
  network namespace whose only interface is loopback: `make test` runs
  pytest that way, because the real PicoClaw is a Go program that no Python
  guard can stop from opening a socket.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

LOOPBACK = "127.0.0.1"
HERE = Path(__file__).resolve().parent
GUARD_DIR = HERE / "loopback_guard"
IN_LOOPBACK_NETNS = HERE / "in_loopback_netns"


def guarded_env(base: dict | None = None) -> dict:
    """Copy of the environment whose Python subprocesses load the loopback
    guard (loopback_guard/sitecustomize.py) at start-up."""
    env = dict(os.environ if base is None else base)
    parts = [str(GUARD_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def install_loopback_guard() -> None:
    """Install the guard in this process.  Loaded from its file under another
    module name because 'sitecustomize' may already be taken."""
    spec = importlib.util.spec_from_file_location("pcf_loopback_guard", GUARD_DIR / "sitecustomize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install()
