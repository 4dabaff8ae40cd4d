"""picoclaw-fleet: Fabric tasks that run a fleet of PicoClaw workers over SSH.

Each task is thin: parse options, call one function, render the result.
Errors the user can cause exit 2 with one line; otherwise the exit code is 0
when every selected host succeeded and 1 when any did not.

Heavy modules (paramiko-backed connections, jsonschema, requests) are
imported inside the tasks so that ``fab --list`` stays fast.
"""

import sys
from contextlib import contextmanager

from invoke import Exit, task

COMMON_HELP = {
    "config": "Fleet config file (default: $PICOCLAW_FLEET_CONFIG or ~/.openclaw/workspace/config/picoclaw-fleet.json)",
    "hosts": "Hosts to act on: names, globs (pi-*), @tag or user@host[:port], comma-separated (default: all)",
    "parallel": "At most this many hosts at once (default: the config's defaults.parallel)",
    "json": "Print one JSON object on stdout instead of human output",
}


@contextmanager
def usage_errors():
    """Turn a `UsageError` into one line on stderr and exit code 2."""
    from .errors import UsageError

    try:
        yield
    except UsageError as exc:
        raise Exit(f"picoclaw-fleet: {exc}", code=2) from None


def load_fleet(config, hosts):
    """The validated config and the hosts `hosts` selects from it."""
    from .config import load_for_targets, select_hosts

    fleet = load_for_targets(config, hosts)
    return fleet, select_hosts(fleet, hosts)


def finish(report, as_json, render):
    """Print `report` as JSON or through `render`, then exit 0 or 1 from its hosts."""
    from .report import emit

    emit(report.to_json() if as_json else render(report))
    if report.exit_code:
        raise Exit(code=report.exit_code)


def warn(message):
    """A line for the person at the terminal; never on stdout, which --json owns."""
    print(f"picoclaw-fleet: {message}", file=sys.stderr, flush=True)


def warn_if_insecure(fleet):
    """Say so when host key checking is switched off."""
    if fleet.defaults.host_key_policy == "off":
        warn("host_key_policy is 'off': host keys are not checked (insecure)")


@task(help=COMMON_HELP)
def status(c, hosts=None, config=None, parallel=None, json=False):
    """Report each host: reachable, arch, PicoClaw version, load, .env, latency."""
    with usage_errors():
        fleet, entries = load_fleet(config, hosts)
        from .facts import fleet_status, render_status

        warn_if_insecure(fleet)
        report = fleet_status(fleet, entries, parallel and int(parallel), c.config)
    finish(report, json, render_status)


@task(
    iterable=["host"],
    help={
        "config": COMMON_HELP["config"],
        "force": "Replace an existing config (with the template, or with only the hosts given)",
        "from-ssh-config": "Add one host per concrete Host alias of ~/.ssh/config (or of fab -S FILE)",
        "host": "Add a host: [NAME=]user@addr[:port]; repeatable",
    },
)
def init(c, config=None, force=False, from_ssh_config=False, host=None):
    """Write the template config, or add hosts to the config (validated before it is saved)."""
    with usage_errors():
        from .connections import fabric_config
        from .init_config import init_fleet_config
        from .report import emit

        ssh_source = fabric_config(c.config) if from_ssh_config else None
        emit(init_fleet_config(config, force, host or (), ssh_source, warn))


def parallel_option(value):
    """``--parallel`` as a positive int (None when not given); `UsageError` otherwise."""
    from .errors import UsageError

    if value is None:
        return None
    if not str(value).isdigit() or int(value) < 1:
        raise UsageError(f"--parallel {value!r}: expected a whole number of hosts, 1 or more")
    return int(value)


@task(
    help={
        **COMMON_HELP,
        "version": "Install this release tag (e.g. v0.2.0) instead of the latest release",
        "from-file": "Install this local binary or .tar.gz holding 'picoclaw' instead (no network needed)",
        "force": "Upload and install even where the same binary is already installed",
    }
)
def deploy(c, hosts=None, config=None, parallel=None, json=False, version=None, from_file=None, force=False):
    """Install PicoClaw (binary, ~/.picoclaw/.env with the API key, onboard) on the hosts."""
    with usage_errors():
        fleet, entries = load_fleet(config, hosts)
        from .deploy import deploy_fleet, render_deploy

        warn_if_insecure(fleet)
        report = deploy_fleet(fleet, entries, version, from_file, force, parallel_option(parallel), c.config)
    finish(report, json, render_deploy)


@task(
    help={
        **COMMON_HELP,
        "purge": "Also remove ~/.picoclaw entirely (config, workspace, sessions)",
        "yes": "Confirm a teardown of every host without asking (required when stdin is not a terminal)",
    }
)
def teardown(c, hosts=None, config=None, parallel=None, json=False, purge=False, yes=False):
    """Remove PicoClaw (~/.local/bin/picoclaw and ~/.picoclaw/.env) from the hosts."""
    with usage_errors():
        fleet, entries = load_fleet(config, hosts)
        from .teardown import confirm_teardown, render_teardown, teardown_fleet

        warn_if_insecure(fleet)
        confirm_teardown(fleet, entries, hosts, yes)
        report = teardown_fleet(fleet, entries, purge, parallel_option(parallel), c.config)
    finish(report, json, render_teardown)
