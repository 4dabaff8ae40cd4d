"""PATH shims: a sim host whose `uname -m` (or whose PATH) is not this machine's.

All sim hosts share one kernel, so `uname -m` says x86_64 on every one; the
deploy tests need an arm64 board, a big-endian MIPS one, a host without
sha256sum. The shims are small scripts in ~/.fakebin, put first on the PATH
that sshd gives the host's sessions through ~/.ssh/environment (the harness's
sshd allows PATH there, and only PATH). Written as the host's user.

Only for what no file can fake: a host's load, CPU count and the kernel's
machine name (/proc/sys/kernel/arch, what the probe reads) are faked below
the shell instead (harness.load; `Testbed.set_machine` does both), so that no
probe has to run a command by name for the harness to answer it.
"""

from __future__ import annotations

import os
import pwd

from .testbed import DEFAULT_PATH

UNAME_SHIM = """#!/bin/sh
# a sim host that looks like another machine to `uname -m`.
if [ "$1" = -m ]; then echo {machine}; exit 0; fi
exec /bin/uname "$@"
"""

OD_SHIM = """#!/bin/sh
# the byte /bin/sh's ELF header holds at offset 5 (01 little-, 02 big-endian).
echo ' {byte}'
"""


def set_machine(host, machine: str, elf_byte_order: str | None = None) -> None:
    """Make `uname -m` report `machine` on this sim host. `elf_byte_order`
    (``01``/``02``) also fakes the `od` the probe reads a MIPS host's byte order with."""
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
    set_path(host, f"{fakebin}:{DEFAULT_PATH}")


def set_path(host, path: str) -> None:
    """Give the host's SSH sessions this PATH (e.g. one without sha256sum)."""
    entry = pwd.getpwnam(host.user)
    environment = host.home / ".ssh" / "environment"
    environment.write_text(f"PATH={path}\n")
    environment.chmod(0o600)
    os.chown(environment, entry.pw_uid, entry.pw_gid)
