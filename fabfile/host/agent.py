"""Running one PicoClaw task on an open connection, and what its result means.

Dispatch (one task, many hosts) and batch (many tasks) share this: the remote
command, the run under a deadline, and the mapping of what came back to a
status (``ok``, ``failed``, ``timeout``, ``not-installed``, ``lost``).

Why the task text travels on the channel's stdin and not in the command line:
sshd hands the command to the login shell as ONE argv element (``sh -c CMD``),
so the whole quoted command is capped by Linux's MAX_ARG_STRLEN (128 KiB), and
shell quoting turns every ``'`` into five bytes -- 100 KB of quotes would not
fit. On stdin the text needs no quoting at all, so it arrives byte for byte
whatever it holds. The remote prologue reads it into a variable and runs
``picoclaw agent -m "$task"`` with stdin from /dev/null, so PicoClaw itself
never sees an open stdin. The only limit left is the one on PicoClaw's own
argument, which `task_bytes` enforces before anything connects.
"""

import codecs
import io
import secrets
import shlex
import time
from dataclasses import dataclass

from invoke.exceptions import CommandTimedOut

from ..core.status import Status
from ..core.tasks import TASK_SESSION_PREFIX
from ..ssh.deadlines import deadline, step_seconds
from ..ssh.runner import FleetRemote
from .facts import ANSI_ESCAPE
from .paths import BINARY_PATH, PICOCLAW_DIR, SESSIONS_DIR, bounded
from ..core.report import HostReport

#: The remote ``timeout`` sends TERM at the deadline and KILL this much later.
KILL_AFTER_S = 5
#: The local side gives up this long after the remote KILL: only a host that
#: stopped answering altogether gets that far.
LOCAL_GRACE_S = 5
#: Exit code and stderr marker of the prologue when the binary is missing. 127
#: is what a shell says for "command not found"; the marker tells it apart
#: from a PicoClaw that happens to exit 127 itself.
NOT_INSTALLED_EXIT = 127
NOT_INSTALLED_MARKER = "picoclaw-fleet: not-installed"
#: coreutils ``timeout``: TERM worked (124) or KILL was needed (128 + 9).
TIMEOUT_EXIT, KILLED_EXIT = 124, 137
#: What is kept of a task's output; the rest is drained and counted, so a task
#: that prints 50 MB costs neither memory nor time beyond reading it once.
CAPTURE_BYTES = {"stdout": 4 << 20, "stderr": 1 << 20}
#: PicoClaw prints its answer as ``\n🦞 <answer>\n``.
ANSWER_MARKER = "\n\U0001f99e "
#: The line on stderr after which the remote command appends PicoClaw's log file.
LOG_MARKER = "--- picoclaw log ---"


@dataclass(frozen=True)
class AgentOptions:
    """How a task runs besides its text and deadline.

    `session`: a PicoClaw session name to continue on purpose (kept on the
    host); None gives the task a session of its own, removed afterwards, so
    no task sees another's history. `unrestricted`: lift PicoClaw's
    ``restrict_to_workspace`` for this run only. `raw`: show PicoClaw's
    stdout untouched instead of its answer.
    """

    session: str | None = None
    unrestricted: bool = False
    raw: bool = False


#: The prologue of a task that arrives on stdin: read it whole, byte for byte (trailing newlines
#: kept; a task never holds a NUL), into ``$task``, by the shell itself: ``$(cat)`` would cost the
#: host a fork and an exec per task. The last line may lack its newline: ``read`` then fails but fills ``$l``.
TASK_FROM_STDIN = ("task=", "nl='\n'", 'while IFS= read -r l; do task="$task$l$nl"; done', 'task="$task$l"')


def agent_command(timeout_s, options=AgentOptions(), task_id=None):
    """The shell line that reads the task from stdin and runs PicoClaw on it (`agent_steps`).

    The task text travels on the channel's stdin (`TASK_FROM_STDIN`); the
    shell exits with PicoClaw's status, or `NOT_INSTALLED_EXIT`.
    """
    return "; ".join([*TASK_FROM_STDIN, *agent_steps(timeout_s, options, task_id), "exit $rc"])


