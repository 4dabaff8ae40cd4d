"""Detached runs, the parts that need no host: where each task goes, and the words for its state.

A detached task (``--detach``) is started on its host and left there; the run
returns at once and ``fab collect`` brings the answers in later. Until then
the ledger says the task is `RUNNING`. On the host, each task has a key
(`task_key`) naming its files, and runs in one of its host's ``max_tasks``
slots (`slot_name`): a slot is one queue, run in order by one process, so a
board never runs more tasks at once than its ``max_tasks``, even with no
connection open to hand them out.

Which slot gets which task is decided once, before anything starts
(`place_tasks`): evenly over the slots, the least loaded host first (the
ranking `policy.load_rank` gives dispatch and batch), a pinned task only on
its host. Nothing here talks to a host.
"""

from dataclasses import dataclass, field

from .policy import load_rank
from .status import Status

#: The ledger's word for a task started detached and not collected yet.
RUNNING = Status.RUNNING


def task_key(seq):
    """The name of a task's files on its host (``t3.sh``, ``t3.out``...): its place in the run."""
    return f"t{int(seq)}"


def slot_name(index):
    """The name of a slot's queue on its host (``s0.pid``...)."""
    return f"s{int(index)}"


@dataclass
class HostSlots:
    """A host that can take detached tasks: its config entry, load when probed, and its slots' queues."""

    entry: object
    order: int
    load1: float | None = None
    ncpu: int | None = None
    queues: list = field(default_factory=list)

    @property
    def placed(self):
        """How many tasks this host got."""
        return sum(len(queue) for queue in self.queues)


def usable_hosts(entries, facts):
    """A `HostSlots` (``max_tasks`` empty queues) for each entry whose probe found PicoClaw.

    `facts[i]` is entry i's `HostFacts`, or None when it could not be probed.
    """
    hosts = []
    for order, (entry, fact) in enumerate(zip(entries, facts)):
        if fact is not None and fact.installed:
            slots = max(1, entry.max_tasks)
            hosts.append(HostSlots(entry, order, fact.load1, fact.ncpu, [[] for _ in range(slots)]))
    return hosts


def place_tasks(tasks, hosts):
    """Put each task in a slot's queue of `hosts` (`HostSlots`); the tasks that fit nowhere.

    In input order, each task goes to the shortest queue, the least loaded
    host first (its load counting the tasks it got so far), then config
    order. A task pinned to a host (``task.host``) goes only there; one
    whose host is not among `hosts` is returned, as is every task when
    `hosts` is empty.
    """
    unplaced = []
    for task in tasks:
        candidates = [(host, index) for host in hosts if task.host in (None, host.entry.name)
                      for index in range(len(host.queues))]
        if not candidates:
            unplaced.append(task)
            continue
        host, index = min(candidates, key=lambda c: (len(c[0].queues[c[1]]),
                                                     load_rank(c[0].load1, c[0].ncpu, c[0].order, c[0].placed),
                                                     c[1]))
        host.queues[index].append(task)
    return unplaced
