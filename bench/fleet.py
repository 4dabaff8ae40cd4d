"""The bench's throwaway fleet: the test suite's `Testbed`, sized once for the whole run.

User creation is the slow part of a testbed (one ``useradd`` per host), so
the largest fleet any figure needs is created once and the figures take
subsets of it. Everything here is the harness the tests use (`harness.testbed`,
`harness.release_server`, `harness.standin`), imported, never copied.
"""

import json
import shutil
from pathlib import Path

from harness.standin import standin_archive
from harness.testbed import Testbed

#: What the bench publishes on its fake GitHub, and the version it installs.
RELEASE_REPO = "bench/picoclaw"
VERSION = "0.1.0"
ASSET = "picoclaw_Linux_x86_64.tar.gz"
#: A dummy key for deploy's ``.env``: deploy refuses to run without one.
API_KEY_ENV = "ANTHROPIC_API_KEY"
DUMMY_KEY = "bench-dummy-key-not-a-secret"
#: The fleet's defaults.timeout (seconds): generous, only there to end a hang.
TIMEOUT_S = 120


class BenchFleet:
    """A running testbed with `size` sim hosts, configs over subsets, and a fake release server."""

    def __init__(self, size, workdir):
        self.size = size
        self.workdir = Path(workdir)
        self.testbed = Testbed(record_commands=False)
        self.release_server = None
        self.hosts = []

    def start(self):
        """Start sshd, create the users, and publish the stand-in release."""
        from harness.release_server import ReleaseServer

        self.testbed.start()
        self.hosts = self.testbed.add_hosts(self.size, prefix="b")
        self.known_hosts = self.workdir / "known_hosts"
        self.known_hosts.write_text(self.testbed.host_key_line() + "\n")
        self.release_server = ReleaseServer().start()
        self.release_server.publish(RELEASE_REPO, f"v{VERSION}", {ASSET: standin_archive(VERSION)})
        return self

    def stop(self):
        """Tear everything down; safe to call twice and after a failed start."""
        if self.release_server is not None:
            self.release_server.stop()
            self.release_server = None
        self.testbed.stop()

    @property
    def client_key(self):
        return self.testbed.client_key

    def config(self, name, hosts, parallel):
        """Write a fleet config over `hosts` (known host key, our release server); its path.
        `parallel` None leaves ``defaults.parallel`` out: the product's own default applies."""
        path = self.workdir / f"{name}.json"
        data = self.testbed.fleet_config(
            hosts, known_hosts=str(self.known_hosts), parallel=parallel, connect_timeout=30, timeout=TIMEOUT_S,
            release_repo=RELEASE_REPO, github_api=self.release_server.url,
        )
        if parallel is None:
            del data["defaults"]["parallel"]
        path.write_text(json.dumps(data, indent=2) + "\n")
        return path

    def install_standin(self, hosts):
        """Put the stand-in PicoClaw on `hosts` directly (no SSH), as a previous deploy leaves it:
        with its version note, so ``status`` reads the version as on a deployed fleet instead of
        starting the (Python) stand-in for it on every probe."""
        for host in hosts:
            self.testbed.install_standin(host, VERSION, note=True)

    def wipe(self, hosts):
        """Remove what a deploy leaves (binary, ~/.picoclaw), so the next deploy is a first one."""
        for host in hosts:
            (host.home / ".local" / "bin" / "picoclaw").unlink(missing_ok=True)
            shutil.rmtree(host.home / ".picoclaw", ignore_errors=True)
