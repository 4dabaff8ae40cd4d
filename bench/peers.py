"""The peer tools of figure 7, each started as a whole process against the same sim hosts.

Every peer lives in a directory of its own that ``make bench`` fills
(``.venv/bench-peers/<tool>``: a venv, or a ``pip --target`` directory for
parallel-ssh; pdsh is Debian's package), never in our venv: this module only
builds their command lines and input files, and checks what they printed.
A peer that is not installed says so (`Peer.missing`) and is never timed.

All of them reach the hosts the same way, over 127.0.0.1 only (checked
before a file is written): the harness's client key and the testbed's host
key in a known_hosts file, host key checking on. The OpenSSH-based ones
(OpenSSH + xargs, Ansible, pdsh, clush) share one ssh_config: an alias per
host (``n0000`` ...) with its user and port, batch mode, the curve25519-sha256
key exchange (paramiko's choice too; OpenSSH 9's default, the post-quantum
sntrup761 hybrid, costs several times the CPU), and no connection sharing, so
that every run connects cold like every other tool. Every tool gets a fanout of
one per host, what ThreadingGroup does; `DEFAULT_FANOUT_PEERS` also run
at the fanout they choose themselves, as a user who gives none gets.
"""

import ipaddress
import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / ".venv" / "bench-peers"
SCRIPTS = Path(__file__).resolve().with_name("scripts")
#: The key exchange every OpenSSH-based peer is given (the issue: "OpenSSH with curve25519 kex").
KEX = "curve25519-sha256"
#: What every tool runs on every host.
COMMAND = "true"


class PeerFailed(RuntimeError):
    """A peer's run did not reach every host, or said something went wrong."""


def require_loopback(hosts):
    """Raise unless every host is on 127.0.0.0/8 or ::1: the benchmark's network rule, checked again here."""
    for host in hosts:
        if not ipaddress.ip_address(host.address).is_loopback:
            raise ValueError(f"bench: refusing a non-loopback host address {host.address!r}")


def alias(index):
    """The name a peer knows the `index`-th host by (``n0007``): its ssh_config ``Host``, inventory name."""
    return f"n{index:04d}"


@dataclass
class SizeFiles:
    """The input files every peer reads for one fleet size, written into `directory` by `write`."""

    hosts: list
    key: Path
    known_hosts: Path
    directory: Path

    @property
    def count(self):
        return len(self.hosts)

    @property
    def fanout(self):
        return len(self.hosts)

    @property
    def aliases(self):
        return [alias(i) for i in range(len(self.hosts))]

    def path(self, name):
        return self.directory / name

    def write(self):
        """Write every input file; returns self."""
        require_loopback(self.hosts)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path("hosts.json").write_text(json.dumps(hosts_json(self.hosts, self.key)))
        self.path("hosts.txt").write_text("".join(a + "\n" for a in self.aliases))
        self.path("ssh_config").write_text(ssh_config(self.hosts, self.aliases, self.key, self.known_hosts))
        self.path("inventory.ini").write_text(ansible_inventory(self.aliases))
        self.path("ansible.cfg").write_text(ansible_cfg(self.path("ssh_config")))
        self.path("inventory.py").write_text(pyinfra_inventory(self.hosts, self.aliases, self.key,
                                                               self.known_hosts))
        return self


def hosts_json(hosts, key):
    """The bare scripts' input: the key and each host's user, address and port."""
    return {"key": str(key), "hosts": [{"user": h.user, "address": h.address, "port": h.port} for h in hosts]}


def ssh_config(hosts, aliases, key, known_hosts):
    """One ssh_config for every OpenSSH-based peer: an alias per host, then what they all share."""
    lines = []
    for name, host in zip(aliases, hosts):
        lines += [f"Host {name}", f"    HostName {host.address}", f"    Port {host.port}", f"    User {host.user}"]
    lines += [
        "Host *",
        f"    IdentityFile {key}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {known_hosts}",
        "    GlobalKnownHostsFile /dev/null",
        "    StrictHostKeyChecking yes",
        "    BatchMode yes",
        f"    KexAlgorithms {KEX}",
        "    ConnectTimeout 30",
        "    ControlMaster no",
        "    ControlPath none",
        "    LogLevel ERROR",
    ]
    return "\n".join(lines) + "\n"


