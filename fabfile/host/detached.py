"""Detached PicoClaw tasks on one host: started over a connection, left running, collected later.

A detached task outlives the SSH connection that started it. Its files live
in a directory of its run, ``~/.picoclaw/fleet-runs/<run id>/`` (``0700``):

* ``KEY.task`` -- the task text, written from the channel's stdin (never a
  command line, as for a task run in the foreground) and removed once read;
* ``KEY.sh`` -- the task's script: `agent.agent_steps`, the very steps a
  foreground task runs (session of its own, log file, ``timeout -k`` on the
  host), in a subshell whose exit status and start and end times (``date
  +%s``) go to ``KEY.rc`` (written to a temporary name, then renamed: a
  reader sees all of it or nothing);
* ``KEY.out``, ``KEY.err`` -- PicoClaw's stdout, and its stderr followed by
  its log, exactly what the foreground run reads from the channel.

A host's tasks wait in its slots (``max_tasks`` of them, `core.detach`): each
slot is one runner, ``sh -c RUNNER`` started under ``setsid`` (``nohup``
where there is none) with stdin, stdout and stderr away from the channel,
so it is a session of its own that no hang-up, closed pipe or stop of the
connection's sessions reaches. It runs its tasks one after another, writing
the current one's key to ``SLOT.cur``; ``SLOT.pid`` holds its process id
and the host's boot id, so a pid reused after a reboot is not taken for it.

Collecting asks one command for every task's state (`STATE_WORDS`), reads
the output of those that ended over SFTP, and (once the ledger has them)
removes their files: the whole run directory when nothing of it is left
running. Every command runs under a deadline; every file is written by the
wrapper or removed through `remote_files`.
"""

import io
import shlex
import time
from dataclasses import dataclass

from ..core.detach import RUNNING
from ..core.status import Status
from ..ssh.deadlines import deadline
from . import remote_files
from .agent import (
    CAPTURE_BYTES, NOT_INSTALLED_EXIT, NOT_INSTALLED_MARKER, AgentOptions, AgentResult, TaskRunner, agent_result,
    agent_steps,
)
from .paths import BINARY_PATH, PICOCLAW_DIR

RUNS_DIR = f"{PICOCLAW_DIR}/fleet-runs"
BOOT_ID = "/proc/sys/kernel/random/boot_id"
#: A slot's runner: its tasks' scripts one after another, each with its own output files.
RUNNER = ('d=$1; s=$2; shift 2; for k do printf "%s\\n" "$k" > "$d/$s.cur"; '
          'sh "$d/$k.sh" </dev/null >"$d/$k.out" 2>"$d/$k.err"; done')
#: What the state command says of a task: ended (with ``rc t0 t1``), on its way, or gone.
DONE, RUNNING_NOW, QUEUED, LOST, NOT_RUN, MISSING = "done", "running", "queued", "lost", "not-run", "missing"
STATE_WORDS = (DONE, RUNNING_NOW, QUEUED, LOST, NOT_RUN, MISSING)
#: The files of one task, removed once collected.
TASK_FILES = (".task", ".sh", ".out", ".err", ".rc", ".rc.tmp")


def run_dir(run_id):
    """A run's directory on the host, relative to the home."""
    return f"{RUNS_DIR}/{run_id}"


def shell_dir(run_id):
    """The run's directory as the shell names it."""
    return f'"$HOME"/{shlex.quote(run_dir(run_id))}'


@dataclass(frozen=True)
class DetachedTask:
    """One task to run detached: its key on the host, its text (bytes), timeout and options."""

    key: str
    data: bytes
    timeout_s: float
    options: AgentOptions = AgentOptions()


@dataclass
class DetachedStart:
    """What starting one task detached gave: `RUNNING` (it is queued or running on the host), or why not.

    Its `to_dict` gives the output fields of a task's JSON (empty: nothing
    has come back yet), ``detached`` (its key, slot and directory on the
    host) and, when the probe knew them, ``picoclaw_version`` and ``model``.
    """

    status: str
    message: str
    duration_s: float
    key: str
    slot: str
    directory: str
    stderr: str = ""
    version: str | None = None
    model: str | None = None

    def to_dict(self):
        data = {"answer": "", "stdout": "", "stderr": self.stderr, "log": "", "exit_code": None,
                "dropped_bytes": {"stdout": 0, "stderr": 0}, "not_utf8": [],
                "detached": {"key": self.key, "slot": self.slot, "dir": f"~/{self.directory}"}}
        if self.version:
            data["picoclaw_version"] = self.version
        if self.model:
            data["model"] = self.model
        return data


