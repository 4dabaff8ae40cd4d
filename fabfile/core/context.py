"""What every verb is handed: the fleet, the hosts it acts on, how many at once, and where to say things."""

import sys
from dataclasses import dataclass, field, replace


def to_stderr(line):
    """A line for the person at the terminal; never on stdout, which ``--json`` owns."""
    print(f"picoclaw-fleet: {line}", file=sys.stderr, flush=True)


def quiet(line):
    """Drop a progress line: for callers with nobody at a terminal to tell."""


@dataclass(frozen=True)
class RunContext:
    """One run of a verb, before any host is contacted.

    `fleet` is the validated `config.FleetConfig`; `entries` the `HostEntry`s
    selected; `parallel` the ``--parallel`` bound (None: the config's);
    `base_config` Fabric's own config from ``fab`` (its ``-i`` key, ssh_config);
    `persist` keeps the run's SSH connections warm for that many seconds
    after it (``--persist``; None: the config's ``defaults.persist``; 0: off);
    `notify(line)` hears what happens besides the results (the chosen host,
    deploy steps), which the tasks print on stderr.
    """

    fleet: object
    entries: list
    parallel: int | None = None
    base_config: object = None
    notify: object = field(default=quiet, compare=False)
    persist: float | None = None

    @property
    def defaults(self):
        """The fleet's ``defaults`` (timeouts, parallel, host-key policy...)."""
        return self.fleet.defaults

    @property
    def bound(self):
        """How many hosts at once: ``--parallel``, else the config's ``defaults.parallel``."""
        return max(1, int(self.parallel or self.fleet.defaults.parallel))

    @property
    def persist_s(self):
        """Seconds the connections stay warm after the run: ``--persist``, else ``defaults.persist`` (0: off)."""
        chosen = self.persist if self.persist is not None else getattr(self.fleet.defaults, "persist", 0)
        return float(chosen or 0)

    def on(self, entries):
        """The same run over other `entries` (dispatch's chosen host, a subset)."""
        return replace(self, entries=list(entries))