def ansible_inventory(aliases):
    """An INI inventory of the aliases: where they are comes from the shared ssh_config."""
    return "[bench]\n" + "".join(name + "\n" for name in aliases)


def ansible_cfg(ssh_config_path):
    """ansible.cfg: Ansible's own ssh_args with ``-F`` our ssh_config, and ControlPersist off.

    Ansible's default ssh_args are ``-C -o ControlMaster=auto -o ControlPersist=60s``:
    compression stays, but the persistent master connections would make every
    repetition after the first a warm one, which no other tool here gets.
    """
    return (
        "[defaults]\n"
        "host_key_checking = True\n"
        "gathering = explicit\n"
        "retry_files_enabled = False\n"
        "deprecation_warnings = False\n"
        "localhost_warning = False\n"
        "interpreter_python = auto_silent\n"
        "nocolor = True\n"
        "[ssh_connection]\n"
        f"ssh_args = -C -o ControlMaster=no -F {ssh_config_path}\n"
    )


def pyinfra_inventory(hosts, aliases, key, known_hosts):
    """pyinfra's Python inventory: each alias with its address, port, user, key and known_hosts."""
    entries = [
        (name, {"ssh_hostname": h.address, "ssh_port": h.port, "ssh_user": h.user, "ssh_key": str(key),
                "ssh_known_hosts_file": str(known_hosts), "ssh_strict_host_key_checking": "yes"})
        for name, h in zip(aliases, hosts)
    ]
    return "hosts = [\n" + "".join(f"    {entry!r},\n" for entry in entries) + "]\n"


# ---- the peers ------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One peer's process: argv, the environment it adds to the bench's, and its working directory."""

    argv: list
    env: dict = field(default_factory=dict)
    cwd: Path = None

    def text(self):
        """The command line as a shell would take it, environment first (for the notes and the report)."""
        env = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in self.env.items() if k != "PYTHONPATH")
        return (env + " " if env else "") + shlex.join(map(str, self.argv))


@dataclass
class Peer:
    """A tool of figure 7: how to tell it is installed, start it, and check that it reached every host."""

    key: str
    label: str  # the table's and the plot's name for it
    ran: str  # what it did, for the notes
    needs: tuple  # files that must exist (the tool's entry points)
    tool: str = ""  # the tool, when this row runs it another way: its install, version and output check

    @property
    def tool_key(self):
        """The key of the tool itself: its directory in PEERS_DIR, its `VERSIONS` and `CHECKS` entries."""
        return self.tool or self.key

    def missing(self):
        """None when the tool is installed, else why it is not (the column says so)."""
        for path in self.needs:
            if not Path(path).exists():
                failed = PEERS_DIR / self.tool_key / ".failed"
                why = f" ({failed.read_text().strip()})" if failed.exists() else ""
                return f"{self.key} is not installed: no {path}{why}; make bench installs it"
        return None

    def version(self):
        """The installed version, as its package says (``pyinfra 3.10.0``), or None."""
        return VERSIONS[self.tool_key]() if self.missing() is None else None

    def invocation(self, files, python):
        return INVOCATIONS[self.key](files, python)

    def check(self, run, files):
        """Raise `PeerFailed` unless the run exited 0 and its output says all hosts ran the command."""
        said = (run.stderr.strip() or run.stdout.strip())[-400:]
        if run.returncode != 0:
            raise PeerFailed(f"{self.label} exited {run.returncode}: {said}")
        CHECKS.get(self.tool_key, lambda run, files: None)(run, files)


def venv_bin(tool, program):
    return PEERS_DIR / tool / "bin" / program


def which(program):
    return shutil.which(program) or f"/usr/bin/{program}"


