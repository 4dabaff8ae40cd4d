"""What a task is before it reaches a host: its text, session and timeout, checked; a batch's tasks file.

Dispatch and batch share the checks (`task_bytes`, `session_name`,
`check_timeout`), so a task that one refuses the other refuses too.

The tasks of a ``fab batch`` are read from a file, stdin or ``--task``, all checked up front.

A tasks file is plain text, one task a line, or JSON Lines, one
``{"id", "task", "host", "timeout"}`` object a line; blank lines and ``#``
comments are skipped in both. Everything is checked before any host is
contacted: a malformed line is a `UsageError` naming its line number, so a
typo on line 180 cannot leave 179 tasks run and the rest not.

The file is read one line at a time, never whole, and bounded: at most
`MAX_TASKS` tasks, `MAX_LINE_BYTES` a line and `MAX_TOTAL_TASK_BYTES` of task
text in all. A million-line file costs what its tasks cost, up to those caps,
and one past a cap is refused naming the line.
"""

import json
import re
import sys
from dataclasses import dataclass

from .config import MAX_NESTING, RefusedNumber, deepest_path, strict_json_loads
from .errors import UsageError

#: Linux's MAX_ARG_STRLEN (32 pages) counts the terminating NUL of the argument.
MAX_TASK_BYTES = 128 * 1024 - 1
#: A task's own session is ``agent:main:pcf-<random>``; named sessions may not look like one.
TASK_SESSION_PREFIX = "pcf-"
SESSION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: As the config's ``timeout`` (fleet.schema.json) and a batch line's: at most a day.
MAX_TIMEOUT_S = 86400

#: Keys a JSON Lines task may have; anything else is a typo worth stopping for.
TASK_KEYS = ("id", "task", "host", "timeout", "session")

#: Tasks one batch may hold: each is a result to keep and report.
MAX_TASKS = 100_000
#: Bytes one line may have (its newline aside). A task is at most 131071 bytes
#: (`MAX_TASK_BYTES`); as a JSON string, escapes (``\u001b``) can
#: make it up to six times longer, so 1 MiB holds any task that is allowed.
MAX_LINE_BYTES = 1 << 20
#: Bytes of task text one batch may hold in all (what the run keeps in memory).
MAX_TOTAL_TASK_BYTES = 256 << 20


def task_bytes(text):
    """The task as UTF-8 bytes, or `UsageError` for text PicoClaw could never receive.

    Checked before connecting so that a too-long or malformed task costs no
    host anything: an argument cannot hold a NUL byte, and one argument may
    not exceed MAX_ARG_STRLEN on Linux.
    """
    if not text:
        raise UsageError("the task is empty: give the text with --task/-t")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("the task text is not valid UTF-8") from None
    if b"\0" in data:
        raise UsageError("the task text contains a NUL byte, which no command-line argument can carry")
    if len(data) > MAX_TASK_BYTES:
        raise UsageError(
            f"the task is {len(data)} bytes; Linux limits one argument to {MAX_TASK_BYTES} bytes (128 KiB)"
        )
    return data


def session_name(text):
    """`text` as a session name (``--session``, batch's ``session``), or `UsageError`.

    Names become PicoClaw keys ``agent:main:<name>`` and file names, so they
    are limited to letters, digits, ``_`` and ``-``; ``main`` is PicoClaw's
    own alias for its default session, so it is refused.
    """
    if not isinstance(text, str) or not SESSION_NAME.fullmatch(text):
        raise UsageError(f"session {text!r}: use 1-64 letters, digits, _ or - (e.g. --session triage)")
    if text.lower() == "main" or text.lower().startswith(TASK_SESSION_PREFIX):
        raise UsageError(f"session {text!r} is reserved: choose another name")
    return text


