"""Harness for end-to-end tests with the REAL PicoClaw (a Go binary), not the stand-in.

Two real builds live in ``<repo>/../shared/picoclaw-real`` (or ``$PICOCLAW_REAL_DIR``):
``releases/v0.0.0-cf67dd38.{1,2}/`` each with ``picoclaw_Linux_x86_64.tar.gz`` and
goreleaser's ``picoclaw_<version>_checksums.txt``. See its README.md.

SAFETY. Nothing in Python can stop a Go program from opening a socket, so the
real binary may only ever run in a network namespace whose only interface is
an up loopback. `make test` starts pytest that way::

    unshare --net sh -c 'ip link set lo up; exec .venv/bin/python -m pytest ...'

Every fixture here that leads to the binary running goes through
`require_loopback_netns` (via `real_releases`): outside such a namespace, or
without the shared directory, the tests are SKIPPED with the reason -- and
FAIL instead when ``$CI`` is set, so CI can never silently lose them. The
model provider is pointed at `FakeLLM` on 127.0.0.1 (harness/fake_llm.py).

What this module gives a test (register it with ``pytest_plugins =
["harness.real_picoclaw"]`` in the test module):

fixtures
    ``real_picoclaw_releases`` (session)  {tag: RealRelease}, after the netns and directory checks
    ``real_release_server`` (module)      a ReleaseServer publishing both builds under
                                          ``sipeed/picoclaw``; OLD_TAG (.1) is latest, NEW_TAG (.2)
                                          only by tag until a test calls ``publish_real(..., latest=True)``
    ``fake_llm`` (module)                 a started FakeLLM
    ``real_fleet_factory`` (module)       ``make(n_hosts, prefix) -> RealFleet``: fresh sim hosts,
                                          a fleet config for them and the CLI's environment

helpers
    real_releases(), require_loopback_netns(), loopback_netns_problem(), skip_or_fail(reason)
    publish_real(server, release, latest), write_real_fleet_config(...), cli_env(...)
    run_fab(args, env), run_fab_json(args, env)   (and RealFleet.fab / .fab_json)
    install_real_binary(testbed, host, release), write_picoclaw_config(testbed, host, ...)
    picoclaw paths on a host: binary_path, config_path, security_path, sessions_dir, session_files
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import json
import os
import pwd
import socket
import struct
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import testbed as tb
from .cli import FAB, REPO
from .fake_llm import FakeLLM
from .loopback import LOOPBACK, guarded_env
from .release_server import RELEASE_REPO, ReleaseServer

#: Overrides where the shared real builds are.
REAL_DIR_ENV = "PICOCLAW_REAL_DIR"
ARCHIVE_NAME = "picoclaw_Linux_x86_64.tar.gz"
OLD_TAG = "v0.0.0-cf67dd38.1"
NEW_TAG = "v0.0.0-cf67dd38.2"
TAGS = (OLD_TAG, NEW_TAG)

#: PicoClaw's default model_name for the anthropic provider, and the model id its entry carries.
MODEL_NAME = "claude-sonnet-4.6"
MODEL_ID = "claude-sonnet-4-6"
#: A recognisable fake key: searched for wherever it must not appear.
API_KEY = "sk-realpc-SECRET-7d31e0c9a5b2"

#: Only there so that a hung CLI cannot hang the suite; no test measures time.
CLI_LIMIT_S = 300

SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1

RUN_HINT = ("run pytest as `unshare --net sh -c 'ip link set lo up; exec .venv/bin/python -m pytest ...'` "
            "(as `make test` does)")


# ---- skip or fail ------------------------------------------------------------------------------


def skip_or_fail(reason: str):
    """Skip with `reason`; fail instead when $CI is set (CI must never lose these tests quietly)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (failing, not skipping, because $CI is set)", pytrace=False)
    pytest.skip(reason)


# ---- the loopback-only network namespace --------------------------------------------------------


