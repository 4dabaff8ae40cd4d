"""Putting PicoClaw on hosts: the binary, onboarding, its model and key, and the seed's ``.env``.

A run is planned once (`deploy_plan`: API key read, release resolved) and then
applied to every host in parallel (`deploy_host`), so one bad host never
stops the others. Each step is idempotent: a host that already has this
binary and this ``.env`` gets nothing uploaded, and a re-run after a failure
simply finishes the job.

The API key only ever travels inside file bytes over SFTP (.security.yml,
where PicoClaw reads it, and ``.env``): it is never on a command line (ours or
the host's), in a message, or in the report.
"""

import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, field

from . import remote_files
from .config import model_choice
from .deadlines import deadline, step_seconds
from .errors import UsageError
from .facts import BINARY_PATH, CONFIG_FILE, ENV_FILE, parse_version, probe_host
from .provisioning import ProvisioningError, private_dir, provision_model
from .remote_files import RemoteFileError
from .report import HostReport

BIN_DIR = ".local/bin"

#: How long the freshly uploaded binary may take to print its version.
VERSION_TIMEOUT = 30


class DeployError(Exception):
    """A step on one host did not work (the new binary will not run, onboard failed...)."""


class ByteCounter:
    """Bytes uploaded during one run, added to from every host's thread."""

    def __init__(self):
        self._lock = threading.Lock()
        self.total = 0

    def add(self, n):
        with self._lock:
            self.total += n


@dataclass
class DeployPlan:
    """Everything a run installs, decided once before any host is contacted.

    `binaries` gives the `release.Binary` for an arch (``for_arch``);
    `env_text` (the ``.env`` content) and `key` hold the API key, so they are
    left out of the repr.
    """

    binaries: object
    env_text: bytes = field(repr=False)
    key: str = field(default="", repr=False)
    provider: str = "anthropic"
    defaults: object = None
    force: bool = False
    timeout: float = 120
    uploaded: ByteCounter = field(default_factory=ByteCounter)

    def model_for(self, entry):
        """The host's `config.ModelChoice`; `UsageError` when none can be made (checked before connecting)."""
        return model_choice(self.defaults, entry, self.provider)


# ---- planning (local, before any host) ----------------------------------------


def key_settings(defaults, environ):
    """(provider, name of the key's variable, key) from the environment and the config.

    `UsageError` when the key's variable is unset or empty, or a name is not
    usable: checked before any host is contacted.
    """
    provider = environ.get("PROVIDER") or defaults.provider
    key_env = environ.get("API_KEY_ENV") or defaults.api_key_env
    if not re.fullmatch(r"[A-Za-z0-9_-]+", provider):
        raise UsageError(f"provider {provider!r} is not a provider name (letters, digits, _ and - only)")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key_env):
        raise UsageError(f"API key variable name {key_env!r} is not a valid environment variable name")
    key = environ.get(key_env, "")
    if not key.strip():
        raise UsageError(f"${key_env} is unset or empty: export the {provider} API key in it, then re-run")
    if any(c in key for c in "\r\n\0"):
        raise UsageError(f"${key_env} contains a line break: it cannot be a single API key")
    return provider, key_env, key


def env_file_text(provider, key_env, key):
    """The ``~/.picoclaw/.env`` bytes: the seed's contract, ``PROVIDER`` and the key's variable.

    Neither PicoClaw nor dispatch reads it (PicoClaw takes its key from
    .security.yml, and the agent's environment must not hold the key, where
    its ``exec`` tool could print it); it is kept for the user's own scripts.
    Values are shell-quoted so that ``. ~/.picoclaw/.env`` is safe.
    """
    lines = [
        "# Written by picoclaw-fleet deploy for your own scripts: PicoClaw reads its key from .security.yml.",
        f"PROVIDER={shlex.quote(provider)}",
        f"{key_env}={shlex.quote(key)}",
    ]
    return ("\n".join(lines) + "\n").encode()


def deploy_plan(fleet, version=None, from_file=None, force=False, environ=None, allow_unverified=False):
    """The run's `DeployPlan` for `fleet`: key checked, release resolved (or ``--from-file`` read).

    Raises `UsageError` (exit 2, no host contacted) for a missing key, an
    unreadable ``--from-file``, or a release GitHub cannot give us (not
    found, rate limited, unreachable). Assets are downloaded later, once per
    arch, when hosts ask for them.
    """
    from . import release

    defaults = fleet.defaults
    environ = os.environ if environ is None else environ
    provider, key_env, key = key_settings(defaults, environ)
    env_text = env_file_text(provider, key_env, key)
    if from_file and version:
        raise UsageError("--version and --from-file exclude each other: --from-file installs that file as it is")
    if from_file:
        binaries = release.FileBinaries(release.binary_from_file(from_file))
    else:
        binaries = release.release_binaries(defaults, version, environ, allow_unverified=allow_unverified)
    return DeployPlan(binaries=binaries, env_text=env_text, key=key, provider=provider, defaults=defaults,
                      force=force, timeout=defaults.timeout)


