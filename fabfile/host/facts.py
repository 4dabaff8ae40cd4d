"""Reading the fleet: what each host is and has, without changing anything.

One SSH command per host gathers every fact (`PROBE_COMMAND`), so ``status``
over a large fleet costs one round of commands, and the same probe serves
host selection for dispatch and batch.
"""

import json
import posixpath
import re
import shlex
import time
from dataclasses import dataclass

import yaml

from ..ssh.deadlines import deadline, step_seconds
from ..ssh.runner import command_output
from .paths import (BINARY_PATH, CONFIG_FILE, ENV_FILE, PICOCLAW_DIR, SECURITY_FILE, VERSION_CACHE,
                    VERSION_CACHE_BINARY, bounded)


#: ``uname -m`` -> the arch names of PicoClaw's Linux release archives (Go's,
#: but ``amd64`` for x86_64). 32-bit MIPS is decided by byte order (`normalize_arch`).
ARCH_NAMES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv8l": "armv7",
    "armv7l": "armv7",
    "armv7": "armv7",
    "armv6l": "armv6",
    "armv6": "armv6",
    "riscv64": "riscv64",
    "loongarch64": "loong64",
    "loong64": "loong64",
    "mipsel": "mipsle",
    "mipsle": "mipsle",
    "s390x": "s390x",
}

#: Bounds what the probe copies of PicoClaw's config files.
CONFIG_BYTES = 262144

#: A POSIX sh loop, the shell's own builtins only, that keeps the keys of
#: the YAML on its stdin and masks every value as ``x`` (empty ``[]``,
#: ``{}``, ``""``, ``''`` stay as they are), dropping comments, blank lines
#: and any line it does not read as a key or a list item: the probe learns
#: whether a model has an API key without the key ever leaving the host,
#: and without starting sed. A line it prints is a prefix of the line that
#: ends at the key's colon (plus `` x`` or the empty value), the indentation
#: and ``- x`` for a list item, or an item's bare ``-`` unchanged, so no
#: value is ever printed. The key is a quoted one (``"name:0"``) or the text
#: before the first colon followed by a blank or the line's end, without a
#: ``#`` nor a colon at its end; a key that is neither is dropped. It stops
#: after `CONFIG_BYTES` of input: a huge file is not read to its end.
SECURITY_MASK = (
    "n=0; while IFS= read -r l || [ -n \"$l\" ]; do "
    f"n=$((n + ${{#l}} + 1)); [ $n -le {CONFIG_BYTES} ] || break; "
    'i=${l%%[![:space:]]*}; r=${l#"$i"}; '
    "case $r in ''|'#'*) continue;; "
    "-|-[[:space:]]*) case ${r#-} in *[![:space:]]*) printf '%s- x\\n' \"$i\";; *) printf '%s\\n' \"$l\";; esac; "
    "continue;; esac; "
    "case $r in "
    # a quoted key: from its quote ($q) to the same quote again, then blanks and the colon
    "[\\\"\\']*) t=${r#?}; q=${r%\"$t\"}; case $t in *\"$q\"*) t=${t#*\"$q\"};; *) continue;; esac; "
    't=${t#"${t%%[![:space:]]*}"}; case $t in :*) t=${t#:};; *) continue;; esac;; '
    '*:[[:space:]]*|*:) k=${r%%:[[:space:]]*}; [ "$k" != "$r" ] || k=${r%:}; '
    "case $k in ''|*'#'*|*:) continue;; esac; t=${r#\"$k\"}; t=${t#:};; "
    "*) continue;; esac; "
    'p=${l%"$t"}; v=${t#"${t%%[![:space:]]*}"}; '
    "case $v in ''|'#'*) printf '%s\\n' \"$p\"; continue;; esac; "
    '[ "$v" != "$t" ] || continue; '
    "case $v in '[]'*|'{}'*|'\"\"'*|\"''\"*) e=${v#??}; "
    "case ${e#\"${e%%[![:space:]]*}\"} in ''|'#'*) printf '%s %s\\n' \"$p\" \"${v%\"$e\"}\"; continue;; esac;; esac; "
    "printf '%s x\\n' \"$p\"; done"
)