def agent_steps(timeout_s, options=AgentOptions(), task_id=None):
    """The shell steps that run PicoClaw on the text in ``$task`` and clean up after it; ``$rc`` is its status.

    Shared by a task run over the connection (`agent_command`) and one run
    detached on the host (`host.detached`), so both run PicoClaw the same way.
    Missing binary: exit `NOT_INSTALLED_EXIT` with the marker on stderr.
    PicoClaw runs with ``NO_COLOR`` and without ``TZ`` (a plain banner, no
    time-zone lines), its logs sent to a file (``PICOCLAW_LOG_FILE``) so that
    stdout holds only the banner and the answer; after it ends the log is
    appended to stderr behind `LOG_MARKER` and removed, and so is the task's
    own session (a TERM to the whole session, as batch sends on Ctrl-C, is
    trapped by the shell, which cleans up once PicoClaw has gone).
    ``timeout -k`` kills PicoClaw's whole process group on the host even if
    our connection is gone (``timeout`` puts it in a group of its own); the
    shell then still cleans up, its writes to the closed channel ignored
    (SIGPIPE) rather than fatal. ``.env`` is not loaded: the
    agent's tools must not find the key in their environment.
    """
    task_id = task_id or secrets.token_hex(6)
    seconds = shlex.quote(f"{float(timeout_s):g}")
    binary = f'"$HOME"/{shlex.quote(BINARY_PATH)}'
    session = options.session or f"{TASK_SESSION_PREFIX}{task_id}"
    log = f'"$HOME"/{shlex.quote(f"{PICOCLAW_DIR}/fleet-{task_id}.log")}'
    run = f'"$bin" agent -s {shlex.quote("agent:main:" + session)} -m "$task" </dev/null'
    steps = [
        "trap : TERM HUP",  # outlive a stop (batch's Ctrl-C) long enough to clean up after PicoClaw
        f"bin={binary}",
        f'if [ ! -x "$bin" ]; then echo "{NOT_INSTALLED_MARKER}: no executable $bin" >&2; '
        f"exit {NOT_INSTALLED_EXIT}; fi",
        "unset TZ",
        "export NO_COLOR=1",
        f'[ -d "$HOME"/{PICOCLAW_DIR} ] || mkdir -p -m 700 "$HOME"/{PICOCLAW_DIR}',  # a process only the first time
        f"log={log}",
        'export PICOCLAW_LOG_FILE="$log"',
    ]
    if options.unrestricted:
        steps.append("export PICOCLAW_AGENTS_DEFAULTS_RESTRICT_TO_WORKSPACE=false")
    steps += [
        bounded(run, seconds, kill_after=KILL_AFTER_S),
        "rc=$?",
        # Our client may be gone (its connection closed while PicoClaw ran): writing the log to
        # the closed stderr must fail, not kill the shell before it has cleaned up.
        "trap '' PIPE",
    ]
    files = ""
    if options.session is None:
        files = " ".join(f'"$HOME"/{shlex.quote(path)}' for path in session_files(session)) + " "
    steps += [
        f"if [ -s \"$log\" ]; then printf '%s\\n' {shlex.quote(LOG_MARKER)} >&2; cat -- \"$log\" >&2; fi",
        f'rm -f -- {files}"$log"',  # the task's own session files and its log: one process
    ]
    return steps


def session_files(session):
    """PicoClaw's files for session ``agent:main:<session>`` (it writes ``:`` as ``_``)."""
    stem = f"{SESSIONS_DIR}/agent_main_{session}"
    return (f"{stem}.jsonl", f"{stem}.meta.json")


def split_answer(stdout):
    """PicoClaw's answer in its stdout: what follows the first ``\\n🦞 ``, less the final newline.

    Since v0.2.1 stdout is an ASCII-art banner, then (when logs are not sent
    to a file) log lines, then ``\\n🦞 <answer>\\n``. Only the first marker
    counts, so an answer that itself holds 🦞 or a banner-like line comes
    back whole. Older output without the marker: everything after the banner.
    """
    at = stdout.find(ANSWER_MARKER)
    if at >= 0:
        answer = stdout[at + len(ANSWER_MARKER):]
    elif stdout.startswith(ANSWER_MARKER[1:]):
        answer = stdout[len(ANSWER_MARKER) - 1:]
    else:
        answer = without_banner(stdout)
    return answer[:-1] if answer.endswith("\n") else answer


def without_banner(stdout):
    """`stdout` less its leading lines that hold no letter or digit (the banner's box drawing)."""
    lines = stdout.splitlines(keepends=True)
    skip = 0
    while skip < len(lines) and not any(c.isalnum() for c in ANSI_ESCAPE.sub("", lines[skip])):
        skip += 1
    return "".join(lines[skip:])


def split_log(stderr):
    """(PicoClaw's own stderr, its log lines) from the stderr the remote command returns."""
    mark = LOG_MARKER + "\n"
    at = stderr.rfind(mark)
    if at < 0 or (at > 0 and stderr[at - 1] != "\n"):
        return stderr, ""
    return stderr[:at], stderr[at + len(mark):]