def _interface_flags(name: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", name.encode(), 0) + b"\0" * 22
        reply = fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
    return struct.unpack("16sH", reply[:18])[1]


def loopback_netns_problem() -> str | None:
    """Why this process is NOT in a loopback-only network namespace, or None when it is.

    Loopback-only: ``lo`` is the only interface, it is up, and a TCP connect to
    a listening 127.0.0.1 port works. Processes started from here (sshd, the
    sim hosts' sessions, PicoClaw) inherit the namespace.
    """
    try:
        names = sorted(name for _, name in socket.if_nameindex())
    except OSError as exc:
        return f"cannot list network interfaces: {exc}"
    if names != ["lo"]:
        return f"network interfaces {names}: not a loopback-only network namespace"
    try:
        flags = _interface_flags("lo")
    except OSError as exc:
        return f"cannot read the flags of lo: {exc}"
    if not flags & IFF_UP:
        return "lo is down (`ip link set lo up` first)"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
            listener.bind((LOOPBACK, 0))
            listener.listen(1)
            with socket.create_connection(listener.getsockname()[:2], timeout=2):
                pass
    except OSError as exc:
        return f"a TCP connect to 127.0.0.1 fails ({exc}): lo is not usable"
    return None


def require_loopback_netns() -> None:
    """Skip (fail under $CI) unless this process is in a loopback-only network namespace."""
    problem = loopback_netns_problem()
    if problem:
        skip_or_fail(f"the real PicoClaw may only run in a loopback-only network namespace: {problem}; {RUN_HINT}")


# ---- the real builds ---------------------------------------------------------------------------


def real_dir() -> Path:
    """Where the shared real builds are: $PICOCLAW_REAL_DIR, else <repo>/../shared/picoclaw-real."""
    override = os.environ.get(REAL_DIR_ENV)
    return Path(override).expanduser() if override else REPO.parent / "shared" / "picoclaw-real"


@dataclass(frozen=True)
class RealRelease:
    """One real build: its tag (``v0.0.0-cf67dd38.1``), version and files."""

    tag: str
    directory: Path

    @property
    def version(self) -> str:
        """What ``picoclaw version`` prints and deploy reports: the tag without its ``v``."""
        return self.tag[1:]

    @property
    def archive(self) -> Path:
        return self.directory / ARCHIVE_NAME

    @property
    def checksums_name(self) -> str:
        """goreleaser's default checksum file name, as real releases publish it."""
        return f"picoclaw_{self.version}_checksums.txt"

    @property
    def checksums(self) -> Path:
        return self.directory / self.checksums_name

    def archive_bytes(self) -> bytes:
        return _read_bytes(self.archive)

    def binary_bytes(self) -> bytes:
        """The ``picoclaw`` executable inside the archive."""
        return _binary_from_archive(self.archive)


@functools.lru_cache(maxsize=None)
def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


@functools.lru_cache(maxsize=None)
def _binary_from_archive(path: Path) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(_read_bytes(path)), mode="r:gz") as tar:
        member = tar.getmember("picoclaw")
        return tar.extractfile(member).read()


def _parse_checksums(text: str) -> dict:
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


@functools.lru_cache(maxsize=None)
def _verified_releases(directory: Path) -> tuple:
    """(releases, problem): problem says what is missing; a corrupt archive fails outright."""
    releases = []
    for tag in TAGS:
        release = RealRelease(tag, directory / "releases" / tag)
        for path in (release.archive, release.checksums):
            if not path.is_file():
                return (), f"{path} is missing"
        expected = _parse_checksums(release.checksums.read_text()).get(ARCHIVE_NAME)
        actual = hashlib.sha256(release.archive_bytes()).hexdigest()
        if expected != actual:
            return (), f"CORRUPT: {release.archive} has sha256 {actual}, {release.checksums.name} says {expected}"
        releases.append(release)
    return tuple(releases), None


def real_releases() -> dict:
    """{tag: RealRelease} for OLD_TAG and NEW_TAG, checked against their checksum files.

    Skips (fails under $CI) outside a loopback-only network namespace or when
    the shared directory or a file is missing; fails when an archive does not
    match its checksum file.
    """
    require_loopback_netns()
    directory = real_dir()
    if not directory.is_dir():
        skip_or_fail(f"the real PicoClaw builds are not at {directory} (set ${REAL_DIR_ENV} to their directory)")
    releases, problem = _verified_releases(directory.resolve())
    if problem and problem.startswith("CORRUPT"):
        pytest.fail(problem, pytrace=False)
    if problem:
        skip_or_fail(f"the real PicoClaw builds are incomplete: {problem}")
    return {release.tag: release for release in releases}


def publish_real(server: ReleaseServer, release: RealRelease, latest: bool = True):
    """Publish `release` on `server` as GitHub would: its real archive and checksum file."""
    return server.publish(RELEASE_REPO, release.tag, {ARCHIVE_NAME: release.archive_bytes()},
                          checksums=release.checksums.read_bytes(), checksums_name=release.checksums_name,
                          latest=latest)


# ---- the CLI -------------------------------------------------------------------------------------


