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
The run itself -- remote command, deadline, status -- is `host.agent`'s;
with ``--detach`` the task is started on the host and left to run there
(`host.detached`), to be collected later.
"""

import threading
import time
from dataclasses import dataclass
from functools import partial

from ..core.config import no_hosts_selected, select_hosts
from ..core.errors import UsageError
from ..core.policy import choose_worker
from ..core.report import FleetReport, HostReport
from ..core.status import Status
from ..core.tasks import check_timeout, task_bytes
from ..host.agent import AgentOptions, AgentResult, agent_report, run_agent, stop_running_tasks
from ..host.detached import start_one
from ..host.facts import probe_host
from ..host.install import deploy_host, deploy_plan
from ..host.removal import teardown_host
from ..ssh.connections import failure_report
from ..ssh.fanout import fan_out


@dataclass(frozen=True)
class Targets:
    """Where a dispatch goes: `mode` is ``named``, ``policy`` or ``broadcast``."""

    entries: list
    mode: str


@dataclass
class DispatchDetails:
    """A host's task result, and (with ``--ephemeral`` or a deploy first) the steps around it."""

    run: AgentResult
    steps: list

    def to_dict(self):
        """The task's JSON fields, then ``steps``."""
        return {**self.run.to_dict(), "steps": self.steps}


def dispatch_targets(fleet, host=None, hosts=None, all_hosts=False):
    """Which hosts the flags name, and how the task goes to them; `UsageError` on a contradiction.

    A flag given with nothing in it (``--host ''``, ``--hosts ,,``) or a
    config with no hosts is `config.no_hosts_selected`, as in every verb.
    """
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


def dispatch(run, mode, text, timeout_s=None, deploy=True, ephemeral=False, options=AgentOptions(), detach=None):
    """Run `text` as a PicoClaw task on `run`'s hosts as `mode` says; the ``dispatch`` `FleetReport`.

    The task text, the timeout and (for ``--ephemeral``) the deploy plan are
    checked before any host is contacted. ``run.notify`` hears the chosen
    host and the deploy and teardown steps. `detach` (the run's id) starts
    the task detached on each host instead: its status is then ``running``.
    """
    if ephemeral and not deploy:
        raise UsageError("--ephemeral deploys where PicoClaw is missing; it cannot be combined with --no-deploy")
    if ephemeral and detach:
        raise UsageError("--ephemeral tears the worker down after the task; a detached task outlives the run: "
                         "give one or the other")
    task = task_bytes(text)
    timeout_s = check_timeout(run.defaults.timeout if timeout_s is None else timeout_s)
    deployer = Deployer(run.fleet) if ephemeral or (deploy and mode != "broadcast") else None
    if ephemeral:
        deployer.plan()
    worker = Worker(task, timeout_s, deployer, ephemeral, run.notify, run.defaults.connect_timeout, options,
                    partial(start_one, run_id=detach) if detach else run_agent)
    if mode == "broadcast":
        done = fan_out_task(run, worker.run)
        report = FleetReport("dispatch", done.reports, interrupted=done.interrupted)
    else:
        report = dispatch_one(run, mode, worker)
    if deployer is not None:
        deployer.raise_usage_error()
    return report


def dispatch_one(run, mode, worker):
    """The single-host dispatch: the named host, or the one the policy chooses."""
    if mode == "named":
        entry, reason = run.entries[0], "named with --host"
    else:
        selection, refusal = select_worker(run, worker.deployer is not None)
        if selection is None:
            return refusal
        if not selection.installed:
            worker.deployer.plan()  # a usage error (no API key...) is raised here, before the deploy
        entry, reason = selection.entry, selection.reason
        run.notify(f"{entry.name}: chosen: {reason}")
    done = fan_out_task(run.on([entry]), worker.run)
    return FleetReport("dispatch", done.reports, {"selected": {"host": entry.name, "reason": reason}},
                       interrupted=done.interrupted)


