"""``fab dispatch``: hand one task to PicoClaw on one host, or to many at once.

Three ways to pick where the task runs:

* ``--host NAME``: that host.
* ``--all`` / ``--hosts SPEC``: a broadcast, the same task on every selected
  host in parallel. One SSH command per host and no probe first, so a
  broadcast costs what a bare ``run`` over the fleet costs; a host without
  PicoClaw reports ``not-installed`` from that same command.
* neither: the seed's policy (`choose_worker`) picks the least loaded host
  that has PicoClaw, from one status probe of the fleet.

A single host lacking PicoClaw is deployed to first (unless ``--no-deploy``);
``--ephemeral`` deploys where needed, runs, and tears the worker down again.
The run itself -- remote command, deadline, status -- is `agent_command`'s.
"""

import threading
import time
from dataclasses import dataclass

from .agent_command import AgentOptions, AgentResult, agent_report, run_agent, stop_running_tasks, task_bytes
from .errors import UsageError
from .report import FleetReport, HostReport

#: Every host's JSON carries these, even a host the task never reached.
OUTPUT_FIELDS = AgentResult("", "", None, "not-run", "", 0.0).details()


@dataclass(frozen=True)
class Targets:
    """Where a dispatch goes: `mode` is ``named``, ``policy`` or ``broadcast``."""

    entries: list
    mode: str


@dataclass(frozen=True)
class Selection:
    """The host a single task goes to, and why (shown on stderr, ``selected`` in JSON)."""

    entry: object
    reason: str
    installed: bool | None = None

    def to_json(self):
        """The ``selected`` field of ``--json``."""
        return {"host": self.entry.name, "reason": self.reason}


def dispatch_targets(fleet, host=None, hosts=None, all_hosts=False):
    """Which hosts the flags name, and how the task goes to them; `UsageError` on a contradiction.

    A flag given with nothing in it (``--host ''``, ``--hosts ,,``) or a
    config with no hosts is `config.no_hosts_selected`, as in every verb.
    """
    from .config import no_hosts_selected, select_hosts

    if host is not None and (hosts is not None or all_hosts):
        raise UsageError("--host names one host; use --hosts or --all (not both) to broadcast")
    if hosts is not None and all_hosts:
        raise UsageError("give --all or --hosts, not both")
    if host is not None:
        entries = select_hosts(fleet, host, "--host")
        if len(entries) != 1:
            names = ", ".join(e.name for e in entries[:8]) + (", ..." if len(entries) > 8 else "")
            raise UsageError(f"--host {host!r} matches {len(entries)} hosts ({names}); use --hosts to broadcast")
        return Targets(entries, "named")
    if hosts is not None or all_hosts:
        return Targets(select_hosts(fleet, hosts), "broadcast")
    if not fleet.hosts:
        raise no_hosts_selected(fleet)
    return Targets(list(fleet.hosts), "policy")


#: As the config's ``timeout`` (fleet.schema.json) and a batch line's: at most a day.
MAX_TIMEOUT_S = 86400