# --- starting -------------------------------------------------------------------------------------


def task_script(run_id, task):
    """The script a runner runs for `task`: read the text, `agent_steps`, then ``KEY.rc`` (``rc t0 t1``)."""
    key = task.key
    inner = "; ".join([f'task=$(cat -- "$d"/{key}.task; printf x)', "task=${task%x}", f'rm -f -- "$d"/{key}.task',
                       *agent_steps(task.timeout_s, task.options), "exit $rc"])
    return "; ".join([
        "trap : TERM HUP",  # a stop of the session: let the task clean up, then still say how it ended
        f"d={shell_dir(run_id)}",
        "t0=$(date +%s)",
        f"({inner})",
        "rc=$?",
        "t1=$(date +%s)",
        f'printf \'%s %s %s\\n\' "$rc" "$t0" "$t1" > "$d"/{key}.rc.tmp',
        f'mv -f -- "$d"/{key}.rc.tmp "$d"/{key}.rc',
        "exit $rc",
    ])


def write_command(run_id, task):
    """The command that puts one task on the host: its text from stdin, its script; ``written`` when done.

    PicoClaw missing is said as a foreground run says it (exit
    `NOT_INSTALLED_EXIT`, the marker on stderr), before anything is written.
    """
    binary = f'"$HOME"/{shlex.quote(BINARY_PATH)}'
    return "; ".join([
        "umask 077",
        f"bin={binary}",
        f'if [ ! -x "$bin" ]; then echo "{NOT_INSTALLED_MARKER}: no executable $bin" >&2; exit {NOT_INSTALLED_EXIT}; fi',
        f"d={shell_dir(run_id)}",
        'mkdir -p -- "$d" || exit 1',
        f'cat > "$d"/{task.key}.task || exit 1',
        f"printf '%s\\n' {shlex.quote(task_script(run_id, task))} > \"$d\"/{task.key}.sh || exit 1",
        "echo written",
    ])


def launch_command(run_id, slots):
    """The command that starts one runner per slot, ``[(slot, [keys])]``, each a session of its own."""
    lines = [
        "umask 077",
        f"d={shell_dir(run_id)}",
        f"b=$(cat {BOOT_ID} 2>/dev/null)",
        "if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=nohup; fi",
    ]
    for slot, keys in slots:
        lines.append(f'$detach sh -c {shlex.quote(RUNNER)} sh "$d" {slot} {" ".join(keys)} '
                     "</dev/null >/dev/null 2>&1 &")
        lines.append(f'printf \'%s %s\\n\' "$!" "$b" > "$d"/{slot}.pid')
    lines.append("echo launched")
    return "\n".join(lines)


def start_detached(cxn, run_id, slots, version=None, model=None):
    """Put the tasks of `slots` (``{slot: [DetachedTask, ...]}``) on the host and start their runners.

    Returns a `DetachedStart` per task, in slot order. A task that cannot be
    written (PicoClaw missing, a full disk) is not started and says why;
    the rest are. A connection that fails before the runners start raises,
    for the fan-out to name (nothing runs); one that fails while they start
    leaves them `RUNNING`, unconfirmed: ``fab collect`` finds out.
    """
    cxn.open()
    started = time.monotonic()
    starts, ready = [], {}
    for slot, tasks in slots.items():
        for task in tasks:
            status, message, stderr = write_task(cxn, run_id, task)
            starts.append(DetachedStart(status, message, 0.0, task.key, slot, run_dir(run_id), stderr, version, model))
            if status == RUNNING:
                ready.setdefault(slot, []).append(task.key)
    if ready:
        problem, unconfirmed = launch(cxn, run_id, ready)
        for start in starts:
            if start.status == RUNNING and problem:
                if unconfirmed:
                    start.message = problem
                else:
                    start.status, start.message = Status.FAILED, problem
    duration = time.monotonic() - started
    for start in starts:
        start.duration_s = duration
    return starts


def launch(cxn, run_id, ready):
    """Start the runners of `ready` (``{slot: [keys]}``); (problem or None, True when it is unconfirmed)."""
    try:
        with deadline(cxn, "starting the detached tasks"):
            result = cxn.run(launch_command(run_id, list(ready.items())), hide=True, warn=True, in_stream=False)
    except Exception as exc:  # the connection failed as they started: maybe they did
        return f"start unconfirmed: the connection failed as it started ({exc}); fab collect will tell", True
    if result.ok and "launched" in result.stdout:
        return None, False
    return f"could not start it: {result.stderr.strip() or f'exit status {result.exited}'}", False