PEERS = [
    Peer("pyinfra", "pyinfra exec", f"pyinfra INVENTORY exec -- {COMMAND} (paramiko)",
         (venv_bin("pyinfra", "pyinfra"),)),
    Peer("parallel-ssh", "parallel-ssh", f"a ParallelSSHClient script, run_command('{COMMAND}') (libssh2)",
         (PEERS_DIR / "parallel-ssh" / "pssh" / "clients" / "__init__.py",)),
    Peer("openssh", "OpenSSH + xargs", f"xargs -P N ssh HOST {COMMAND} (OpenSSH, {KEX})", (which("ssh"), which("xargs"))),
    Peer("ansible", "Ansible -m raw", f"ansible all -m raw -a {COMMAND} (OpenSSH, {KEX})",
         (venv_bin("ansible", "ansible"),)),
    Peer("pdsh", "pdsh", f"pdsh -R ssh {COMMAND} (OpenSSH, {KEX})", (which("pdsh"),)),
    Peer("clush", "clush (ClusterShell)", f"clush {COMMAND} (OpenSSH, {KEX})", (venv_bin("clustershell", "clush"),)),
    Peer("asyncssh", "asyncssh", f"an asyncssh script, conn.run('{COMMAND}') (asyncio, pure Python)",
         (venv_bin("asyncssh", "python"),)),
]


#: Peers that figure 7 also runs at their own default fanout (its rows after ours at our default).
DEFAULT_FANOUT_PEERS = [
    Peer("pyinfra-default", "pyinfra exec, its default --parallel",
         f"pyinfra INVENTORY exec -- {COMMAND} (paramiko), 20 hosts per CPU at once",
         (venv_bin("pyinfra", "pyinfra"),), tool="pyinfra"),
]


def pyinfra_invocation(files, python):
    argv = [venv_bin("pyinfra", "pyinfra"), "-y", "--parallel", files.fanout, files.path("inventory.py"),
            "exec", "--", COMMAND]
    return Invocation(argv, cwd=files.directory)


def pyinfra_default_invocation(files, python):
    """pyinfra without ``--parallel``: it then works on 20 hosts per CPU at once (its own default)."""
    argv = [venv_bin("pyinfra", "pyinfra"), "-y", files.path("inventory.py"), "exec", "--", COMMAND]
    return Invocation(argv, cwd=files.directory)


def pssh_invocation(files, python):
    argv = [python, SCRIPTS / "pssh_true.py", files.path("hosts.json"), files.fanout]
    return Invocation(argv, {"PYTHONPATH": PEERS_DIR / "parallel-ssh"}, files.directory)


def asyncssh_invocation(files, python):
    argv = [venv_bin("asyncssh", "python"), SCRIPTS / "asyncssh_true.py", files.path("hosts.json"), files.known_hosts,
            files.fanout]
    return Invocation(argv, cwd=files.directory)


def openssh_invocation(files, python):
    argv = [which("xargs"), "-a", files.path("hosts.txt"), "-P", files.fanout, "-I", "{}",
            which("ssh"), "-n", "-F", files.path("ssh_config"), "{}", COMMAND]
    return Invocation(argv, cwd=files.directory)


def ansible_invocation(files, python):
    home = files.path("ansible-home")
    env = {"ANSIBLE_CONFIG": files.path("ansible.cfg"), "ANSIBLE_HOME": home,
           "ANSIBLE_LOCAL_TEMP": home / "tmp"}
    argv = [venv_bin("ansible", "ansible"), "all", "-i", files.path("inventory.ini"), "-f", files.fanout,
            "-m", "raw", "-a", COMMAND]
    return Invocation(argv, env, files.directory)


def pdsh_invocation(files, python):
    env = {"PDSH_SSH_ARGS": f"-F {files.path('ssh_config')} %h", "PDSH_RCMD_TYPE": "ssh"}
    argv = [which("pdsh"), "-S", "-R", "ssh", "-f", files.fanout, "-w", ",".join(files.aliases), COMMAND]
    return Invocation(argv, env, files.directory)


