"""Where work goes: the least loaded host first, the one ranking dispatch and batch share.

"Least loaded" is the 1-minute load per CPU, plus (for batch) the tasks we
have started there since the load was read. A host whose load or CPU count
is unknown ranks after every host whose load is known; ties go to config
order. Nothing here talks to a host: it ranks what the probe found
(`host.facts.HostFacts`, or the numbers taken from it).
"""

from dataclasses import dataclass


def load_per_cpu(load1, ncpu, running=0):
    """(`load1` + `running`) / `ncpu`, or None when the load or the CPU count is unknown."""
    return None if load1 is None or not ncpu else (load1 + running) / ncpu


def load_rank(load1, ncpu, order, running=0):
    """Sort key, lowest first: known loads before unknown, then the load, then config order."""
    load = load_per_cpu(load1, ncpu, running)
    return (load is None, round(load, 6) if load is not None else 0.0, order)


@dataclass(frozen=True)
class Selection:
    """The host a single task goes to, and why (shown on stderr, ``selected`` in JSON)."""

    entry: object
    reason: str
    installed: bool | None = None

    def to_json(self):
        """The ``selected`` field of ``--json``."""
        return {"host": self.entry.name, "reason": self.reason}


def choose_worker(candidates, facts):
    """The seed's policy: the host a single task runs on, or None when nothing is reachable.

    `facts[i]` is candidate i's `HostFacts`, None when it could not be
    probed. Among reachable hosts with PicoClaw, the least loaded wins; with
    no PicoClaw anywhere reachable, the same rule picks the host to deploy to.
    """
    reachable = [(entry, fact) for entry, fact in zip(candidates, facts) if fact is not None]
    if not reachable:
        return None
    installed = [(entry, fact) for entry, fact in reachable if fact.installed]
    pool = installed or reachable
    ranks = [load_rank(fact.load1, fact.ncpu, order) for order, (_, fact) in enumerate(pool)]
    best = min(range(len(pool)), key=ranks.__getitem__)
    entry, fact = pool[best]
    return Selection(entry, selection_reason(fact, ranks[best], ranks, bool(installed)), bool(installed))


def selection_reason(fact, rank, ranks, installed):
    """Why this host, in one line: ``the least loaded (0.10 load/CPU) of 3 reachable hosts with PicoClaw``."""
    load = load_per_cpu(fact.load1, fact.ncpu)
    if load is None:
        how = "the first in config order (load unknown)"
    else:
        tied = sum(1 for other in ranks if other[:2] == rank[:2])
        how = f"the least loaded ({load:.2f} load/CPU" + (
            f", tied with {tied - 1} more, first in config order)" if tied > 1 else ")")
    hosts = f"{len(ranks)} reachable host{'s' if len(ranks) != 1 else ''}"
    if installed:
        return f"{how} of {hosts} with PicoClaw"
    return f"no reachable host has PicoClaw: deploying to {how} of {hosts}"
