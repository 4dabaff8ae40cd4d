"""``fab persist status|stop``: the per-user process that keeps SSH connections warm (`ssh.persist`).

It only reads the process's own account of itself, or asks it to stop: it
never starts one (a run with ``persist`` does) and never contacts a host.
"""

import time

from ..core.errors import UsageError
from ..ssh.persist import DaemonUnavailable, existing_daemon, runtime_dir

ACTIONS = ("status", "stop")


def warm_status(action, environ=None):
    """What `action` (``status`` or ``stop``) found: a dict for ``--json``, ``running`` False when there is none."""
    if action not in ACTIONS:
        raise UsageError(f"fab persist {action!r}: expected one of {', '.join(ACTIONS)}")
    daemon = existing_daemon(environ)
    where = str(runtime_dir(environ))
    none = {"running": False, "directory": where, "connections": []}
    if daemon is None:
        return none
    try:
        state = daemon.request({"op": "status"})
        if action == "stop":
            daemon.request({"op": "stop"})
    except DaemonUnavailable:
        return none
    return {"running": action == "status", "stopped": action == "stop", "pid": state["pid"],
            "directory": where, "persist_s": state["persist_s"], "uptime_s": round(time.time() - state["started"], 1),
            "connections": state["connections"]}


def render_warm_status(state):
    """A few lines for the terminal: the process, then one line per kept connection."""
    if state.get("stopped"):
        kept = len(state["connections"])
        return f"warm connections: stopped (pid {state['pid']}, {kept} connection{'s' * (kept != 1)} closed)"
    if not state["running"]:
        return f"warm connections: none (no process in {state['directory']})"
    lines = [f"warm connections: pid {state['pid']}, up {state['uptime_s']:g}s, "
             f"exits after {state['persist_s']:g}s idle; {len(state['connections'])} kept"]
    for conn in sorted(state["connections"], key=lambda c: c["name"]):
        use = "in use" if conn["leased"] else f"idle {conn['idle_s']:.0f}s"
        alive = "" if conn["alive"] else ", closed"
        lines.append(f"  {conn['name']:<20} {conn['address']:<32} {use}, {conn['uses']} runs, "
                     f"{conn['handshakes']} handshake{'s' * (conn['handshakes'] != 1)}{alive}")
    return "\n".join(lines)