def cli_env(home: Path, cache: Path, api_key: str = API_KEY) -> dict:
    """The CLI's environment: loopback guard, private HOME and download cache, the API key;
    no agent, fleet-config override, outer make, GitHub token or other provider settings."""
    env = guarded_env()
    for name in ("SSH_AUTH_SOCK", "PICOCLAW_FLEET_CONFIG", "MAKEFLAGS", "MAKELEVEL", "GITHUB_TOKEN", "PROVIDER",
                 "API_KEY_ENV", "OPENAI_API_KEY"):
        env.pop(name, None)
    Path(home).mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), XDG_CACHE_HOME=str(cache), ANTHROPIC_API_KEY=api_key)
    return env


def run_fab(args, env, timeout=CLI_LIMIT_S, stdin=None) -> subprocess.CompletedProcess:
    """Run the real `fab` CLI in the repository; a CompletedProcess with text output."""
    return subprocess.run([FAB, *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def run_fab_json(args, env, timeout=CLI_LIMIT_S):
    """(CompletedProcess, parsed JSON, {host name: host object}) of ``fab <args> --json``."""
    result = run_fab([*args, "--json"], env, timeout)
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {result.returncode}):\nstdout: {result.stdout!r}\n"
                             f"stderr: {result.stderr!r}") from None
    return result, data, {h["name"]: h for h in data.get("hosts", [])}


def shown(result: subprocess.CompletedProcess) -> str:
    """A CLI run's exit code and output, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"


def write_real_fleet_config(testbed: tb.Testbed, path: Path, hosts, server: ReleaseServer, fake: FakeLLM,
                            max_tasks: dict | None = None, **defaults) -> Path:
    """A fleet config for `hosts` taking releases from `server` and models from `fake`.

    `max_tasks` is ``{host name: n}``; other kwargs override defaults (a fresh
    known_hosts file next to the config unless given).
    """
    path = Path(path)
    defaults.setdefault("known_hosts", str(path.with_name(path.stem + ".known_hosts")))
    Path(defaults["known_hosts"]).touch()
    testbed.write_config(path, hosts, release_repo=RELEASE_REPO, github_api=server.url, api_base=fake.url,
                         timeout=60, **defaults)
    if max_tasks:
        data = json.loads(path.read_text())
        for host in data["hosts"]:
            if host["name"] in max_tasks:
                host["max_tasks"] = max_tasks[host["name"]]
        path.write_text(json.dumps(data, indent=2) + "\n")
    return path


@dataclass
class RealFleet:
    """Fresh sim hosts with a fleet config for the real PicoClaw, and the CLI's environment."""

    testbed: tb.Testbed
    hosts: list
    config: Path
    env: dict
    server: ReleaseServer
    fake: FakeLLM
    workdir: Path
    extra_configs: list = field(default_factory=list)
    #: For tests that share the fleet in order (e.g. {"deployed": True}).
    state: dict = field(default_factory=dict)

    def fab(self, *args, config: Path | None = None, timeout=CLI_LIMIT_S, stdin=None):
        """``fab VERB --config CONFIG ARGS`` (args[0] is the verb)."""
        verb, *rest = args
        return run_fab([verb, "--config", config or self.config, *rest], self.env, timeout, stdin)

    def fab_json(self, *args, config: Path | None = None, timeout=CLI_LIMIT_S):
        verb, *rest = args
        return run_fab_json([verb, "--config", config or self.config, *rest], self.env, timeout)

    def config_with(self, max_tasks: dict | None = None, **defaults) -> Path:
        """Another config file for the same hosts (e.g. with a host's max_tasks)."""
        path = self.workdir / f"fleet-{len(self.extra_configs) + 1}.json"
        defaults.setdefault("known_hosts", str(self.workdir / "fleet.known_hosts"))
        self.extra_configs.append(path)
        return write_real_fleet_config(self.testbed, path, self.hosts, self.server, self.fake, max_tasks, **defaults)

    def host(self, name: str) -> tb.SimHost:
        return next(h for h in self.hosts if h.name == name)


# ---- on a host -----------------------------------------------------------------------------------


def binary_path(host: tb.SimHost) -> Path:
    return host.home / ".local" / "bin" / "picoclaw"


def picoclaw_dir(host: tb.SimHost) -> Path:
    return host.home / ".picoclaw"


def config_path(host: tb.SimHost) -> Path:
    return picoclaw_dir(host) / "config.json"


def security_path(host: tb.SimHost) -> Path:
    return picoclaw_dir(host) / ".security.yml"


def sessions_dir(host: tb.SimHost) -> Path:
    return picoclaw_dir(host) / "workspace" / "sessions"