def check_timeout(value):
    """``--timeout`` as positive seconds; `UsageError` otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--timeout must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise UsageError(f"--timeout must be more than 0 seconds and at most {MAX_TIMEOUT_S} (a day), not {value!r}")
    return seconds


def dispatch(fleet, targets, text, timeout_s=None, deploy=True, ephemeral=False, parallel=None,
             base_config=None, notify=None, options=AgentOptions()):
    """Run `text` as a PicoClaw task where `targets` says; the ``dispatch`` `FleetReport`.

    The task text, the timeout and (for ``--ephemeral``) the deploy plan are
    checked before any host is contacted. `notify(line)` hears what happens
    besides the answers (the chosen host, deploy and teardown steps); the
    task prints it on stderr.
    """
    if ephemeral and not deploy:
        raise UsageError("--ephemeral deploys where PicoClaw is missing; it cannot be combined with --no-deploy")
    task = task_bytes(text)
    timeout_s = check_timeout(fleet.defaults.timeout if timeout_s is None else timeout_s)
    deployer = Deployer(fleet) if ephemeral or (deploy and targets.mode != "broadcast") else None
    if ephemeral:
        deployer.plan()
    worker = Worker(task, timeout_s, deployer, ephemeral, notify or quiet, fleet.defaults.connect_timeout, options)
    if targets.mode == "broadcast":
        done = fan_out_with_output(fleet, targets.entries, worker.run, parallel, base_config)
        report = FleetReport("dispatch", done.reports, interrupted=done.interrupted)
    else:
        report = dispatch_one(fleet, targets, worker, parallel, base_config)
    if deployer is not None:
        deployer.raise_usage_error()
    return report


def quiet(line):
    """Drop a progress line: for callers with nobody at a terminal to tell."""


def dispatch_one(fleet, targets, worker, parallel, base_config):
    """The single-host dispatch: the named host, or the one the policy chooses."""
    if targets.mode == "named":
        selection = Selection(targets.entries[0], "named with --host")
    else:
        selection, refusal = select_worker(fleet, targets.entries, parallel, base_config, worker.deployer is not None)
        if selection is None:
            return refusal
        if not selection.installed:
            worker.deployer.plan()  # a usage error (no API key...) is raised here, before the deploy
        worker.notify(f"{selection.entry.name}: chosen: {selection.reason}")
    done = fan_out_with_output(fleet, [selection.entry], worker.run, parallel, base_config)
    return FleetReport("dispatch", done.reports, {"selected": selection.to_json()}, interrupted=done.interrupted)


def fan_out_with_output(fleet, entries, work, parallel, base_config):
    """`fanout.fan_out` of the task, with the output fields on every report so JSON has one shape.

    A stop (Ctrl-C, SIGTERM, SIGHUP) TERMs PicoClaw on every host still
    running it, through that host's own connection.
    """
    from .fanout import fan_out

    done = fan_out(entries, work, fleet.defaults, parallel, base_config, fleet.hosts, stop=stop_running_tasks)
    for report in done.reports:
        report.details = {**OUTPUT_FIELDS, **report.details}
    return done


# --- choosing the worker --------------------------------------------------------------------


def select_worker(fleet, candidates, parallel, base_config, deploy):
    """Probe `candidates` and choose one: (`Selection`, None), or (None, a report saying why not)."""
    from .facts import status_report
    from .fanout import fan_out

    done = fan_out(candidates, status_report, fleet.defaults, parallel, base_config, fleet.hosts)
    probes = done.reports
    if done.interrupted:
        reports = [no_worker_report(p, "stopped while choosing the host") for p in probes]
        return None, FleetReport("dispatch", reports, {"selected": None}, interrupted=True)
    selection = choose_worker(candidates, probes)
    if selection is None:
        reports = [no_worker_report(p, "no reachable host to run the task on") for p in probes]
        return None, FleetReport("dispatch", reports, {"selected": None})
    if not selection.installed and not deploy:
        report = no_worker_report(
            HostReport(selection.entry.name, selection.entry.address, "not-installed", 0.0),
            "no reachable host has PicoClaw (and --no-deploy forbids installing it)",
        )
        return None, FleetReport("dispatch", [report], {"selected": selection.to_json()})
    return selection, None


def no_worker_report(report, message):
    """A probe's report, turned into the dispatch report of a host that ran nothing."""
    details = dict(OUTPUT_FIELDS)
    return HostReport(report.name, report.address, report.status, report.duration_s,
                      report.message or message, details)


def choose_worker(candidates, probes):
    """The seed's policy over probe reports (``facts.status_report``), in config order.

    Among reachable hosts with PicoClaw, the least loaded (1-minute load per
    CPU) wins; a tie, or a load nobody knows, goes to the first in config
    order (known loads rank before unknown ones). With no PicoClaw anywhere
    reachable, the same rule picks the host to deploy to. None when nothing
    is reachable.
    """
    reachable = [(entry, probe) for entry, probe in zip(candidates, probes) if probe.ok]
    if not reachable:
        return None
    installed = [(e, p) for e, p in reachable if p.details.get("version") not in (None, "not-installed")]
    pool = installed or reachable
    ranked = sorted(enumerate(pool), key=lambda item: load_rank(item[1][1], item[0]))
    entry, probe = ranked[0][1]
    return Selection(entry, selection_reason(probe, pool, bool(installed)), bool(installed))


def load_per_cpu(probe):
    """A probe report's 1-minute load divided by CPU count, or None."""
    from .facts import load_per_cpu as per_cpu

    return per_cpu(probe.details.get("load1"), probe.details.get("ncpu"))


def load_rank(probe, position):
    """Sort key: known loads first, lowest first, then config order."""
    load = load_per_cpu(probe)
    return (load is None, round(load, 6) if load is not None else 0.0, position)


def selection_reason(probe, pool, installed):
    """Why this host, in one line: ``the least loaded (0.10 load/CPU) of 3 reachable hosts with PicoClaw``."""
    load = load_per_cpu(probe)
    if load is None:
        how = "the first in config order (load unknown)"
    else:
        tied = sum(1 for _, other in pool if load_rank(other, 0)[:2] == load_rank(probe, 0)[:2])
        how = f"the least loaded ({load:.2f} load/CPU" + (
            f", tied with {tied - 1} more, first in config order)" if tied > 1 else ")")
    hosts = f"{len(pool)} reachable host{'s' if len(pool) != 1 else ''}"
    if installed:
        return f"{how} of {hosts} with PicoClaw"
    return f"no reachable host has PicoClaw: deploying to {how} of {hosts}"


# --- running on one host --------------------------------------------------------------------