def clush_invocation(files, python):
    argv = [venv_bin("clustershell", "clush"), "-S", "-n", "-f", files.fanout, "-o", f"-F {files.path('ssh_config')}",
            "-w", ",".join(files.aliases), COMMAND]
    return Invocation(argv, cwd=files.directory)


def dist_version(directory, dist):
    """``dist X.Y`` from the ``dist-X.Y.dist-info`` that pip left under `directory` (a venv or --target)."""
    for info in sorted(Path(directory).glob(f"**/{dist}-*.dist-info")):
        return f"{dist} {info.name[len(dist) + 1 : -len('.dist-info')]}"
    return None


def program_version(argv):
    """The first line a program prints about its version (stdout or stderr), or None."""
    import subprocess

    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return ((proc.stdout or proc.stderr).strip().splitlines() or [None])[0]


VERSIONS = {
    "pyinfra": lambda: dist_version(PEERS_DIR / "pyinfra", "pyinfra"),
    "parallel-ssh": lambda: dist_version(PEERS_DIR / "parallel-ssh", "parallel_ssh"),
    "openssh": lambda: program_version([which("ssh"), "-V"]),
    "ansible": lambda: dist_version(PEERS_DIR / "ansible", "ansible_core"),
    "pdsh": lambda: program_version([which("pdsh"), "-V"]),
    "clush": lambda: dist_version(PEERS_DIR / "clustershell", "clustershell"),
    "asyncssh": lambda: dist_version(PEERS_DIR / "asyncssh", "asyncssh"),
}


INVOCATIONS = {
    "pyinfra": pyinfra_invocation,
    "pyinfra-default": pyinfra_default_invocation,
    "parallel-ssh": pssh_invocation,
    "openssh": openssh_invocation,
    "ansible": ansible_invocation,
    "pdsh": pdsh_invocation,
    "clush": clush_invocation,
    "asyncssh": asyncssh_invocation,
}


def expect_ok_count(run, files):
    """The bare scripts print ``ok N``."""
    if run.stdout.split() != ["ok", str(files.count)]:
        raise PeerFailed(f"expected 'ok {files.count}', got {run.stdout.strip()[-200:]!r}")


def expect_ansible_hosts(run, files):
    """``ansible -m raw`` prints ``NAME | CHANGED | rc=0 >>`` for each host that ran the command."""
    done = {line.split(" | ")[0] for line in run.stdout.splitlines() if " | CHANGED | rc=0" in line}
    if done != set(files.aliases):
        raise PeerFailed(f"ansible: {len(done)} of {files.count} hosts ran it: {run.stdout.strip()[-300:]}")


def expect_quiet_stderr(run, files):
    """pdsh and clush report a host that failed on stderr (and -S makes it the exit status)."""
    if run.stderr.strip():
        raise PeerFailed(f"said on stderr: {run.stderr.strip()[-300:]}")


def expect_pyinfra_hosts(run, files):
    """pyinfra's results table ends ``Grand total  HOSTS  SUCCESS  ERROR  NO-CHANGE``: all N, no error."""
    lines = [line.split() for line in (run.stdout + run.stderr).splitlines() if line.strip().startswith("Grand total")]
    n = str(files.count)
    if not lines or lines[-1][2:5] != [n, n, "-"]:
        raise PeerFailed(f"pyinfra: expected 'Grand total {n} {n} -': {(run.stderr or run.stdout).strip()[-300:]}")


CHECKS = {
    "parallel-ssh": expect_ok_count,
    "asyncssh": expect_ok_count,
    "ansible": expect_ansible_hosts,
    "pdsh": expect_quiet_stderr,
    "clush": expect_quiet_stderr,
    "pyinfra": expect_pyinfra_hosts,
}


def merged_env(base, extra):
    """The bench's child environment (loopback guard on PYTHONPATH) plus a peer's own variables."""
    env = dict(base)
    for key, value in extra.items():
        if key == "PYTHONPATH":
            env[key] = os.pathsep.join([env[key], str(value)] if env.get(key) else [str(value)])
        else:
            env[key] = str(value)
    return env