class TaskRunner(FleetRemote):
    """Our remote runner (`FleetRemote`, woken by the command's end), adjusted for a task's bytes going in and coming out.

    Invoke decodes output one 1000-byte read at a time, which mangles any
    multibyte character split across two reads; a task's answer is text that
    must come back intact, so output goes through one incremental decoder per
    stream, and bytes that are not UTF-8 are flagged (`not_utf8`), not
    silently replaced. What is kept of each stream is capped (`CAPTURE_BYTES`):
    the rest is read, so the task is never blocked on a full pipe, counted in
    `dropped`, and dropped. Invoke's `respond` re-joins the whole buffer on
    every read, for watchers we do not have; it is skipped, so reading is
    linear in the output's size. Stdin is the task: written whole, then EOF,
    and a channel that is already gone is left for the result to report
    rather than raised from a thread.
    """

    read_chunk_size = 65536

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dropped = {"stdout": 0, "stderr": 0}
        self.not_utf8 = set()

    def respond(self, buffer_):
        """No watchers: nothing to answer, and no reason to re-join the buffer."""

    def read_proc_output(self, reader):
        """Decode the stream as one UTF-8 text, whatever the read boundaries, up to its cap."""
        name = "stdout" if reader == self.read_proc_stdout else "stderr"
        room = CAPTURE_BYTES[name]
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        strict = codecs.getincrementaldecoder("utf-8")("strict")
        for data in iter(lambda: reader(self.read_chunk_size), b""):
            kept = data[: max(room, 0)]
            room -= len(kept)
            self.dropped[name] += len(data) - len(kept)
            if kept:
                self._check_utf8(strict, name, kept)
                yield decoder.decode(kept)
        if not self.dropped[name]:
            self._check_utf8(strict, name, b"", final=True)
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def _check_utf8(self, strict, name, data, final=False):
        if name in self.not_utf8:
            return
        try:
            strict.decode(data, final)
        except UnicodeDecodeError:
            self.not_utf8.add(name)

    def handle_stdin(self, input_, output, echo=False):
        """Send all of `input_` (bytes), then EOF, so the remote ``cat`` ends."""
        try:
            self._write_proc_stdin(input_.read())
            self.close_proc_stdin()
        except (OSError, EOFError):
            pass  # the connection dropped: the exit status (none) says so