def write_task(cxn, run_id, task):
    """Write one task's files; (status, message, stderr): `RUNNING` when it is ready to run."""
    runner = TaskRunner(context=cxn, inline_env=True)
    with deadline(cxn, "writing the detached task"):
        result = runner.run(write_command(run_id, task), hide=True, warn=True, in_stream=io.BytesIO(task.data))
    if result.ok and "written" in result.stdout:
        return RUNNING, "", ""
    if result.exited == NOT_INSTALLED_EXIT and NOT_INSTALLED_MARKER in result.stderr:
        return Status.NOT_INSTALLED, f"PicoClaw is not installed at ~/{BINARY_PATH}", ""
    reason = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.exited}"]
    return Status.FAILED, f"could not write the task on the host: {reason[0]}", result.stderr


def start_one(cxn, task, timeout_s, options, run_id):
    """Dispatch ``--detach``: `task` (bytes) started as the host's one task of the run (`DetachedStart`)."""
    return start_detached(cxn, run_id, {"s0": [DetachedTask("t0", task, timeout_s, options)]})[0]


# --- collecting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placed:
    """A detached task as collect knows it: its key and slot on the host, and how it was run."""

    key: str
    slot: str
    timeout_s: float
    options: AgentOptions = AgentOptions()


@dataclass
class Collected:
    """One task's state on the host (`STATE_WORDS`) and, once it ended, its `AgentResult`."""

    key: str
    state: str
    result: AgentResult | None = None

    @property
    def final(self):
        """True when the task has ended (or is known never to run): its result is in."""
        return self.result is not None


def state_command(run_id, placed):
    """One line per task: ``KEY done RC T0 T1``, ``KEY running``, ``KEY queued``, ``KEY lost``...

    Race-free against the runner: it writes ``SLOT.cur`` before it opens a
    task's ``.out``, and a task writes its ``.rc`` before the runner moves
    on, so a task with output, not current and without ``.rc`` (read after
    ``.cur``) ended without one.
    """
    pairs = " ".join(f"{task.key}:{task.slot}" for task in placed)
    return "\n".join([
        f"d={shell_dir(run_id)}",
        f"b=$(cat {BOOT_ID} 2>/dev/null)",
        'alive() { [ -f "$d/$1.pid" ] && read -r p pb < "$d/$1.pid" && [ "$pb" = "$b" ] && kill -0 "$p" 2>/dev/null; }',
        'done_line() { printf "%s done %s\\n" "$1" "$(cat "$d/$1.rc")"; }',
        f"for p in {pairs}; do",
        "  k=${p%:*}; s=${p#*:}",
        '  if [ -f "$d/$k.rc" ]; then done_line "$k"',
        f'  elif [ ! -f "$d/$k.sh" ]; then echo "$k {MISSING}"',
        f'  elif [ ! -e "$d/$k.out" ]; then if alive "$s"; then echo "$k {QUEUED}"; else echo "$k {NOT_RUN}"; fi',
        "  else",
        '    c=; [ -f "$d/$s.cur" ] && read -r c < "$d/$s.cur"',
        f'    if [ "$c" = "$k" ] && alive "$s"; then echo "$k {RUNNING_NOW}"',
        '    elif [ -f "$d/$k.rc" ]; then done_line "$k"',
        f'    else echo "$k {LOST}"; fi',
        "  fi",
        "done",
    ])


def parse_states(stdout):
    """{key: (state, [numbers])} from the state command's lines."""
    states = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[1] in STATE_WORDS:
            numbers = [int(w) for w in words[2:] if w.lstrip("-").isdigit()]
            states[words[0]] = (words[1], numbers)
    return states


def collect_host(cxn, run_id, placed):
    """The `Collected` state of each of `placed` (`Placed` tasks of run `run_id` on this host).

    One command for the states, then the output of each task that ended,
    read over SFTP up to the foreground's caps (`agent.CAPTURE_BYTES`).
    Nothing is removed here (`forget` does that, once the ledger has the
    results). Connection failures raise, for the fan-out to name.
    """
    cxn.open()
    with deadline(cxn, "reading the detached tasks' states"):
        result = cxn.run(state_command(run_id, placed), hide=True, warn=True, in_stream=False)
    states = parse_states(result.stdout)
    collected = []
    for task in placed:
        state, numbers = states.get(task.key, (None, []))
        if state is None:
            raise remote_files.RemoteFileError(
                f"could not read the detached tasks' states: {result.stderr.strip() or 'no answer'}")
        collected.append(Collected(task.key, state, finished_result(cxn, run_id, task, state, numbers)))
    return collected