#: How long ``picoclaw version`` may take on the host (the probe's own deadline allows for it).
PROBE_VERSION_S = 10
#: ``"$bin" version`` under the host's ``timeout``: a broken binary cannot hang the probe.
_VERSION_RUN = bounded('"$bin" version', PROBE_VERSION_S)
#: config.json's and .security.yml's names in ~/.picoclaw, where the probe reads them.
CONFIG_NAME, SECURITY_NAME = (posixpath.relpath(path, PICOCLAW_DIR) for path in (CONFIG_FILE, SECURITY_FILE))
_CONFIG, _SECURITY = shlex.quote(CONFIG_NAME), shlex.quote(SECURITY_NAME)
#: Prints the ``key=value`` lines, then PicoClaw's config.json and its
#: .security.yml with every value masked (`SECURITY_MASK`), each after a
#: marker line. It costs the host little, one short-lived process where
#: it has a config.json (``head``: .security.yml is masked by the shell
#: itself), none without: the machine is read from
#: /proc/sys/kernel/arch (Linux 6.1+; ``uname -m`` on older kernels), the
#: load and the CPUs online from /proc and /sys, all by the shell itself,
#: and the version from the note deploy leaves (`paths.VERSION_CACHE`) while
#: the binary is the file deploy installed (its hard link, same inode: a
#: binary renamed or unpacked over it is new) and not newer than the note
#: (one rewritten in place). Otherwise ``picoclaw version`` runs, with
#: ``NO_COLOR`` and without ``TZ`` (no colour codes, no time-zone lines),
#: cut by the shell after its ``picoclaw `` (the banner never holds the
#: word) and bounded by ``timeout`` when the host has it, so a broken binary
#: cannot hang status. MIPS hosts also report their byte order, from
#: /bin/sh's ELF header. .security.yml is sent only with a config.json: it
#: matters only for the model that one selects. POSIX sh only (dash, bash,
#: busybox sh are all login shells somewhere). Its stderr goes to /dev/null:
#: only its stdout is read.
PROBE_COMMAND = (
    # nothing on stderr: only stdout is read (`runner.command_output`)
    "exec 2>/dev/null; "
    # the kernel's machine name, as `uname -m` prints it without a personality (linux32) override
    '{ read -r m < /proc/sys/kernel/arch; } 2>/dev/null && [ -n "$m" ] || m=$(uname -m); echo "arch=$m"; '
    'case $m in mips*) echo "endian=$(od -An -tx1 -j5 -N1 /bin/sh 2>/dev/null)";; esac; '
    '{ read -r l1 l5 l15 _ < /proc/loadavg && echo "loadavg=$l1 $l5 $l15"; } 2>/dev/null; '
    # "0-3,6" -> 5, by shell arithmetic; getconf only where /sys cannot be read
    'n=; { read -r c < /sys/devices/system/cpu/online; } 2>/dev/null && { n=0; IFS=,; for r in $c; do '
    'case $r in *-*) n=$((n + ${r#*-} - ${r%-*} + 1));; *) n=$((n + 1));; esac; done; unset IFS; }; '
    '[ -n "$n" ] || n=$(getconf _NPROCESSORS_ONLN 2>/dev/null); echo "ncpu=$n"; '
    f'bin="$HOME/{BINARY_PATH}"; note="$HOME/{VERSION_CACHE}"; '
    'if [ ! -x "$bin" ]; then echo version_rc=127; '
    f'elif [ "$bin" -ef "$HOME/{VERSION_CACHE_BINARY}" ] && [ ! "$bin" -nt "$note" ] && read -r v < "$note"; then '
    "echo version_rc=0; echo version_from=note; printf 'version=%s\\n' \"$v\"; "
    f'else v=$(unset TZ; export NO_COLOR=1; {_VERSION_RUN} 2>&1 </dev/null); '
    'echo "version_rc=$?"; v=${v#*"picoclaw "}; '
    "nl='\n'; printf 'version=%s\\n' \"${v%%\"$nl\"*}\"; fi; "
    f'if [ -f "$HOME/{ENV_FILE}" ]; then echo env=yes; else echo env=no; fi; '
    f'if cd "$HOME/{PICOCLAW_DIR}" >/dev/null 2>&1 && [ -f {_CONFIG} ]; then echo "--- config.json"; '
    f'head -c {CONFIG_BYTES} {_CONFIG}; '
    # the blank line and marker head would print between two files; a marker line inside config.json
    # is harmless: probe_sections splits at the last one, and the mask never prints one
    f"if [ -f {_SECURITY} ]; then printf '\\n--- security\\n'; {{ {SECURITY_MASK}; }} < {_SECURITY}; fi; fi"
)

