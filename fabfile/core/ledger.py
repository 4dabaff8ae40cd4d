"""The run ledger: every dispatch and batch run, its tasks and their answers, in one SQLite file.

Where: ``$PICOCLAW_FLEET_LEDGER`` (a file path) when set, else
``$XDG_STATE_HOME/picoclaw-fleet/runs.sqlite``, else
``~/.local/state/picoclaw-fleet/runs.sqlite`` (`ledger_path`). The file holds
task texts and answers, so it is created ``0600`` in a ``0700`` directory.

Several ``fab`` processes may write at once (a batch, a collect, a dispatch
from another terminal): the file is in WAL mode, every write is one short
``BEGIN IMMEDIATE`` transaction, and a writer waits up to `BUSY_TIMEOUT_S`
for another's lock. Whatever goes wrong (a full disk, a read-only home, a
file that is not a ledger) is a `LedgerError` naming the file: the caller
warns and carries on, because a run must never fail for want of a record.

Two tables (`SCHEMA`): ``runs``, one row a run -- its id, verb, times,
options, config path, the run it re-runs, whether its tasks were detached,
its exit code and the rest of its ``--json`` object (``report``); and
``tasks``, one row a task -- its text, where and how it ran (host, pin,
timeout, session), its status, answer, stderr, exit code, duration,
attempts, PicoClaw version and model when known, the key of its files on
the host while it runs detached, and ``record``: the task's own ``--json``
object, from which ``fab show`` prints the run again. Nothing here knows
about SSH or verbs: rows in, rows out.
"""

import json
import os
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .detach import RUNNING
from .errors import UsageError