@dataclass
class Worker:
    """What one host does for a dispatch: (deploy,) run, (tear down), as one `HostReport`."""

    task: bytes
    timeout_s: float
    deployer: object = None
    ephemeral: bool = False
    notify: object = None
    connect_timeout: float = 10
    options: AgentOptions = AgentOptions()

    def run(self, cxn, entry):
        """The per-host function for `fanout.fan_out`."""
        started = time.monotonic()
        steps = []
        report = self.deploy_and_run(cxn, entry, steps)
        if self.ephemeral:
            self.tear_down(cxn, entry, steps, connection_lost=report.status == "lost")
        report.duration_s = time.monotonic() - started
        if steps:
            report.details["steps"] = steps
        return report

    def deploy_and_run(self, cxn, entry, steps):
        """Run the task; where PicoClaw is missing and deploying is allowed, deploy and run again."""
        result = run_agent(cxn, self.task, self.timeout_s, self.options)
        if result.status == "not-installed" and self.deployer is not None:
            deployed = self.step(steps, entry, "deploy", lambda: self.deployer.deploy(cxn, entry))
            if not deployed.ok:
                return deployed_failure(deployed, result)
            result = run_agent(cxn, self.task, self.timeout_s, self.options)
        if self.ephemeral:
            steps.append({"step": "run", "status": result.status, "duration_s": round(result.duration_s, 3)})
        return agent_report(entry, result)

    def tear_down(self, cxn, entry, steps, connection_lost):
        """``--ephemeral``'s last step, also after a failed run or deploy (it may have left files)."""
        if connection_lost:
            steps.append({"step": "teardown", "status": "skipped", "duration_s": 0.0,
                          "message": "the connection was lost: PicoClaw may still be installed"})
            self.notify(f"{entry.name}: teardown: skipped (the connection was lost)")
            return
        self.step(steps, entry, "teardown", lambda: self.deployer.teardown(cxn, entry))

    def step(self, steps, entry, name, action):
        """Do one deploy/teardown step, record it, and tell the person at the terminal.

        A step that raises (the connection dropped) is recorded with the
        connection status rather than raised: the task's own result, which
        may already be in, must not be lost to a failed clean-up.
        """
        from .connections import failure_report

        started = time.monotonic()
        try:
            report = action()
        except Exception as exc:  # the host's failure is the step's status, never the run's crash
            report = failure_report(entry, exc, started, self.connect_timeout)
        steps.append({"step": name, "status": report.status, "duration_s": round(report.duration_s, 3),
                      **({"message": report.message} if report.message else {})})
        self.notify(f"{entry.name}: {name}: {report.status}" + (f" ({report.message})" if report.message else ""))
        return report


def deployed_failure(deployed, result):
    """The report of a host where PicoClaw was missing and deploying it failed."""
    message = f"PicoClaw was not installed and deploying it failed: {deployed.status}"
    if deployed.message:
        message += f" ({deployed.message})"
    return HostReport(deployed.name, deployed.address, result.status, result.duration_s, message, result.details())


class Deployer:
    """Deploy and teardown for dispatch, by the same code as ``fab deploy`` / ``fab teardown``.

    The deploy plan (API key, release) is made once per run, and only when
    a host first needs it: a dispatch to hosts that have PicoClaw never
    resolves a release. A plan that cannot be made is a usage error (say, the
    key's variable is unset); a worker thread cannot raise it as one, so it is
    kept in `usage_error` for `dispatch` to raise once the hosts are done.
    """

    def __init__(self, fleet):
        self.fleet = fleet
        self.usage_error = None
        self._lock = threading.Lock()
        self._plan = None

    def plan(self):
        """The deploy plan, made on first use and shared by every host; `UsageError` if it cannot be."""
        from .deployment import deploy_plan

        with self._lock:
            if self.usage_error is not None:
                raise self.usage_error
            if self._plan is None:
                try:
                    self._plan = deploy_plan(self.fleet)
                except UsageError as exc:
                    self.usage_error = exc
                    raise
            return self._plan

    def deploy(self, cxn, entry):
        """`deployment.deploy_host` on an open connection: a `HostReport`."""
        from .deployment import deploy_host

        started = time.monotonic()
        try:
            plan = self.plan()
            plan.model_for(entry)
        except UsageError as exc:
            return HostReport(entry.name, entry.address, "failed", time.monotonic() - started, str(exc))
        return deploy_host(cxn, entry, plan)

    def teardown(self, cxn, entry):
        """`removal.teardown_host` removing the binary and ``.env`` (not the whole ~/.picoclaw)."""
        from .removal import teardown_host

        return teardown_host(cxn, entry, purge=False)

    def raise_usage_error(self):
        """Raise the plan's `UsageError`, if making it failed during the run."""
        if self.usage_error is not None:
            raise self.usage_error
