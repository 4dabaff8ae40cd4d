"""The words a host or a task can end with, in one place.

Every report and every ``--json`` object carries one of these as its
``status``. They are `str` values, so JSON and comparisons with text keep
working, and the groups below say what a status means to the code that
acts on it (retry it, drop the host, deploy first...).
"""

from enum import Enum


class Status(str, Enum):
    """How a host (a verb's work on it) or a task (a PicoClaw run) ended."""

    OK = "ok"
    # the host could not be talked to: connection failures (`ssh.connections.classify_failure`)
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth-failed"
    HOSTKEY_REJECTED = "hostkey-rejected"
    # a PicoClaw run (`host.agent.agent_status`)
    FAILED = "failed"
    TIMEOUT = "timeout"
    LOST = "lost"
    NOT_INSTALLED = "not-installed"
    # a run that was stopped (Ctrl-C, SIGTERM, SIGHUP) or never reached the host
    INTERRUPTED = "interrupted"
    # a detached task (``--detach``) that `fab collect` has not brought in yet
    RUNNING = "running"
    NOT_RUN = "not-run"
    UNUSED = "unused"
    # deploy: why a host's binary cannot be had (`host.release.AssetProblem`)
    UNSUPPORTED_ARCH = "unsupported-arch"
    NO_ASSET = "no-asset"
    CHECKSUM_MISMATCH = "checksum-mismatch"
    UNVERIFIED = "unverified"
    DOWNLOAD_FAILED = "download-failed"
    BAD_ASSET = "bad-asset"

    def __str__(self):
        return self.value


#: The host was never talked to: nothing ran there.
CONNECTION_FAILURES = frozenset({Status.UNREACHABLE, Status.AUTH_FAILED, Status.HOSTKEY_REJECTED})
#: A task that ended so may run again under ``--retries`` (lost only with ``--retry-lost``: it may have had effects).
RETRYABLE = frozenset({Status.FAILED, Status.TIMEOUT})
#: Why a host's release asset cannot be installed.
ASSET_PROBLEMS = frozenset({Status.NO_ASSET, Status.CHECKSUM_MISMATCH, Status.UNVERIFIED, Status.DOWNLOAD_FAILED,
                            Status.BAD_ASSET})