VERSION_PATTERN = re.compile(r"v?(\d+\.\d+(?:\.\d+)?(?:[-+][0-9A-Za-z.+-]*)?)")


@dataclass
class HostFacts:
    """What the probe learned about one host."""

    arch: str | None
    machine: str
    version: str | None
    load1: float | None
    ncpu: int | None
    env_present: bool
    latency_ms: float | None = None
    worker: "WorkerConfig | None" = None
    #: The version came from deploy's note, still true of the binary (`paths.VERSION_CACHE`).
    version_noted: bool = False

    @property
    def installed(self):
        """True when a runnable PicoClaw answered ``version``."""
        return self.version is not None

    def arch_mismatch(self, entry):
        """What the config's ``arch`` for `entry` gets wrong about this host, or None when nothing."""
        if entry.arch and self.arch and entry.arch != self.arch:
            return f"config says {entry.arch}, host reports {self.machine} ({self.arch})"
        return None


@dataclass(frozen=True)
class WorkerConfig:
    """What a host's PicoClaw config says, as far as the fleet cares (never a key).

    `model` is ``agents.defaults.model_name`` (None when unset or empty);
    `api_key` whether .security.yml (or the model_list entry) holds a key for
    it, None when that cannot be told; `restrict_to_workspace` PicoClaw's
    sandbox switch (its default: on); `problem` says why the config could
    not be read, if it could not.
    """

    model: str | None = None
    api_key: bool | None = None
    restrict_to_workspace: bool = True
    problem: str | None = None


def normalize_arch(machine, endian=""):
    """Map ``uname -m`` to a PicoClaw build's arch name, or None when there is none.

    ``mips`` names both byte orders; only little-endian (``mipsle``) has a
    build, told by the ELF header byte the probe reads (``01``).
    """
    machine = machine.strip().lower()
    if machine == "mips":
        return "mipsle" if endian.strip() == "01" else None
    return ARCH_NAMES.get(machine)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def parse_version(text):
    """The version in ``picoclaw version`` output, e.g. ``0.2.9``; None if absent.

    Since v0.2.1 the output starts with an ASCII-art banner (coloured unless
    NO_COLOR) and, with TZ set, time-zone lines; the version is on the line
    that names ``picoclaw`` (``🦞 picoclaw 0.2.9 (git: abc12345)``), else the
    first version-like text anywhere (older plain formats).
    """
    text = ANSI_ESCAPE.sub("", text or "")
    lines = [line for line in text.splitlines() if "picoclaw" in line.lower()] + [text]
    for line in lines:
        match = VERSION_PATTERN.search(line.lower().split("picoclaw", 1)[-1])
        if match:
            return match.group(1)
    return None


def parse_probe(stdout):
    """`HostFacts` from the probe's ``key=value`` lines and the config sections after them."""
    head, config_text, security_text = probe_sections(stdout)
    values = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
    load_fields = values.get("loadavg", "").split()
    installed = values.get("version_rc") == "0"
    return HostFacts(
        arch=normalize_arch(values.get("arch", ""), values.get("endian", "")),
        machine=values.get("arch", "").strip(),
        version=(parse_version(values.get("version")) or "unknown") if installed else None,
        load1=float(load_fields[0]) if load_fields and _is_number(load_fields[0]) else None,
        ncpu=int(values["ncpu"]) if values.get("ncpu", "").strip().isdigit() else None,
        env_present=values.get("env") == "yes",
        worker=worker_config(config_text, security_text),
        version_noted=installed and values.get("version_from") == "note",
    )


