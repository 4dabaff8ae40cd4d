"""The product driven as its users drive it: the `fab` CLI and its JSON, a Connection, a terminal.

`fab` runs as a real subprocess in the repository (give it `loopback.guarded_env()`
or a copy), exactly as a sysadmin or an agent would run it; `connect` builds a
Fabric Connection to a sim host with the product's own connection code, for
tests that call a verb's building blocks directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: The repository, and the `fab` of the venv running the tests: the CLI under test.
REPO = Path(__file__).resolve().parent.parent
FAB = str(Path(sys.executable).with_name("fab"))
#: A recognisable fake API key, searched for wherever it must not be.
API_KEY = "sk-test-SECRET-4f9c2a7e1b"


def fab(args, env, timeout=300):
    """Run the real `fab` CLI in the repository; a CompletedProcess with text output."""
    return subprocess.run([FAB, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def start_fab(args, env):
    """Start the real `fab` CLI without waiting: a Popen with text stdout and stderr pipes, no stdin."""
    return subprocess.Popen([FAB, *map(str, args)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def fab_json(args, env, timeout=300):
    """(CompletedProcess, parsed JSON, {host name: host object}) of `fab <args> --json`."""
    result = fab([*args, "--json"], env, timeout)
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {result.returncode}): {result.stdout!r} {result.stderr!r}") from None
    return result, data, {h["name"]: h for h in data["hosts"]}


def connect(testbed, host, known_hosts: Path | None = None, connect_timeout: float = 10):
    """A Fabric Connection to a sim host, built by the product's own connection code."""
    from fabfile.core.config import Defaults, HostEntry
    from fabfile.ssh.connections import apply_deadlines, build_connection, fabric_config
    from fabfile.ssh.known_hosts import HostKeyStore

    defaults = Defaults(known_hosts=str(known_hosts or testbed.known_hosts), host_key_policy="accept-new",
                        connect_timeout=connect_timeout)
    entry = HostEntry(name=host.name, host=host.address, user=host.user, port=host.port,
                      ssh_key=str(testbed.client_key))
    keys = HostKeyStore(defaults.host_key_policy, defaults.known_hosts)
    config = fabric_config()
    apply_deadlines(config, connect_timeout)
    return build_connection(entry, defaults, keys, config)


def drain_terminal(fd: int) -> bytes:
    """Everything a pseudo-terminal's controller side can still read: Linux
    reports EIO (not EOF) once the other end is closed and drained."""
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            return data
        if not chunk:
            return data
        data += chunk
