"""``fab init``: write the template config, or add hosts to the config.

Only the config file on this machine changes here; no host is contacted.
Every change is validated against the schema before the file is written, and
the file is replaced in one step, so a refused change leaves the old config
exactly as it was.
"""

import json
import os
import re
import tempfile

from ..core.config import (TEMPLATE, config_path, directory_problem, os_reason, parse_config_text, parse_port,
                     parse_target, path_exists, validate_config, write_template)
from ..core.errors import UsageError

#: Defaults a new config starts with: the same provider and key variable as the template.
NEW_CONFIG_DEFAULTS = dict(TEMPLATE["defaults"])

#: ``Host`` patterns, not hosts: ``*``, ``?`` and negation never name one machine.
PATTERN_CHARS = re.compile(r"[*?!]")

#: What a host name may be (the schema's ``hosts[].name`` pattern).
HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")


def init_fleet_config(explicit=None, force=False, targets=(), fabric_config=None, warn=print):
    """What ``fab init`` does; returns the lines to show.

    With neither `targets` nor `fabric_config` it writes the template. Given a
    Fabric config (``--from-ssh-config``), the concrete aliases of the ssh
    config it loaded (``fab -S FILE`` or ~/.ssh/config) are added, then any
    ``--host`` targets.
    """
    if not targets and fabric_config is None:
        path = write_template_config(explicit, force)
        return (
            f"wrote a template config at {path}\n"
            "edit its hosts, or add yours with: fab init --host user@addr[:port]"
        )
    hosts = []
    if fabric_config is not None:
        hosts = hosts_from_ssh_config(fabric_config.base_ssh_config, fabric_config.user, warn)
        if not hosts:
            raise UsageError("the ssh config names no concrete Host alias (wildcards are skipped)")
    added = hosts_from_targets(targets)
    if targets and not added:
        raise UsageError(f"no hosts selected: --host {','.join(targets)!r} names none")
    hosts += added
    path, names = add_hosts(explicit, hosts, force)
    plural = "host" if len(names) == 1 else "hosts"
    again = f" --config {explicit}" if explicit else ""
    return f"added {len(names)} {plural} to {path}: {', '.join(names)}\nnext: fab status{again}"


def write_template_config(explicit=None, force=False):
    """Write the seed's template config; an existing file needs `force` to be replaced."""
    path = config_path(explicit)
    if path_exists(path) and not force:
        raise UsageError(f"{path} already exists: pass --force to replace it with the template")
    return write_template(path)


def add_hosts(explicit=None, new_hosts=(), force=False):
    """Append `new_hosts` (``hosts[]`` dicts) to the config and save it once it validates.

    The config is created when missing. With `force` an existing config is
    replaced by one holding only `new_hosts`. The template's example host is
    dropped: it is not the user's machine, and once real hosts sit beside it
    nothing else would stop a run from contacting it. Returns (path, names added).
    """
    if not new_hosts:
        raise UsageError("no hosts to add")
    path = config_path(explicit)
    data = parse_config_text(path) if path_exists(path) and not force else new_config()
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), list):
        raise UsageError(f"{path}: expected an object with a 'hosts' list; fix it or pass --force")
    data["hosts"] = [h for h in data["hosts"] if h not in TEMPLATE["hosts"]]
    refuse_duplicates(data["hosts"], new_hosts)
    data["hosts"].extend(new_hosts)
    validate_config(data)
    save_json(path, data)
    return path, [h["name"] for h in new_hosts]


def new_config():
    """An empty config with the template's provider and key variable."""
    return {"hosts": [], "defaults": dict(NEW_CONFIG_DEFAULTS)}


def refuse_duplicates(current, new_hosts):
    """One usage error naming every host name that is already taken or given twice."""
    taken = {h.get("name") for h in current if isinstance(h, dict) and isinstance(h.get("name"), str)}
    clashes = []
    for host in new_hosts:
        if host["name"] in taken:
            clashes.append(host["name"])
        taken.add(host["name"])
    if clashes:
        names = ", ".join(sorted(set(clashes)))
        raise UsageError(f"host name already in the config: {names} (nothing was added; name a --host with NAME=user@addr)")


def save_json(path, data):
    """Replace `path` with `data` in one rename, so a crash never leaves half a config.

    `UsageError` when the directory cannot hold it (a file where a directory
    should be, read-only...): the old config, if any, is left as it was.
    """
    problem = directory_problem(path.parent)
    if problem is not None:
        raise UsageError(f"cannot write config {path}: {problem}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot write config {path}: {os_reason(exc)}") from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write config {path}: {os_reason(exc)}") from None
        raise


def hosts_from_targets(targets):
    """``hosts[]`` dicts from ``[NAME=]user@addr[:port]`` items (each may be comma-separated).

    Without ``NAME=`` a host is named after its address, as ad-hoc targets are.
    """
    hosts = []
    for item in (part.strip() for target in targets for part in target.split(",")):
        if not item:
            continue
        name, _, target = item.rpartition("=")
        if "@" not in target:
            raise UsageError(f"bad --host {item!r}: expected [NAME=]user@addr[:port]")
        entry = parse_target(target, "--host")
        if not name and not HOST_NAME.fullmatch(entry.name):
            raise UsageError(f"bad --host {item!r}: {entry.name!r} cannot be a host name "
                             "(letters, digits, '.', '_', '-'): give one, as NAME=user@addr")
        host = {"name": name or entry.name, "host": entry.host, "user": entry.user}
        if entry.port:
            host["port"] = entry.port
        hosts.append(host)
    return hosts


def hosts_from_ssh_config(ssh_config, default_user, warn):
    """One ``hosts[]`` dict per concrete ``Host`` alias of a parsed ssh config.

    Wildcard and negated patterns are skipped. What OpenSSH would use for the
    alias (HostName, User, Port, the first IdentityFile, a one-hop ProxyJump)
    is written into the entry, so the fleet config works on its own, also for
    an agent that runs without this ssh config.
    """
    aliases = sorted((a for a in ssh_config.get_hostnames() if not PATTERN_CHARS.search(a)), key=natural_key)
    hosts = []
    for alias in aliases:
        host = ssh_host_entry(alias, ssh_config.lookup(alias), default_user, aliases, warn)
        if host is not None:
            hosts.append(host)
    return hosts


def ssh_host_entry(alias, found, default_user, aliases, warn):
    """The ``hosts[]`` dict for one alias, or None (with a warning) when it cannot be expressed."""
    host = {"name": alias, "host": found.get("hostname", alias), "user": found.get("user", default_user)}
    port_text = found.get("port", "22")
    port = parse_port(port_text)
    if port is None:
        raise UsageError(f"ssh config: Host {alias} has Port {port_text!r}, not a number from 1 to 65535")
    if port != 22:
        host["port"] = port
    if found.get("identityfile"):
        host["ssh_key"] = found["identityfile"][0]
    jump = found.get("proxyjump")
    if jump and jump.lower() != "none":
        if "," in jump or ("@" not in jump and jump not in aliases):
            warn(f"skipped {alias}: its ProxyJump {jump!r} is not one Host alias or user@host[:port]")
            return None
        host["gateway"] = jump
    return host


def natural_key(name):
    """Sort ``pi-2`` before ``pi-10``, as a person numbering boards would."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]