ENV_PATH = "PICOCLAW_FLEET_LEDGER"
#: How long a writer waits for another process's lock before giving up (and warning).
BUSY_TIMEOUT_S = 30
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE runs (
    id         TEXT PRIMARY KEY,           -- 20260613-161935-a3f2: UTC start, then 4 random hex digits
    verb       TEXT NOT NULL,              -- dispatch, batch, deploy, teardown
    started_at TEXT NOT NULL,              -- ISO 8601, UTC
    ended_at   TEXT,
    config     TEXT,                       -- the fleet config's path
    options    TEXT NOT NULL DEFAULT '{}', -- JSON: the flags that shape the run (never a secret)
    parent     TEXT,                       -- the run this one re-runs (fab rerun)
    detached   INTEGER NOT NULL DEFAULT 0, -- its tasks were started with --detach
    exit_code  INTEGER,                    -- what the run's own process exited with
    report     TEXT NOT NULL DEFAULT '{}'  -- JSON: the run's --json object, less its tasks
);
CREATE INDEX runs_by_start ON runs (started_at);
CREATE TABLE tasks (
    run_id           TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,     -- the task's place in the run's report
    task_id          TEXT NOT NULL,        -- batch: the task's id, dispatch: 1
    host             TEXT,                 -- where it ran (NULL: nowhere)
    address          TEXT,
    target           TEXT,                 -- how --hosts names that host again (a name or user@host:port)
    status           TEXT NOT NULL,        -- ok, failed, timeout, lost, ... or running (detached, not collected)
    message          TEXT NOT NULL DEFAULT '',
    text             TEXT NOT NULL,        -- the task text, as PicoClaw received it
    pin              TEXT,                 -- the host a batch task was pinned to
    timeout_s        REAL,                 -- the timeout it ran under
    session          TEXT,                 -- a named PicoClaw session it continued
    answer           TEXT NOT NULL DEFAULT '',
    stderr           TEXT NOT NULL DEFAULT '',  -- bounded (recording.FIELD_CAP)
    exit_code        INTEGER,
    duration_s       REAL,
    attempts         INTEGER,
    picoclaw_version TEXT,
    model            TEXT,
    remote_key       TEXT,                 -- detached: its files on the host (~/.picoclaw/fleet-runs/RUN/KEY.*)
    slot             TEXT,                 -- detached: the host's queue it waits in
    collected_at     TEXT,                 -- detached: when collect brought its result in
    record           TEXT NOT NULL,        -- JSON: the task's --json object (long fields bounded)
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX tasks_pending ON tasks (run_id) WHERE status = 'running';
"""

#: ``--older-than`` units.
AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The verbs whose runs have tasks (the others are one-line records).
TASK_VERBS = ("dispatch", "batch")


def use_wal(db):
    """Put a new ledger file in WAL mode, waiting up to `BUSY_TIMEOUT_S` for the others opening it.

    The switch needs the file to itself, and while another connection holds
    it SQLite answers "database is locked" at once, without the busy
    timeout: 16 threads recording into a new ledger lost one write in ~20
    tries. Once the file is in WAL mode, asking again changes nothing.
    """
    give_up = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > give_up:
                raise
            time.sleep(0.01)


class LedgerError(Exception):
    """The ledger could not be read or written; the message says which file and why, in one line."""


class RunIdTaken(LedgerError):
    """Another run already has this run's id (two processes started runs in one second and drew the same)."""


def ledger_path(environ=None):
    """Where the ledger is: ``$PICOCLAW_FLEET_LEDGER``, else under ``$XDG_STATE_HOME``, else ``~/.local/state``.

    The XDG base directory spec ignores a relative ``$XDG_STATE_HOME``, and so do we.
    """
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_PATH, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    state = environ.get("XDG_STATE_HOME", "").strip()
    base = Path(state) if state and Path(state).is_absolute() else Path("~/.local/state").expanduser()
    return base / "picoclaw-fleet" / "runs.sqlite"


def utc_now():
    """Now, in UTC (aware)."""
    return datetime.now(timezone.utc)


def iso(moment):
    """``2026-06-13T16:19:35.123Z``: how the ledger writes a time (sorts as it reads)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text):
    """The aware datetime of an `iso` string (None stays None)."""
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


#: The run ids this process has handed out (`new_run_id`), and the lock that orders the threads drawing them.
_ISSUED, _ISSUED_LOCK = set(), threading.Lock()


def new_run_id(started=None):
    """A short id that sorts by start time: ``20260613-161935-a3f2`` (UTC, then 4 random hex digits).

    Never the same twice in one process: 16 bits of suffix give 16 runs
    started in one second the same id about once in 500 draws. Another
    process may still draw one of ours; `Ledger.record` refuses it
    (`RunIdTaken`), and `recording.Recorder` draws again.
    """
    stamp = (started or utc_now()).strftime("%Y%m%d-%H%M%S")
    with _ISSUED_LOCK:
        while (run_id := f"{stamp}-{secrets.token_hex(2)}") in _ISSUED:
            pass
        _ISSUED.add(run_id)
    return run_id


def age_seconds(text):
    """``--older-than 30d`` in seconds (``s``, ``m``, ``h``, ``d``, ``w``); `UsageError` otherwise."""
    match = re.fullmatch(r"(\d{1,6})([smhdw])", (text or "").strip())
    if not match:
        raise UsageError(f"--older-than {text!r}: expected a number and a unit, e.g. 30d, 12h, 2w (s, m, h, d, w)")
    return int(match.group(1)) * AGE_UNITS[match.group(2)]


@dataclass
class Run:
    """One row of ``runs`` (`options` and `report` as dicts)."""

    id: str
    verb: str
    started_at: str
    ended_at: str | None = None
    config: str | None = None
    options: dict = field(default_factory=dict)
    parent: str | None = None
    detached: bool = False
    exit_code: int | None = None
    report: dict = field(default_factory=dict)


@dataclass
class TaskRow:
    """One row of ``tasks`` (`record` as a dict): a task, where and how it ran, and what it gave."""

    seq: int
    task_id: str
    status: str
    text: str
    record: dict
    host: str | None = None
    address: str | None = None
    target: str | None = None
    message: str = ""
    pin: str | None = None
    timeout_s: float | None = None
    session: str | None = None
    answer: str = ""
    stderr: str = ""
    exit_code: int | None = None
    duration_s: float | None = None
    attempts: int | None = None
    picoclaw_version: str | None = None
    model: str | None = None
    remote_key: str | None = None
    slot: str | None = None
    collected_at: str | None = None
    run_id: str | None = None

    @property
    def pending(self):
        """True while the task runs detached and its result has not been collected."""
        return self.status == RUNNING


RUN_JSON, TASK_JSON = ("options", "report"), ("record",)
RUN_COLUMNS = [f.name for f in fields(Run)]
TASK_COLUMNS = [f.name for f in fields(TaskRow)]


def run_from_row(row):
    data = dict(row)
    for name in RUN_JSON:
        data[name] = json.loads(data[name] or "{}")
    data["detached"] = bool(data["detached"])
    return Run(**{name: data[name] for name in RUN_COLUMNS})


def task_from_row(row):
    data = dict(row)
    data["record"] = json.loads(data["record"] or "{}")
    return TaskRow(**{name: data[name] for name in TASK_COLUMNS})


def column_values(obj, names, json_names):
    """The row values of a `Run` or `TaskRow`, dicts as JSON text."""
    values = []
    for name in names:
        value = getattr(obj, name)
        values.append(json.dumps(value, ensure_ascii=False) if name in json_names else value)
    return values


class Ledger:
    """The ledger file at `path` (default `ledger_path`): record runs, read them back, settle collected tasks.

    Every method opens the file, does one transaction and closes it again,
    so an instance may be shared by threads and processes alike.
    """

    def __init__(self, path=None):
        self.path = Path(path) if path is not None else ledger_path()

    # -- the file --

    @contextmanager
    def _open(self, write=True):
        """A connection with the schema in place, in one transaction (``BEGIN IMMEDIATE`` for a write).

        Any SQLite or file-system error becomes a `LedgerError` naming the file.
        """
        try:
            if write:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                if not self.path.exists():
                    os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                db.row_factory = sqlite3.Row
                db.execute("PRAGMA foreign_keys = ON")
                self._ensure_schema(db, write)
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield db
                db.execute("COMMIT")
            finally:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                db.close()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path}: {exc}") from None
        except OSError as exc:
            raise LedgerError(f"ledger {self.path}: {exc.strerror or exc}") from None

    def _ensure_schema(self, db, write):
        """Create the tables in a new file (WAL, incremental vacuum); refuse a file from a newer version."""
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(f"ledger {self.path} was written by a newer picoclaw-fleet (schema {version})")
        if version == SCHEMA_VERSION:
            return
        if not write:
            raise LedgerError(f"ledger {self.path} is not a picoclaw-fleet ledger (or is empty)")
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect before the first table
        use_wal(db)
        db.execute("BEGIN IMMEDIATE")
        if db.execute("PRAGMA user_version").fetchone()[0] == 0:  # another process may have won the race
            if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                db.execute("ROLLBACK")
                raise LedgerError(f"ledger {self.path} is an SQLite file of something else: move it away")
            for statement in SCHEMA.split(";"):  # (no ';' inside the schema's comments)
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")

    @property
    def exists(self):
        """True when the ledger file is there (reading a missing one finds no runs and creates nothing)."""
        return self.path.exists()

    def check_writable(self):
        """Open the ledger for writing, creating it if need be; `LedgerError` when that cannot be done."""
        with self._open(write=True):
            pass

    # -- writing --

    def record(self, run, tasks=()):
        """Add `run` (a `Run`) and its `TaskRow`s, in one transaction; `RunIdTaken` when its id is another run's."""
        with self._open() as db:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", (run.id,)).fetchone():  # under BEGIN IMMEDIATE's lock
                raise RunIdTaken(f"ledger {self.path}: another run has the id {run.id}")
            db.execute(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                       column_values(run, RUN_COLUMNS, RUN_JSON))
            names = [name for name in TASK_COLUMNS if name != "run_id"]
            db.executemany(
                f"INSERT INTO tasks (run_id, {', '.join(names)}) VALUES (?, {', '.join('?' * len(names))})",
                [[run.id, *column_values(task, names, TASK_JSON)] for task in tasks])

    def settle(self, run_id, task):
        """Write what collect learned of a detached task (a `TaskRow`) over its pending row.

        Only a row still pending is changed, so two collects at once record
        a result once; True when this call did.
        """
        names = [name for name in TASK_COLUMNS if name not in ("run_id", "seq", "task_id", "text")]
        assignments = ", ".join(f"{name} = ?" for name in names)
        with self._open() as db:
            cursor = db.execute(
                f"UPDATE tasks SET {assignments} WHERE run_id = ? AND seq = ? AND status = ?",
                [*column_values(task, names, TASK_JSON), run_id, task.seq, RUNNING])
            if cursor.rowcount and task.status != RUNNING:
                left = db.execute("SELECT count(*) FROM tasks WHERE run_id = ? AND status = ?",
                                  (run_id, RUNNING)).fetchone()[0]
                if not left:
                    db.execute("UPDATE runs SET ended_at = ? WHERE id = ?", (iso(utc_now()), run_id))
            return bool(cursor.rowcount)

    def prune(self, older_than_s, now=None):
        """Delete the runs started more than `older_than_s` ago; (deleted, kept because still pending).

        A run with tasks not yet collected is kept: its answers are still on
        the hosts, and collect needs its record to fetch them.
        """
        cutoff = iso((now or utc_now()) - timedelta(seconds=older_than_s))
        if not self.exists:
            return 0, 0
        pending = "SELECT run_id FROM tasks WHERE status = ?"
        with self._open() as db:
            kept = db.execute(f"SELECT count(*) FROM runs WHERE started_at < ? AND id IN ({pending})",
                              (cutoff, RUNNING)).fetchone()[0]
            deleted = db.execute(f"DELETE FROM runs WHERE started_at < ? AND id NOT IN ({pending})",
                                 (cutoff, RUNNING)).rowcount
        if deleted:
            with self._open() as db:
                db.execute("PRAGMA incremental_vacuum")
        return deleted, kept

    # -- reading --

    def runs(self, limit=None):
        """The newest runs first (all when `limit` is falsy): (`Run`, {status: count of its tasks}) pairs."""
        if not self.exists:
            return []
        with self._open(write=False) as db:
            query = "SELECT * FROM runs ORDER BY started_at DESC, id DESC" + (" LIMIT ?" if limit else "")
            runs = [run_from_row(row) for row in db.execute(query, (limit,) if limit else ())]
            counts = {run.id: {} for run in runs}
            for run in runs:
                for row in db.execute("SELECT status, count(*) AS n FROM tasks WHERE run_id = ? GROUP BY status",
                                      (run.id,)):
                    counts[run.id][row["status"]] = row["n"]
        return [(run, counts[run.id]) for run in runs]

    def resolve(self, ref):
        """The id of the run `ref` names: an id, a unique prefix of one, or ``last`` (the newest dispatch or batch).

        `UsageError` when it names none, or several.
        """
        ref = (ref or "").strip()
        if not ref:
            raise UsageError("name a run: its id (see fab runs), a unique prefix of it, or last")
        if ref.startswith("-"):  # invoke takes the word after the verb as the run, even --help
            raise UsageError(f"{ref!r} is not a run: for a verb's options put --help first (fab --help show)")
        if not self.exists:
            raise UsageError(f"unknown run {ref!r}: no run is recorded yet ({self.path})")
        with self._open(write=False) as db:
            if ref == "last":
                row = db.execute(f"SELECT id FROM runs WHERE verb IN {TASK_VERBS} "
                                 "ORDER BY started_at DESC, id DESC LIMIT 1").fetchone()
                if row is None:
                    raise UsageError("no dispatch or batch run is recorded yet: 'last' names none")
                return row["id"]
            pattern = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            ids = [row["id"] for row in db.execute(
                "SELECT id FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 6", (ref, pattern))]
        if ref in ids:
            return ref
        if not ids:
            raise UsageError(f"unknown run {ref!r}: see fab runs for the recorded ones")
        if len(ids) > 1:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise UsageError(f"run {ref!r} is ambiguous: it starts {shown}; give more of the id")
        return ids[0]

    def load(self, run_id):
        """The `Run` and its `TaskRow`s in report order; `UsageError` for an unknown id."""
        if not self.exists:
            raise UsageError(f"unknown run {run_id!r}")
        with self._open(write=False) as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise UsageError(f"unknown run {run_id!r}: see fab runs for the recorded ones")
            tasks = [task_from_row(r) for r in db.execute("SELECT * FROM tasks WHERE run_id = ? ORDER BY seq",
                                                          (run_id,))]
        return run_from_row(row), tasks

    def pending(self, run_ids):
        """{run id: (`Run`, its pending `TaskRow`s)} for those of `run_ids` that have any (the rest unread)."""
        if not self.exists:
            return {}
        found = {}
        with self._open(write=False) as db:
            for run_id in run_ids:
                tasks = [task_from_row(row) for row in db.execute(
                    "SELECT * FROM tasks WHERE run_id = ? AND status = ? ORDER BY seq", (run_id, RUNNING))]
                if tasks:
                    run = run_from_row(db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())
                    found[run_id] = (run, tasks)
        return found

    def pending_runs(self):
        """The ids of every run with tasks not yet collected, oldest first."""
        if not self.exists:
            return []
        with self._open(write=False) as db:
            return [row["run_id"] for row in db.execute(
                "SELECT DISTINCT tasks.run_id FROM tasks JOIN runs ON runs.id = tasks.run_id "
                "WHERE tasks.status = ? ORDER BY runs.started_at, runs.id", (RUNNING,))]