# ---- one host -------------------------------------------------------------------


def deploy_host(cxn, entry, plan, facts=None):
    """Install PicoClaw on one host per `plan`; a `HostReport` (never raises for the host's faults).

    Contract for other verbs (dispatch's auto-deploy and --ephemeral): pass
    the connection and `HostEntry` that `fanout.fan_out` hands to its
    work function, a plan from `deploy_plan` (build it once per run), and the
    host's `facts.HostFacts` if already probed (else this probes). Status is
    ``ok`` with details ``arch, binary (installed|upgraded|downgraded|
    reinstalled|unchanged), version, previous_version, env (written|
    unchanged), onboard (ran|skipped), model (configured|unchanged),
    model_name, restrict_to_workspace, uploaded_bytes`` (everything written
    to this host: binary and files); otherwise a failure
    status (``unsupported-arch``, ``no-asset``, ``checksum-mismatch``, ``unverified``,
    ``download-failed``, ``bad-asset``, ``failed``) with a one-line message.
    A dropped connection propagates as an exception for `fan_out` to classify
    (``unreachable``). The previous binary stays in place on any failure.
    """
    from .release import AssetProblem

    started = time.monotonic()
    facts = facts or probe_host(cxn)
    details = {"arch": facts.arch or facts.machine}
    if entry.arch and facts.arch and entry.arch != facts.arch:
        details["arch_mismatch"] = f"config says {entry.arch}, host reports {facts.machine} ({facts.arch}); using {facts.arch}"

    def report(status, message=""):
        return HostReport(entry.name, entry.address, status, time.monotonic() - started, message, details)

    if facts.arch is None:
        return report("unsupported-arch", f"uname -m says {facts.machine or 'nothing'}: no PicoClaw build for it")
    sent = ByteCounter()

    def count(n):
        sent.add(n)
        plan.uploaded.add(n)

    try:
        binary = plan.binaries.for_arch(facts.arch)
        details.update(install_binary(cxn, binary, facts, plan, count))
        private_dir(cxn)  # once, for .env and PicoClaw's config and key files alike
        details["env"] = "written" if write_env(cxn, plan, count) else "unchanged"
        details["onboard"] = onboard(cxn, plan.timeout)
        choice = plan.model_for(entry)
        details["model_name"] = choice.name
        details["model"] = provision_model(cxn, choice, plan.key, count)
        details["restrict_to_workspace"] = choice.restrict_to_workspace
    except AssetProblem as problem:
        return report(problem.status, str(problem))
    except (RemoteFileError, DeployError, ProvisioningError) as exc:
        return report("failed", str(exc))
    finally:
        details["uploaded_bytes"] = sent.total
    return report("ok")


def install_binary(cxn, binary, facts, plan, on_bytes=None):
    """Put `binary` at ~/.local/bin/picoclaw unless it is already there; the report details.

    The upload goes to a temporary name beside the target, is checked by
    sha256 and by running its ``version`` on the host, and only then renamed
    over the old binary: an interrupted or wrong-arch upload never replaces a
    working PicoClaw.
    """
    current = remote_files.sha256(cxn, BINARY_PATH)
    if current == binary.sha256 and not plan.force:
        return {"binary": "unchanged", "version": facts.version}
    remote_files.mkdir(cxn, BIN_DIR, 0o755)
    temp = remote_files.upload_temp(cxn, BINARY_PATH, binary.data, 0o755, on_bytes)
    try:
        version = binary_version(cxn, temp)
        remote_files.commit(cxn, temp, BINARY_PATH)
    except BaseException:
        remote_files.discard(cxn, temp)
        raise
    details = {"binary": install_outcome(current, binary.sha256, facts.version, version), "version": version}
    if current is not None:
        details["previous_version"] = facts.version
    return details


def install_outcome(current_sha, new_sha, old_version, new_version):
    """``installed``, ``upgraded``, ``downgraded`` or ``reinstalled``: what replacing did."""
    if current_sha is None:
        return "installed"
    if current_sha == new_sha:
        return "reinstalled"
    old, new = version_key(old_version), version_key(new_version)
    return "downgraded" if old and new and new < old else "upgraded"