def finished_result(cxn, run_id, task, state, numbers):
    """The `AgentResult` of a task that ended (or never will run); None while it is queued or running."""
    if state in (QUEUED, RUNNING_NOW):
        return None
    if state == NOT_RUN:
        return AgentResult.nothing(Status.NOT_RUN, "never started: its slot's runner on the host ended first "
                                                   "(killed, or the host rebooted)")
    if state == MISSING:
        return AgentResult.nothing(Status.LOST, f"its files are gone from the host (~/{run_dir(run_id)}): "
                                                "removed by a teardown, or the host was reset")
    stdout, stderr, dropped, not_utf8 = read_outputs(cxn, run_id, task.key)
    if state == LOST:
        result = agent_result(stdout, stderr, None, 0.0, task.timeout_s, task.options, dropped=True,
                              dropped_bytes=dropped, not_utf8=not_utf8)
        result.message = "ended on the host without an exit status (killed, or the host rebooted)"
        return result
    rc, t0, t1 = (numbers + [0, 0, 0])[:3]
    return agent_result(stdout, stderr, rc, float(max(0, t1 - t0)), task.timeout_s, task.options,
                        dropped_bytes=dropped, not_utf8=not_utf8)


def read_outputs(cxn, run_id, key):
    """(stdout, stderr, dropped bytes, streams not UTF-8) of a task's files, each up to its cap."""
    texts, dropped, not_utf8 = {}, {}, set()
    for name, suffix in (("stdout", ".out"), ("stderr", ".err")):
        path = f"{run_dir(run_id)}/{key}{suffix}"
        attrs = remote_files.stat_or_none(cxn, path)
        data = (remote_files.read(cxn, path, CAPTURE_BYTES[name]) or b"") if attrs is not None else b""
        dropped[name] = max(0, (attrs.st_size or 0) - len(data)) if attrs is not None else 0
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if not (dropped[name] and exc.start >= len(data) - 3):  # a character cut at the cap is not bad UTF-8
                not_utf8.add(name)
        texts[name] = data.decode("utf-8", "replace")
    return texts["stdout"], texts["stderr"], dropped, not_utf8


def forget(cxn, run_id, keys, everything=False):
    """Remove the files of the collected tasks `keys`; with `everything`, the run's whole directory.

    `everything` is for when no task of the run is left on this host (its
    runners have ended); otherwise only the named tasks' files go, by name.
    """
    if everything:
        remote_files.remove_tree(cxn, run_dir(run_id))
        return
    for key in keys:
        for suffix in TASK_FILES:
            remote_files.remove(cxn, f"{run_dir(run_id)}/{key}{suffix}")


# --- teardown -------------------------------------------------------------------------------------


def remove_all_runs(cxn):
    """Stop every detached task on the host and remove ``~/.picoclaw/fleet-runs``; True when it was there.

    For teardown: a runner's session is TERMed (PicoClaw, its ``timeout``
    and the task's shell, which then cleans up its session files), named by
    the ``SLOT.pid`` files found, never by a pattern; then the directory goes
    with `remote_files.remove_tree`.
    """
    if remote_files.stat_or_none(cxn, RUNS_DIR) is None:
        return False
    pid_files = []
    with remote_files.operation(cxn, "list", RUNS_DIR):
        client = remote_files.sftp(cxn)
        for run in client.listdir(RUNS_DIR):
            names = client.listdir(f"{RUNS_DIR}/{run}")
            pid_files += [f"{RUNS_DIR}/{run}/{name}" for name in names if name.endswith(".pid")]
    if pid_files:
        home = remote_files.home(cxn)
        files = " ".join(shlex.quote(f"{home}/{path}") for path in pid_files)
        command = (f"b=$(cat {BOOT_ID} 2>/dev/null); s=; "
                   f'for f in {files}; do read -r p pb < "$f" && [ "$pb" = "$b" ] && s="$s,$p"; done; '
                   'if [ -n "$s" ]; then pkill -TERM -s "${s#,}"; fi; true')
        with deadline(cxn, "stopping the detached tasks"):
            cxn.run(command, hide=True, warn=True, in_stream=False)
    remote_files.remove_tree(cxn, RUNS_DIR)
    return True