def check_timeout(value):
    """``--timeout`` as positive seconds; `UsageError` otherwise."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--timeout must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise UsageError(f"--timeout must be more than 0 seconds and at most {MAX_TIMEOUT_S} (a day), not {value!r}")
    return seconds


@dataclass(frozen=True)
class Task:
    """One task of the batch: its id, its text and where it may run.

    `data` is the text as the checked UTF-8 bytes PicoClaw receives;
    `position` is its place in the input (results are shown in that order);
    `where` names that place for messages (``tasks.jsonl line 7``).
    """

    id: object
    data: bytes
    position: int
    where: str
    host: str | None = None
    timeout: float | None = None
    session: str | None = None


def read_tasks(tasks_file=None, task_texts=(), stdin=None):
    """The tasks of ``--tasks-file`` (``-`` for stdin) or of the repeated ``--task``, in input order."""
    if tasks_file and task_texts:
        raise UsageError("give the tasks with --tasks-file or with --task, not both")
    if tasks_file:
        label = "stdin" if tasks_file == "-" else tasks_file
        tasks = parse_task_lines(read_lines(tasks_file, label, stdin), label)
        if not tasks:
            raise UsageError(f"{label} holds no tasks (only blank lines and # comments)")
        return tasks
    if task_texts:
        return [plain_task(text, n, n - 1, f"--task #{n}") for n, text in enumerate(task_texts, 1)]
    raise UsageError("no tasks: give --tasks-file FILE (- reads stdin) or --task TEXT (repeatable)")


def read_lines(tasks_file, label, stdin=None):
    """The file's lines as text, one at a time (``\\r\\n`` endings allowed).

    A line that is not UTF-8, or longer than `MAX_LINE_BYTES`, is a
    `UsageError` naming its line; nothing past it is read.
    """
    if tasks_file == "-":
        yield from decoded_lines((stdin or sys.stdin).buffer, label)
        return
    try:
        handle = open(tasks_file, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read tasks file {tasks_file}: {exc.strerror or exc}") from None
    with handle:
        yield from decoded_lines(handle, label, tasks_file)


def decoded_lines(stream, label, tasks_file=None):
    """Each line of the binary `stream`, decoded; see `read_lines`."""
    number = 0
    while True:
        try:
            raw = stream.readline(MAX_LINE_BYTES + 2)  # room for "\r\n"
        except OSError as exc:
            raise UsageError(f"cannot read tasks file {tasks_file or label}: {exc.strerror or exc}") from None
        number += 1
        line = raw.removesuffix(b"\n").removesuffix(b"\r")
        if len(line) > MAX_LINE_BYTES:
            raise UsageError(f"{label} line {number}: longer than {MAX_LINE_BYTES >> 20} MiB "
                             f"(a task is at most 131071 bytes)")
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"{label} line {number}: not valid UTF-8 (byte 0x{line[exc.start]:02x} "
                             f"at column {exc.start + 1})") from None
        if not raw.endswith(b"\n"):
            return


def parse_task_lines(lines, label):
    """Tasks from a file's lines: plain text, one task a line, or JSON Lines.

    The first task line decides: ``{`` starts JSON Lines, and then every task
    line must be a JSON object. Blank lines and ``#`` comments are skipped in
    both. A plain line's id is its line number, so ``line 17`` in a report
    is line 17 of the file. `lines` may be any iterable (a file read as it
    goes): at most `MAX_TASKS` tasks and `MAX_TOTAL_TASK_BYTES` of task text
    are taken, the next is a `UsageError` naming its line.
    """
    tasks, first_seen = [], {}
    json_lines = None
    total = 0
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if json_lines is None:
            json_lines = text.startswith("{")
        where = f"{label} line {number}"
        if len(tasks) >= MAX_TASKS:
            raise UsageError(f"{where}: more than {MAX_TASKS} tasks in one batch; split the file")
        position = len(tasks)
        task = json_task(line, number, position, where) if json_lines else plain_task(text, number, position, where)
        total += len(task.data)
        if total > MAX_TOTAL_TASK_BYTES:
            raise UsageError(f"{where}: the tasks add up to more than {MAX_TOTAL_TASK_BYTES >> 20} MiB; split the file")
        key = str(task.id)
        if key in first_seen:
            raise UsageError(f"{where}: id {task.id!r} is already used by {first_seen[key]}; ids must be unique")
        first_seen[key] = where
        tasks.append(task)
    return tasks


def plain_task(text, task_id, position, where):
    """A task given as bare text (a plain line, or one ``--task``)."""
    return Task(task_id, checked_bytes(text, where), position, where)


def json_task(line, number, position, where):
    """A task from one JSON Lines line: ``{"id", "task", "host", "timeout", "session"}``."""
    try:
        item = strict_json_loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: invalid JSON at column {exc.colno}: {exc.msg}") from None
    except RefusedNumber as exc:
        raise UsageError(f"{where}: invalid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{where}: JSON nested deeper than {MAX_NESTING} levels") from None
    if deepest_path(item, MAX_NESTING) is not None:
        raise UsageError(f"{where}: JSON nested deeper than {MAX_NESTING} levels")
    if not isinstance(item, dict):
        raise UsageError(f'{where}: expected a JSON object such as {{"id": "a", "task": "..."}}')
    unknown = sorted(set(item) - set(TASK_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (a task line may have {', '.join(TASK_KEYS)})")
    text = item.get("task")
    if not isinstance(text, str) or not text:
        raise UsageError(f'{where}: "task" must be a non-empty string')
    task_id = item.get("id", number)
    if isinstance(task_id, bool) or not isinstance(task_id, (str, int)) or task_id == "":
        raise UsageError(f'{where}: "id" must be a non-empty string or an integer')
    host = item.get("host")
    if host is not None and (not isinstance(host, str) or not host):
        raise UsageError(f'{where}: "host" must be a host name')
    timeout = item.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not 0 < timeout <= MAX_TIMEOUT_S):
        raise UsageError(f'{where}: "timeout" must be a number of seconds above 0 and at most {MAX_TIMEOUT_S} (a day)')
    session = item.get("session")
    if session is not None:
        try:
            session_name(session)
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
    return Task(task_id, checked_bytes(text, where), position, where, host, timeout, session)


def checked_bytes(text, where):
    """`task_bytes` (empty, NUL, too long...), its error naming the line."""

    try:
        return task_bytes(text)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc}") from None


def check_pins(tasks, entries):
    """`UsageError` for a task pinned to a host the run does not include."""
    names = [entry.name for entry in entries]
    for task in tasks:
        if task.host is not None and task.host not in names:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise UsageError(f"{task.where}: host {task.host!r} is not one of the selected hosts ({shown})")