@dataclass
class AgentResult:
    """What one ``picoclaw agent`` run gave back, and its status.

    `answer` is PicoClaw's answer alone; `stdout` what it printed (banner
    included), `stderr` its error output, `log` its log lines. It is the
    typed result of a task, the details of a dispatch or batch `HostReport`.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    status: Status
    message: str
    duration_s: float
    answer: str = ""
    log: str = ""
    session: str | None = None
    dropped_bytes: dict = None
    not_utf8: tuple = ()

    @classmethod
    def nothing(cls, status=Status.NOT_RUN, message=""):
        """The result of a task that never reached PicoClaw: every output field, empty."""
        return cls("", "", None, status, message, 0.0)

    def to_dict(self):
        """The fields ``--json`` carries for the run (besides status and duration)."""
        data = {"answer": self.answer, "stdout": self.stdout, "stderr": self.stderr, "log": self.log,
                "exit_code": self.exit_code,
                "dropped_bytes": dict(self.dropped_bytes or {"stdout": 0, "stderr": 0}),
                "not_utf8": list(self.not_utf8)}
        if self.session is not None:
            data["session"] = self.session
        return data


def run_agent(cxn, task, timeout_s, options=AgentOptions()):
    """Run one task on `cxn` (opened if need be) and return its `AgentResult`.

    `task` is the bytes from `task_bytes`. The host stops PicoClaw at
    `timeout_s`; if the host itself stops answering, the channel is closed
    locally a little after its own KILL would have landed. Either way the
    output printed so far is kept. Connection errors before the task starts
    are raised, for `fanout.fan_out` to name.
    """
    cxn.open()
    started = time.monotonic()
    runner = TaskRunner(context=cxn, inline_env=True)
    local_deadline = timeout_s + KILL_AFTER_S + LOCAL_GRACE_S
    locally_timed_out = False
    # invoke's own timer starts only once the command has started: the
    # watchdog also covers a host that freezes while the session opens.
    with deadline(cxn, "starting the task", step_seconds(cxn, local_deadline)):
        try:
            result = runner.run(
                agent_command(timeout_s, options), hide=True, warn=True, in_stream=io.BytesIO(task),
                timeout=local_deadline,
            )
        except CommandTimedOut as exc:
            result, locally_timed_out = exc.result, True
    duration = time.monotonic() - started
    exit_code = None if result.exited in (None, -1) else result.exited
    gone = connection_dropped(cxn, runner.channel)
    return agent_result(result.stdout, result.stderr, exit_code, duration, timeout_s, options,
                        locally_timed_out, gone, runner.dropped, runner.not_utf8)


def agent_result(stdout, stderr, exit_code, duration_s, timeout_s, options=AgentOptions(), locally_timed_out=False,
                 dropped=False, dropped_bytes=None, not_utf8=()):
    """The `AgentResult` of what the remote command (`agent_steps`) left: its output, exit status and time.

    One reading for a task run over the connection (`run_agent`) and one
    collected from its files after running detached (`host.detached`).
    `dropped` says the connection died under it; `dropped_bytes` and
    `not_utf8` what `TaskRunner` (or the reader of the files) noted.
    """
    dropped_bytes = dict(dropped_bytes or {"stdout": 0, "stderr": 0})
    status, message = agent_status(exit_code, stderr, duration_s, timeout_s, locally_timed_out, dropped)
    stderr, log = split_log(stderr)
    if status == Status.NOT_INSTALLED:
        stderr = ""  # our prologue's marker, not PicoClaw's
    answer = split_answer(stdout) if status == Status.OK or ANSWER_MARKER in stdout else ""
    notes = output_notes(dropped_bytes, not_utf8)
    if notes:
        message = "; ".join(([message] if message else []) + notes)
    return AgentResult(stdout, stderr, exit_code, status, message, duration_s, answer, log, options.session,
                       dropped_bytes, tuple(sorted(not_utf8)))


def output_notes(dropped, not_utf8):
    """What a reader must know about the output kept: cut at its cap, or not UTF-8."""
    notes = [f"{name} cut at {CAPTURE_BYTES[name] >> 20} MiB ({n} more bytes dropped)"
             for name, n in dropped.items() if n]
    notes += [f"{name} is not valid UTF-8 (shown with U+FFFD replacements)" for name in sorted(not_utf8)]
    return notes


def connection_dropped(cxn, channel):
    """True when the channel ended because the connection died, not the command.

    A command that ends, even by a signal, makes sshd send EOF before it
    closes the channel; a connection that drops sends nothing, and paramiko
    marks its transport inactive right after closing the channels.
    """
    transport = cxn.client.get_transport()
    return not channel.eof_received or transport is None or not transport.is_active()


def agent_status(exit_code, stderr, duration_s, timeout_s, locally_timed_out=False, dropped=False):
    """(status, message) for a finished run; `exit_code` None means no exit status came back."""
    if locally_timed_out:
        return Status.TIMEOUT, f"no answer within {timeout_s:g}s (the host did not stop it either; connection closed)"
    if exit_code is None:
        if dropped:
            return Status.LOST, "the connection dropped while the task was running"
        return Status.FAILED, "PicoClaw ended without an exit status (killed by a signal?)"
    if exit_code == TIMEOUT_EXIT or (exit_code == KILLED_EXIT and duration_s >= timeout_s):
        return Status.TIMEOUT, f"stopped after {timeout_s:g}s (--timeout)"
    if exit_code == NOT_INSTALLED_EXIT and NOT_INSTALLED_MARKER in stderr:
        return Status.NOT_INSTALLED, f"PicoClaw is not installed at ~/{BINARY_PATH}"
    if exit_code:
        return Status.FAILED, f"PicoClaw exited with status {exit_code}"
    return Status.OK, ""


def agent_report(entry, result):
    """The `HostReport` for a host that ran a task: the `AgentResult` is its details."""
    return HostReport(entry.name, entry.address, result.status, result.duration_s, result.message, result)


#: Stops every task running on the connection this command arrives on.
#: sshd starts each exec channel as a session of its own (setsid) whose leader
#: is a child of the connection's ``sshd: user@notty`` process; `timeout`
#: later moves PicoClaw into a process group of its own, but never out of
#: that session. So: find our session's parent (the connection), and TERM
#: every other session under it. Other connections -- another operator's
#: run, an interactive login -- are never touched. Only shell builtins,
#: /proc, pgrep and pkill, which a Raspberry Pi or a busybox board has.
STOP_TASKS_COMMAND = (
    "read -r _ _ _ _ _ me _ < /proc/$$/stat; "
    'read -r _ _ _ conn _ < "/proc/$me/stat"; '
    "others=; "
    'for s in $(pgrep -P "$conn"); do [ "$s" = "$me" ] || others="$others,$s"; done; '
    'if [ -n "$others" ]; then pkill -TERM -s "${others#,}"; fi; '
    "true"
)


def stop_running_tasks(cxn):
    """TERM the tasks running on `cxn`'s host, through `cxn` itself (a stop: Ctrl-C, SIGTERM, SIGHUP).

    Closing our side would not stop them: a task without a terminal gets no
    hangup when its channel closes, and would run on until its timeout.
    """
    if not cxn.is_connected:
        return  # its tasks are lost, not ours to stop (and run() would reconnect)
    try:
        with deadline(cxn, "stopping the running tasks"):
            cxn.run(STOP_TASKS_COMMAND, hide=True, warn=True, in_stream=False)
    except Exception:  # the connection failed meanwhile (or stalled): the same
        pass
