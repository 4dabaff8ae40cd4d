"""Putting PicoClaw on one host: the binary, onboarding, its model and key, and the seed's ``.env``.

A run is planned once (`deploy_plan`: API key read, release resolved), then
applied to each host (`deploy_host`, which ``fab deploy`` fans out and
dispatch calls for a host that lacks PicoClaw). Each step is idempotent: a host that already has this
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
from dataclasses import asdict, dataclass, field

from . import release, remote_files
from ..core.config import model_choice
from ..ssh.deadlines import deadline, step_seconds
from ..core.errors import UsageError
from .facts import parse_version, probe_host
from .paths import BIN_DIR, BINARY_PATH, CONFIG_FILE, ENV_FILE, VERSION_CACHE, VERSION_CACHE_BINARY, bounded
from .provisioning import ProvisioningError, private_dir, provision_model
from .remote_files import RemoteFileError
from ..core.report import HostReport
from ..core.status import Status

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


@dataclass
class InstallOutcome:
    """What `deploy_host` found and did on one host; a field left None was not reached.

    `binary` is ``installed``, ``upgraded``, ``downgraded``, ``reinstalled``
    or ``unchanged``; `env` ``written`` or ``unchanged``; `onboard` ``ran``
    or ``skipped``; `model` ``configured`` or ``unchanged`` (for
    `model_name`); `uploaded_bytes` everything written to this host.
    """

    arch: str
    arch_mismatch: str | None = None
    binary: str | None = None
    version: str | None = None
    previous_version: str | None = None
    env: str | None = None
    onboard: str | None = None
    model_name: str | None = None
    model: str | None = None
    restrict_to_workspace: bool | None = None
    uploaded_bytes: int | None = None

    def to_dict(self):
        """The host's JSON fields: what was reached."""
        return {key: value for key, value in asdict(self).items() if value is not None}


def deploy_host(cxn, entry, plan, facts=None):
    """Install PicoClaw on one host per `plan`; a `HostReport` whose details are an `InstallOutcome`.

    Contract for the verbs (``fab deploy``, dispatch's auto-deploy and
    --ephemeral): pass the connection and `HostEntry` that `fanout.fan_out`
    hands to its work function, a plan from `deploy_plan` (build it once per
    run), and the host's `facts.HostFacts` if already probed (else this
    probes). Status ``ok``, or a failure (``unsupported-arch``, an
    `AssetProblem`'s status, ``failed``) with a one-line message. A dropped
    connection propagates as an exception for `fan_out` to classify
    (``unreachable``). The previous binary stays in place on any failure.
    """
    started = time.monotonic()
    facts = facts or probe_host(cxn)
    mismatch = facts.arch_mismatch(entry)
    outcome = InstallOutcome(facts.arch or facts.machine, f"{mismatch}; using {facts.arch}" if mismatch else None)

    def report(status, message=""):
        return HostReport(entry.name, entry.address, status, time.monotonic() - started, message, outcome)

    if facts.arch is None:
        return report(Status.UNSUPPORTED_ARCH, f"uname -m says {facts.machine or 'nothing'}: no PicoClaw build for it")
    sent = ByteCounter()

    def count(n):
        sent.add(n)
        plan.uploaded.add(n)

    try:
        binary = plan.binaries.for_arch(facts.arch)
        outcome.binary, outcome.version, outcome.previous_version = install_binary(cxn, binary, facts, plan, count)
        private_dir(cxn)  # once, for .env, the version note and PicoClaw's config and key files alike
        if outcome.binary != "unchanged" or not facts.version_noted:  # the probe found the note still true
            record_version(cxn, outcome.version, count)
        outcome.env = "written" if write_env(cxn, plan, count) else "unchanged"
        outcome.onboard = onboard(cxn, plan.timeout)
        choice = plan.model_for(entry)
        outcome.model_name = choice.name
        outcome.model = provision_model(cxn, choice, plan.key, count)
        outcome.restrict_to_workspace = choice.restrict_to_workspace
    except release.AssetProblem as problem:
        return report(problem.status, str(problem))
    except (RemoteFileError, DeployError, ProvisioningError) as exc:
        return report(Status.FAILED, str(exc))
    finally:
        outcome.uploaded_bytes = sent.total
    return report(Status.OK)


def install_binary(cxn, binary, facts, plan, on_bytes=None):
    """Put `binary` at ~/.local/bin/picoclaw unless it is already there: (what it did, version, previous version).

    The upload goes to a temporary name beside the target, is checked by
    sha256 and by running its ``version`` on the host, and only then renamed
    over the old binary: an interrupted or wrong-arch upload never replaces a
    working PicoClaw.
    """
    current = remote_files.sha256(cxn, BINARY_PATH)
    if current == binary.sha256 and not plan.force:
        return "unchanged", facts.version, None
    remote_files.mkdir(cxn, BIN_DIR, 0o755)
    temp = remote_files.upload_temp(cxn, BINARY_PATH, binary.data, 0o755, on_bytes)
    try:
        version = binary_version(cxn, temp)
        remote_files.commit(cxn, temp, BINARY_PATH)
    except BaseException:
        remote_files.discard(cxn, temp)
        raise
    previous = facts.version if current is not None else None
    return install_outcome(current, binary.sha256, facts.version, version), version, previous


def record_version(cxn, version, on_bytes=None):
    """Leave the status probe a note of the installed binary's `version`, and a hard link to that binary.

    The probe trusts the note only while ~/.local/bin/picoclaw is the linked
    file (``test -ef``: same inode, so a binary renamed or unpacked over it
    by anyone else is run for its version again) and not newer than the note
    (``test -nt``: one rewritten in place). `deploy_host` calls this when it
    replaced the binary or its probe did not trust the note: a re-deploy of
    the same release writes nothing.
    """
    if not version or version == "unknown":
        return
    remote_files.hard_link(cxn, BINARY_PATH, VERSION_CACHE_BINARY)
    remote_files.write(cxn, VERSION_CACHE, f"{version}\n".encode(), 0o600, on_bytes)


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
    command = f"{bounded(quoted + ' version', VERSION_TIMEOUT)} </dev/null 2>&1"
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
