"""Helpers shared by the deploy, teardown and remote-file tests (and the benchmark).

Kept out of conftest.py, which is generic: these know about deploy's paths,
the fake `uname` a sim host needs to look like an arm64 board, and how to
run `fab` as a user would.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from fabfile.core.config import Defaults, HostEntry
from fabfile.ssh.connections import HostKeyStore, build_connection, fabric_config
from tests import testbed as tb
from tests.testbed import FAB, REPO

RELEASE_REPO = "sipeed/picoclaw"
API_KEY = "sk-test-SECRET-4f9c2a7e1b"  # a recognisable fake key, searched for wherever it must not be

UNAME_SHIM = """#!/bin/sh
# deploy tests: make this sim host look like another machine to `uname -m`.
if [ "$1" = -m ]; then echo {machine}; exit 0; fi
exec /bin/uname "$@"
"""


def connect(testbed: tb.Testbed, host: tb.SimHost, known_hosts: Path | None = None, connect_timeout: float = 10):
    """A Fabric Connection to a sim host, built by the product's own connection code."""
    defaults = Defaults(known_hosts=str(known_hosts or testbed.known_hosts), host_key_policy="accept-new",
                        connect_timeout=connect_timeout)
    entry = HostEntry(name=host.name, host=host.address, user=host.user, port=host.port,
                      ssh_key=str(testbed.client_key))
    keys = HostKeyStore(defaults.host_key_policy, defaults.known_hosts)
    return build_connection(entry, defaults, keys, fabric_config())


OD_SHIM = """#!/bin/sh
# deploy tests: the byte /bin/sh's ELF header holds at offset 5 (01 little-, 02 big-endian).
echo ' {byte}'
"""


def set_machine(host: tb.SimHost, machine: str, elf_byte_order: str | None = None) -> None:
    """Make `uname -m` report `machine` on this sim host (all share one kernel).

    Same mechanism as Testbed.set_load: a PATH shim announced in
    ~/.ssh/environment (sshd allows PATH there). Written as the host's user.
    `elf_byte_order` (``01``/``02``) also fakes the `od` the probe reads a
    MIPS host's byte order with.
    """
    import os
    import pwd

    entry = pwd.getpwnam(host.user)
    fakebin = host.home / ".fakebin"
    fakebin.mkdir(mode=0o755, exist_ok=True)
    os.chown(fakebin, entry.pw_uid, entry.pw_gid)
    shims = {"uname": UNAME_SHIM.format(machine=machine)}
    if elf_byte_order is not None:
        shims["od"] = OD_SHIM.format(byte=elf_byte_order)
    for name, text in shims.items():
        shim = fakebin / name
        shim.write_text(text)
        shim.chmod(0o755)
        os.chown(shim, entry.pw_uid, entry.pw_gid)
    environment = host.home / ".ssh" / "environment"
    environment.write_text(f"PATH={fakebin}:{tb.DEFAULT_PATH}\n")
    environment.chmod(0o600)
    os.chown(environment, entry.pw_uid, entry.pw_gid)


def set_path(host: tb.SimHost, path: str) -> None:
    """Give the host's SSH sessions this PATH (e.g. one without sha256sum)."""
    import os
    import pwd

    entry = pwd.getpwnam(host.user)
    environment = host.home / ".ssh" / "environment"
    environment.write_text(f"PATH={path}\n")
    environment.chmod(0o600)
    os.chown(environment, entry.pw_uid, entry.pw_gid)


def fab(args, env, timeout=300):
    """Run the real `fab` CLI in the repository; a CompletedProcess with text output."""
    return subprocess.run([FAB, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def fab_json(args, env, timeout=300):
    """(CompletedProcess, parsed JSON, {host name: host object}) of `fab <args> --json`."""
    result = fab([*args, "--json"], env, timeout)
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {result.returncode}): {result.stdout!r} {result.stderr!r}") from None
    return result, data, {h["name"]: h for h in data["hosts"]}


def installed_binary(host: tb.SimHost) -> Path:
    return host.home / ".local" / "bin" / "picoclaw"


def env_file(host: tb.SimHost) -> Path:
    return host.home / ".picoclaw" / ".env"


class NoSftpSshd(tb.SshdServer):
    """A second sshd for the testbed's users with no SFTP subsystem (like a bare Dropbear)."""

    def __init__(self, testbed: tb.Testbed, name: str = "sshd-nosftp"):
        super().__init__(testbed.workdir / name, testbed.allow_users)

    def config_text(self) -> str:
        return "".join(line + "\n" for line in super().config_text().splitlines() if not line.startswith("Subsystem"))
