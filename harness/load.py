"""A simulated host's load, CPU count and machine, faked below the shell, whatever reads them.

All sim hosts share this machine's kernel, so /proc/loadavg and the CPU count
are the same for every one of them. A host given a load of its own gets an
sshd of its own (`LoadedSshd`), started by root inside a private mount
namespace (``unshare --mount``, propagation private) in which harness files
are bind-mounted over the kernel's:

  /proc/loadavg                      "L L L 1/100 12345"
  /sys/devices/system/cpu/online     "0-(N-1)": getconf _NPROCESSORS_ONLN, sysconf, os.cpu_count
  /sys/devices/system/cpu/possible   the same: getconf _NPROCESSORS_CONF, nproc --all
  /sys/devices/system/cpu/present    the same
  /proc/cpuinfo                      N processor blocks (this machine's first, renumbered)
  /proc/sys/kernel/arch              the machine (``aarch64``...), for a host that is another board
                                     (`set_machine`); or a FIFO, for a host whose probe hangs

and with OMP_NUM_THREADS=N in every session's environment (sshd's SetEnv):
coreutils' `nproc` counts the CPUs of its affinity mask, which no file can
change, and honours OMP_NUM_THREADS before that (documented in nproc(1)).
Every session sshd forks for the host lives in that namespace, so the status
probe sees the fake however it reads it -- `cat /proc/loadavg`, a shell's
``read -r l _ < /proc/loadavg``, `uptime`, `nproc`, `getconf`, /sys, /proc/cpuinfo
-- and nothing is put on the host's PATH: the product's probe is not shaped
by how the harness fakes a load. Not faked: the sysinfo(2) and
sched_getaffinity(2) system calls themselves (Python's os.getloadavg and
os.sched_getaffinity still see the machine).

The mounts exist only in that namespace, which ends with its last process:
nothing is ever mounted on the machine itself, and a killed run leaves no
mount behind. The host's sshd serves only that user, with the testbed's host
key and command recording; its port becomes the host's port.
"""

from __future__ import annotations

import os
from pathlib import Path

from .sshd import SshdServer
from .system import make_dir

#: (fake file, kernel file it is bind-mounted over).
BINDS = (
    ("loadavg", "/proc/loadavg"),
    ("cpuinfo", "/proc/cpuinfo"),
    ("cpus", "/sys/devices/system/cpu/online"),
    ("cpus", "/sys/devices/system/cpu/possible"),
    ("cpus", "/sys/devices/system/cpu/present"),
    ("arch", "/proc/sys/kernel/arch"),
)

#: Runs in the new namespace: mount each "$1" over "$2" until "--", then exec what follows (sshd).
MOUNT_THEN_EXEC = 'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 1; shift 2; done; shift; exec "$@"'

#: fields of a /proc/cpuinfo block that number the CPU, and that count them.
CPU_NUMBER_FIELDS = {"processor", "core id", "apicid", "initial apicid"}
CPU_COUNT_FIELDS = {"siblings", "cpu cores"}


def loadavg_text(load1: float) -> str:
    return f"{load1:.2f} {load1:.2f} {load1:.2f} 1/100 12345\n"


def cpus_text(ncpu: int) -> str:
    """The kernel's CPU list format: "0" or "0-3"."""
    return "0\n" if ncpu == 1 else f"0-{ncpu - 1}\n"


def cpuinfo_text(ncpu: int, template: str | None = None) -> str:
    """/proc/cpuinfo for `ncpu` CPUs: the first block of `template` (this
    machine's /proc/cpuinfo) once per CPU, with its numbering and counts fixed."""
    if template is None:
        template = Path("/proc/cpuinfo").read_text()
    first = template.split("\n\n")[0].splitlines() or ["processor\t: 0"]
    blocks = []
    for number in range(ncpu):
        lines = []
        for line in first:
            key = line.split(":", 1)[0]
            if key.strip() in CPU_NUMBER_FIELDS:
                line = f"{key}: {number}"
            elif key.strip() in CPU_COUNT_FIELDS:
                line = f"{key}: {ncpu}"
            lines.append(line)
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks) + "\n"


class LoadedSshd(SshdServer):
    """The sshd of one sim host whose load and CPU count are faked (see the module).

    `set_load` (re)writes the fake files -- in place: a bind mount follows the
    file, so a running namespace sees the new values at once -- and starts
    the sshd, or restarts it on the same port when the CPU count changed
    (sessions get OMP_NUM_THREADS from its config).
    """

    def __init__(self, directory: Path, allow_users: str, force_command: Path | None = None,
                 host_key: Path | None = None):
        super().__init__(directory, allow_users, force_command, host_key)
        self.fakes = make_dir(self.directory / "fake", 0o755)
        self.load1: float | None = None
        self.ncpu: int | None = None

    def set_machine(self, machine: str | None) -> None:
        """Make the kernel's arch read `machine`; None makes it a FIFO, whose reader waits forever."""
        path = self.fakes / "arch"
        fresh = not path.exists()
        if machine is None:
            path.unlink(missing_ok=True)
            os.mkfifo(path, 0o444)
        else:
            if path.exists() and not path.is_file():
                path.unlink()
            with open(path, "r+" if path.is_file() else "w") as handle:
                handle.write(f"{machine}\n")
                handle.truncate()
            path.chmod(0o444)
        self.restart_for_new_binds(fresh or machine is None)

    def restart_for_new_binds(self, changed: bool) -> None:
        """Start the sshd, or restart it on its port when a bind is new (mounts are made at its start)."""
        if self.pid is None:
            self.start()
        elif changed:
            port = self.port
            self.stop()
            self.start(port=port)

    def set_load(self, load1: float, ncpu: int) -> None:
        ncpu = int(ncpu)
        if ncpu < 1:
            raise ValueError(f"a host has at least one CPU, not {ncpu}")
        restart = self.pid is not None and (ncpu != self.ncpu or self.load1 is None)
        self.load1, self.ncpu = float(load1), ncpu
        for name, text in (("loadavg", loadavg_text(self.load1)), ("cpus", cpus_text(ncpu)),
                           ("cpuinfo", cpuinfo_text(ncpu))):
            path = self.fakes / name
            with open(path, "r+" if path.exists() else "w") as handle:  # same inode: the mounts follow
                handle.write(text)
                handle.truncate()
            path.chmod(0o444)
        if restart:
            port = self.port
            self.stop()
            self.start(port=port)
        elif self.pid is None:
            self.start()

    def environment(self) -> dict:
        """What every session of this host has in its environment on top of sshd's own."""
        return {"OMP_NUM_THREADS": str(self.ncpu)} if self.ncpu is not None else {}

    def config_text(self) -> str:
        env = " ".join(f"{name}={value}" for name, value in self.environment().items())
        return super().config_text() + (f"SetEnv {env}\n" if env else "")

    def command(self) -> list[str]:
        binds = [str(part) for name, target in BINDS if os.path.lexists(self.fakes / name)
                 for part in (self.fakes / name, target)]
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", MOUNT_THEN_EXEC, "sh",
                *binds, "--", *super().command()]

    def enter(self) -> list[str]:
        """argv prefix that runs a command in this host's mount namespace (`Testbed.run_as`)."""
        if self.pid is None:
            raise RuntimeError("the host's sshd is not running")
        return ["nsenter", f"--target={self.pid}", "--mount", "--"]