def probe_sections(stdout):
    """(key=value lines, config.json text or None, masked .security.yml or None)."""
    lines = stdout.split("\n")
    marks = {line: i for i, line in enumerate(lines) if line in ("--- config.json", "--- security")}
    config_at, security_at = marks.get("--- config.json"), marks.get("--- security")
    end_of_head = min(i for i in (config_at, security_at, len(lines)) if i is not None)
    config = "\n".join(lines[config_at + 1 : security_at]) if config_at is not None else None
    security = "\n".join(lines[security_at + 1 :]) if security_at is not None else None
    return "\n".join(lines[:end_of_head]), config, security


def worker_config(config_text, security_text):
    """The `WorkerConfig` from config.json and the masked .security.yml; None when there is no config."""
    if config_text is None:
        return None
    try:
        config = json.loads(config_text)
        defaults = config.get("agents", {}).get("defaults", {})
        model = defaults.get("model_name") or None
        restrict = defaults.get("restrict_to_workspace", True) is not False
    except (ValueError, AttributeError):
        return WorkerConfig(problem="~/.picoclaw/config.json is not valid JSON")
    return WorkerConfig(model, key_present(config, model, security_text), restrict)


#: PyYAML's safe loader on libyaml when it was built with it: ~8x less of our CPU per host than
#: the pure-Python one, for the same documents (a masked .security.yml is keys and ``x``).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def key_present(config, model, security_text):
    """Whether the selected model has an API key: .security.yml's entry wins, as in PicoClaw.

    PicoClaw takes a model's keys from the ``"<model_name>:0"`` (else
    ``"<model_name>"``) entry of .security.yml when there is one, even an
    empty one, and from the model_list entry's ``api_keys`` otherwise. None
    when there is no model or the files cannot be read.
    """
    if model is None:
        return None
    try:
        entries = [m for m in config.get("model_list") or [] if m.get("model_name") == model]
        security = yaml.load(security_text, Loader=SAFE_LOADER) if security_text else {}
        secured = (security or {}).get("model_list") or {}
    except (yaml.YAMLError, AttributeError):
        return None
    if not entries:
        return False
    for name in (f"{model}:0", model):
        if name in secured:
            keys = secured[name]
            return bool(keys.get("api_keys")) if isinstance(keys, dict) else None
    return bool(entries[0].get("api_keys"))


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def measure_latency(cxn):
    """One SSH round trip in milliseconds: the second of two keepalive requests that the server answers.

    The first request after authentication can wait ~40 ms: sshd's answer
    is held behind its post-login host-key packet until that is acknowledged
    (README, Performance). `connections.FleetTransport` acknowledges it at
    once on a direct connection; through a gateway our socket is not the one
    that host talks to, so the wait may remain there (not measured). It is
    no part of the round trip a user reads this as, so the first keepalive
    takes any such wait and the second is timed.
    """
    transport = cxn.client.get_transport()
    with deadline(cxn, "the SSH keepalive"):
        transport.global_request("keepalive@openssh.com", wait=True)
        started = time.monotonic()
        transport.global_request("keepalive@openssh.com", wait=True)
        return (time.monotonic() - started) * 1000



def probe_host(cxn):
    """Open the connection, run the probe, and return the host's `HostFacts`.

    Each step has a deadline (`deadlines`): a host that accepts the
    connection and then stops answering ends as `HostStalled`, not a hang.
    """
    cxn.open()
    latency = measure_latency(cxn)
    with deadline(cxn, "the status probe", step_seconds(cxn, PROBE_VERSION_S)):
        facts = parse_probe(command_output(cxn, PROBE_COMMAND))
    facts.latency_ms = latency
    return facts