def fan_out_task(run, work):
    """`fanout.fan_out` of the task; a host the task never reached still gets (empty) output fields.

    A stop (Ctrl-C, SIGTERM, SIGHUP) TERMs PicoClaw on every host still
    running it, through that host's own connection.
    """
    done = fan_out(run, work, stop=stop_running_tasks)
    for report in done.reports:
        if report.details is None:
            report.details = AgentResult.nothing()
    return done


# --- choosing the worker --------------------------------------------------------------------


def probe_report(cxn, entry):
    """A candidate's probe as a `HostReport` whose details are its `HostFacts`."""
    started = time.monotonic()
    facts = probe_host(cxn)
    return HostReport(entry.name, entry.address, Status.OK, time.monotonic() - started, details=facts)


def select_worker(run, deploy):
    """Probe `run`'s hosts and choose one: (`policy.Selection`, None), or (None, a report saying why not)."""
    done = fan_out(run, probe_report)
    probes = done.reports
    if done.interrupted:
        reports = [no_worker_report(p, "stopped while choosing the host") for p in probes]
        return None, FleetReport("dispatch", reports, {"selected": None}, interrupted=True)
    selection = choose_worker(run.entries, [probe.details if probe.ok else None for probe in probes])
    if selection is None:
        reports = [no_worker_report(p, "no reachable host to run the task on") for p in probes]
        return None, FleetReport("dispatch", reports, {"selected": None})
    if not selection.installed and not deploy:
        report = no_worker_report(
            HostReport(selection.entry.name, selection.entry.address, Status.NOT_INSTALLED, 0.0),
            "no reachable host has PicoClaw (and --no-deploy forbids installing it)",
        )
        return None, FleetReport("dispatch", [report], {"selected": selection.to_json()})
    return selection, None


def no_worker_report(report, message):
    """A probe's report, turned into the dispatch report of a host that ran nothing."""
    return HostReport(report.name, report.address, report.status, report.duration_s, report.message or message,
                      AgentResult.nothing())


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
    runner: object = run_agent  # `host.detached.start_one` for --detach

    def run(self, cxn, entry):
        """The per-host function for `fanout.fan_out`."""
        started = time.monotonic()
        steps = []
        report = self.deploy_and_run(cxn, entry, steps)
        if self.ephemeral:
            self.tear_down(cxn, entry, steps, connection_lost=report.status == Status.LOST)
        report.duration_s = time.monotonic() - started
        if steps:
            report.details = DispatchDetails(report.details, steps)
        return report

    def deploy_and_run(self, cxn, entry, steps):
        """Run the task; where PicoClaw is missing and deploying is allowed, deploy and run again."""
        result = self.runner(cxn, self.task, self.timeout_s, self.options)
        if result.status == Status.NOT_INSTALLED and self.deployer is not None:
            deployed = self.step(steps, entry, "deploy", lambda: self.deployer.deploy(cxn, entry))
            if not deployed.ok:
                return deployed_failure(deployed, result)
            result = self.runner(cxn, self.task, self.timeout_s, self.options)
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
    return HostReport(deployed.name, deployed.address, result.status, result.duration_s, message, result)


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
        """`install.deploy_host` on an open connection: a `HostReport`."""
        started = time.monotonic()
        try:
            plan = self.plan()
            plan.model_for(entry)
        except UsageError as exc:
            return HostReport(entry.name, entry.address, Status.FAILED, time.monotonic() - started, str(exc))
        return deploy_host(cxn, entry, plan)

    def teardown(self, cxn, entry):
        """`removal.teardown_host` removing the binary and ``.env`` (not the whole ~/.picoclaw)."""
        return teardown_host(cxn, entry, purge=False)

    def raise_usage_error(self):
        """Raise the plan's `UsageError`, if making it failed during the run."""
        if self.usage_error is not None:
            raise self.usage_error