def version_key(version):
    """``0.10.2`` -> (0, 10, 2) for ordering; None when it is not a plain version."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return tuple(int(n or 0) for n in match.groups()) if match else None


def binary_version(cxn, path):
    """Run ``<path> version`` on the host: the version it prints, or `DeployError` if it does not run."""
    quoted = shlex.quote(remote_files.absolute(cxn, path))
    command = (
        f"if command -v timeout >/dev/null 2>&1; then timeout {VERSION_TIMEOUT} {quoted} version; "
        f"else {quoted} version; fi </dev/null 2>&1"
    )
    with deadline(cxn, "running the new binary's version", step_seconds(cxn, VERSION_TIMEOUT)):
        result = cxn.run(command, hide=True, warn=True, in_stream=False)
    output = result.stdout.strip()
    if result.failed:
        last = (output.splitlines() or [f"exit {result.exited}"])[-1]
        raise DeployError(f"the new binary does not run on this host: {last}; previous binary left in place")
    return parse_version(output) or "unknown"


def write_env(cxn, plan, on_bytes=None):
    """Write ~/.picoclaw/.env (file 0600, in the 0700 directory `private_dir` made) when its content differs.

    True when written.
    """
    return remote_files.write_if_changed(cxn, ENV_FILE, plan.env_text, 0o600, on_bytes)


def onboard(cxn, timeout):
    """Run ``picoclaw onboard`` once, when ~/.picoclaw/config.json does not exist: ``ran`` or ``skipped``.

    Onboard writes PicoClaw's default config (its long ``model_list``) and
    workspace (skills, templates); `provisioning` then selects the model.
    Stdin is closed (locally and on the host): PicoClaw up to v0.2.0 asks
    "Overwrite? (y/n)" when a config exists, and must never wait on that
    prompt or overwrite a user's config.
    """
    if remote_files.exists(cxn, CONFIG_FILE):
        return "skipped"
    binary = shlex.quote(remote_files.absolute(cxn, BINARY_PATH))
    with deadline(cxn, "picoclaw onboard", step_seconds(cxn, timeout)):
        result = cxn.run(f"{binary} onboard </dev/null", hide=True, warn=True, in_stream=False, timeout=timeout)
    if result.failed:
        text = (result.stderr.strip() or result.stdout.strip() or f"exit {result.exited}").splitlines()[-1]
        raise DeployError(f"picoclaw onboard failed: {text}")
    return "ran"


# ---- the fleet ----------------------------------------------------------------------


def deploy_fleet(fleet, entries, version=None, from_file=None, force=False, parallel=None, base_config=None, environ=None,
                 allow_unverified=False):
    """The ``deploy`` verb: plan once, then `deploy_host` on every selected host in parallel."""
    from .fanout import fan_out
    from .report import FleetReport

    plan = deploy_plan(fleet, version, from_file, force, environ, allow_unverified)
    for entry in entries:
        plan.model_for(entry)  # a host with no usable model is a usage error before any host is contacted
    done = fan_out(entries, lambda cxn, entry: deploy_host(cxn, entry, plan), fleet.defaults, parallel, base_config,
                   fleet.hosts)
    return FleetReport("deploy", done.reports, {"release": plan.binaries.describe(), "uploaded_bytes": plan.uploaded.total},
                       interrupted=done.interrupted)


def render_deploy(report):
    """What people read: where the binary came from, one row a host, the summary."""
    from .report import render_table, summary_line

    source = report.extra["release"]
    origin = (
        f"from {source['from_file']} (sha256 {source['sha256'][:12]})"
        if "from_file" in source
        else f"{source['repo']} {source['tag']} (verified by {source['verification']})"
        if not source.get("verification", "").startswith(("unverified", "none"))
        else f"{source['repo']} {source['tag']} ({source['verification']})"
    )
    rows = [deploy_row(host) for host in report.hosts]
    headers = ["HOST", "ADDRESS", "STATUS", "ARCH", "BINARY", "VERSION", "MODEL", ".ENV", "ONBOARD", "NOTE"]
    uploaded = f"uploaded {human_bytes(report.extra['uploaded_bytes'])}"
    return f"PicoClaw {origin}\n" + render_table(rows, headers) + "\n" + summary_line(report) + f"; {uploaded}"


def human_bytes(n):
    """``0 B``, ``7.2 kB``, ``480.2 MB``: a size as people read it."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def deploy_row(host):
    """One host's table row; a failure shows its message in the NOTE column."""
    d = host.details
    binary = d.get("binary", "-")
    version = d.get("version") or "-"
    if d.get("previous_version") and d.get("previous_version") != version:
        version = f"{d['previous_version']} -> {version}"
    notes = [host.message] if host.message else []
    if "arch_mismatch" in d:
        notes.append(f"arch mismatch: {d['arch_mismatch']}")
    model = f"{d['model_name']} ({d['model']})" if "model" in d else "-"
    return [host.name, host.address, host.status, d.get("arch", "-"), binary, version, model, d.get("env", "-"),
            d.get("onboard", "-"), "; ".join(notes)]