def session_files(host: tb.SimHost, pattern: str = "*") -> list[str]:
    """Names of the files in the host's PicoClaw sessions directory matching `pattern` (sorted)."""
    directory = sessions_dir(host)
    return sorted(p.name for p in directory.glob(pattern)) if directory.is_dir() else []


def read_security(host: tb.SimHost) -> dict:
    """The host's ~/.picoclaw/.security.yml, parsed."""
    import yaml  # the product's own dependency; imported here so that collecting never needs it

    return yaml.safe_load(security_path(host).read_text()) or {}


def _owner(host: tb.SimHost) -> tuple[int, int]:
    entry = pwd.getpwnam(host.user)
    return entry.pw_uid, entry.pw_gid


def _write_owned(path: Path, data: bytes, mode: int, owner: tuple[int, int]) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    os.chown(path, *owner)
    return path


def _make_owned_dir(path: Path, mode: int, owner: tuple[int, int]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, *owner)
    return path


def install_real_binary(testbed: tb.Testbed, host: tb.SimHost, release: RealRelease) -> Path:
    """Put `release`'s real binary at ~/.local/bin/picoclaw of `host`, owned by its user (no CLI involved)."""
    require_loopback_netns()
    owner = _owner(host)
    local = _make_owned_dir(host.home / ".local", 0o755, owner)
    bindir = _make_owned_dir(local / "bin", 0o755, owner)
    return _write_owned(bindir / "picoclaw", release.binary_bytes(), 0o755, owner)


def picoclaw_config(api_base: str, model_name: str = MODEL_NAME, model_id: str = MODEL_ID,
                    provider: str = "anthropic", restrict_to_workspace: bool = True) -> dict:
    """A minimal config.json (version 3) selecting one model_list entry at `api_base`."""
    return {
        "version": 3,
        "agents": {"defaults": {"model_name": model_name, "restrict_to_workspace": restrict_to_workspace}},
        "model_list": [{"model_name": model_name, "provider": provider, "model": model_id, "api_base": api_base}],
    }


def security_yml(model_name: str, api_key: str, index: int = 0) -> str:
    """A .security.yml holding `api_key` for ``<model_name>:<index>`` (JSON is valid YAML)."""
    return "model_list:\n  " + json.dumps(f"{model_name}:{index}") + ":\n    api_keys: [" + json.dumps(api_key) + "]\n"


def write_picoclaw_config(testbed: tb.Testbed, host: tb.SimHost, api_base: str, api_key: str,
                          model_name: str = MODEL_NAME, **config) -> Path:
    """Hand-write ~/.picoclaw/config.json and .security.yml (0600, dir 0700) on `host`, as its user."""
    owner = _owner(host)
    directory = _make_owned_dir(picoclaw_dir(host), 0o700, owner)
    text = json.dumps(picoclaw_config(api_base, model_name, **config), indent=2) + "\n"
    _write_owned(directory / "config.json", text.encode(), 0o600, owner)
    _write_owned(directory / ".security.yml", security_yml(model_name, api_key).encode(), 0o600, owner)
    return directory / "config.json"


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_picoclaw_releases():
    """{tag: RealRelease}; skips (fails under $CI) outside a loopback-only netns or without the builds."""
    return real_releases()


@pytest.fixture(scope="module")
def real_release_server(real_picoclaw_releases):
    """A local GitHub publishing both real builds under sipeed/picoclaw; OLD_TAG is the latest."""
    with ReleaseServer() as server:
        publish_real(server, real_picoclaw_releases[OLD_TAG], latest=True)
        publish_real(server, real_picoclaw_releases[NEW_TAG], latest=False)
        yield server


@pytest.fixture(scope="module")
def fake_llm():
    """A FakeLLM on 127.0.0.1 for the module; ``fake_llm.url`` is the api_base."""
    with FakeLLM() as fake:
        yield fake


@pytest.fixture(scope="module")
def real_fleet_factory(real_picoclaw_releases, real_release_server, fake_llm, testbed, tmp_path_factory):
    """Factory: ``make(n=2, prefix="rp", **defaults) -> RealFleet`` with `n` fresh sim hosts."""

    def make(n: int = 2, prefix: str = "rp", max_tasks: dict | None = None, **defaults) -> RealFleet:
        hosts = testbed.add_hosts(n, prefix=prefix)
        workdir = tmp_path_factory.mktemp("real-fleet")
        config = write_real_fleet_config(testbed, workdir / "fleet.json", hosts, real_release_server, fake_llm,
                                         max_tasks, **defaults)
        env = cli_env(workdir / "home", workdir / "cache")
        return RealFleet(testbed, hosts, config, env, real_release_server, fake_llm, workdir)

    return make
