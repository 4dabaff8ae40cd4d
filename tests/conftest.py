"""Shared pytest fixtures: the SSH testbed, fault helpers, the release server and the loopback guard.

Kept generic on purpose; verb-specific fixtures belong next to their tests.
What the fixtures are made of lives in harness/ (shared with bench/ and demo/).
"""

from __future__ import annotations

import time

import pytest

from fabfile.host.release import DownloadCache
from harness import faults, loopback, standin
from harness.release_server import ReleaseServer
from harness.system import Unsupported
from harness.testbed import SimHost, Testbed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """A harness fault this machine cannot make (no mount namespace, no tmpfs) skips the test, saying why."""
    try:
        return (yield)
    except Unsupported as exc:
        pytest.skip(str(exc))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except Unsupported as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session", autouse=True)
def private_ledger(tmp_path_factory):
    """Every run the tests make is recorded in a ledger of the session's own, never in the
    user's ~/.local/state: the CLIs the tests start inherit it through the environment."""
    path = tmp_path_factory.mktemp("ledger") / "runs.sqlite"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PICOCLAW_FLEET_LEDGER", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Downloads and the marks of configs that passed go to a cache of the session's own, never
    the user's ~/.cache (a test that needs a cache of its own still sets XDG_CACHE_HOME)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def private_warm_connections(tmp_path_factory, private_ledger):
    """A warm-connection process a test starts (``--persist``, a doc line) serves a directory of
    the session's own, never the user's, and is killed when the session ends. One the session
    started elsewhere (a test that lost the variable) fails the session: it would be left running."""
    runtime = tmp_path_factory.mktemp("warm") / "rt"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PICOCLAW_FLEET_RUNTIME_DIR", str(runtime))
        yield runtime
    faults.kill_processes_with_argument(str(runtime))

    def ours():  # started under this session: it inherited the session's ledger variable
        marker = f"PICOCLAW_FLEET_LEDGER={private_ledger}".encode()
        return [pid for pid in faults.processes_with_argument("fabfile.ssh.persist_daemon")
                if marker in faults.process_environment(pid)]

    deadline = time.monotonic() + 10  # SIGKILL lands at once, the exit a moment later
    while ours() and time.monotonic() < deadline:
        time.sleep(0.05)
    if ours():
        raise AssertionError(f"warm-connection processes this session left outside its directory: {ours()}")


@pytest.fixture(scope="session", autouse=True)
def loopback_guard():
    """Refuse non-loopback connects in the pytest process for the whole run,
    so a product bug cannot send traffic off-box."""
    loopback.install_loopback_guard()


@pytest.fixture
def guarded_env() -> dict:
    """os.environ copy whose Python subprocesses (e.g. the CLI) load the guard."""
    return loopback.guarded_env()


@pytest.fixture
def home_env(tmp_path, guarded_env) -> dict:
    """`guarded_env` with a private HOME and no agent, fleet-config override or
    outer make: a CLI run under it never touches the user's own files."""
    home = tmp_path / "home"
    home.mkdir()
    env = dict(guarded_env, HOME=str(home))
    for name in ("SSH_AUTH_SOCK", "PICOCLAW_FLEET_CONFIG", "MAKEFLAGS", "MAKELEVEL", "OPENCLAW_PROFILE", "OPENCLAW_HOME",
                 "OPENCLAW_WORKSPACE_DIR"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="session")
def testbed():
    """One real sshd with command recording, shared by the session."""
    bed = Testbed(record_commands=True)
    try:
        yield bed.start()
    finally:
        bed.stop()


@pytest.fixture(scope="session")
def sim_hosts(testbed) -> list[SimHost]:
    """Four healthy sim hosts (h00..h03).  Shared: tests that change a host's
    state should create their own with testbed.add_hosts()."""
    return testbed.add_hosts(4)


@pytest.fixture
def fleet_config(testbed, sim_hosts, tmp_path):
    """Factory: fleet_config(hosts=None, extra_hosts=(), **defaults) -> Path of
    a config file in tmp_path.  known_hosts is a fresh empty file per test so
    accept-new state never leaks between tests."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    written = []

    def make(hosts=None, extra_hosts=(), **defaults):
        defaults.setdefault("known_hosts", str(known_hosts))
        path = tmp_path / ("fleet.json" if not written else f"fleet-{len(written)}.json")
        written.append(path)
        return testbed.write_config(path, sim_hosts if hosts is None else hosts, extra_hosts, **defaults)

    return make


@pytest.fixture
def silent_listener():
    """A 127.0.0.1 port that accepts TCP and never sends an SSH banner."""
    with faults.SilentListener() as listener:
        yield listener


@pytest.fixture
def closed_port() -> int:
    """A 127.0.0.1 port where connecting is refused."""
    return faults.closed_port()


@pytest.fixture(scope="session")
def standin_path(tmp_path_factory):
    """A locally runnable stand-in picoclaw (version 0.1.0)."""
    return standin.build_standin(tmp_path_factory.mktemp("standin") / "picoclaw")


@pytest.fixture
def server():
    """A release server with nothing published (modules that need releases publish them, or override this)."""
    with ReleaseServer() as srv:
        yield srv


@pytest.fixture
def cache(tmp_path):
    """deploy's download cache, private to the test."""
    return DownloadCache(tmp_path / "cache")
