"""``--outdir DIR``: each task's answer in a file of its own, as the seed wrote each host's output, and a summary.

One file per task for its answer, ``<task id>.<host>.answer``, one for its
stderr when there is any, ``<task id>.<host>.stderr``, and ``summary.json``
(the run, its summary, and per task its status and file names), as
parallel-ssh's ``-o``/``-e`` give a file per host. Names keep letters,
digits and ``. _ - @``; anything else becomes ``_`` and the name gets a
short hash of the original, so two ids never share a file.

Nothing is ever overwritten: the directory must be new or empty before the
run starts (`check_outdir`, a usage error otherwise), and every file is
created exclusively, so one that appeared meanwhile is reported, not
replaced.
"""

import hashlib
import json
import os
import re
from pathlib import Path

from .errors import UsageError

SUMMARY_FILE = "summary.json"
UNSAFE = re.compile(r"[^A-Za-z0-9._@-]")
MAX_NAME = 80


def check_outdir(directory):
    """`directory` as a `Path`, if it is new or an empty directory; `UsageError` otherwise (before any host)."""
    path = Path(directory).expanduser()
    if not str(directory).strip():
        raise UsageError("--outdir needs a directory name")
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UsageError(f"--outdir {directory}: exists and is not a directory")
        try:
            first = next(iter(sorted(os.listdir(path))), None)
        except OSError as exc:
            raise UsageError(f"--outdir {directory}: cannot read it: {exc.strerror or exc}") from None
        if first is not None:
            raise UsageError(f"--outdir {directory}: already holds {first} (files are never overwritten): "
                             "give a new or empty directory")
    return path


def safe_name(text):
    """`text` as part of a file name: unchanged when it is plain, else cleaned and given a hash of the original."""
    text = str(text)
    clean = UNSAFE.sub("_", text).lstrip(".")[:MAX_NAME] or "_"
    if clean == text:
        return clean
    return f"{clean}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def file_stem(task_id, host):
    """``<task id>.<host>``; a task that ran nowhere is ``<task id>.nohost``."""
    return f"{safe_name(task_id)}.{safe_name(host) if host else 'nohost'}"


def write_outputs(directory, head, items):
    """Write the files of `items` (task JSON objects: id, host, status, answer, stderr...) and ``summary.json``.

    `head` opens the summary (``run``, ``verb``, ``summary``). Returns the
    problems met (a file that exists, a full disk...), one line each: the
    run's results stand whatever happens here.
    """
    directory = Path(directory)
    problems = []
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"--outdir {directory}: cannot create it: {exc.strerror or exc}"]
    entries = []
    for item in items:
        stem = file_stem(item.get("id"), item.get("host"))
        entry = {key: item.get(key) for key in ("id", "host", "status", "exit_code", "duration_s", "attempts")}
        if item.get("message"):
            entry["message"] = item["message"]
        entry["answer_file"] = write_new(directory / f"{stem}.answer", item.get("answer") or "", problems)
        if item.get("stderr"):
            entry["stderr_file"] = write_new(directory / f"{stem}.stderr", item["stderr"], problems)
        entries.append(entry)
    summary = json.dumps({**head, "tasks": entries}, indent=2, ensure_ascii=False) + "\n"
    write_new(directory / SUMMARY_FILE, summary, problems)
    return problems


def write_new(path, text, problems):
    """Create `path` holding `text`; its name, or None (and a line in `problems`) when it cannot be."""
    try:
        with open(path, "x", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(text)
    except FileExistsError:
        problems.append(f"{path} already exists: left as it was")
        return None
    except OSError as exc:
        problems.append(f"cannot write {path}: {exc.strerror or exc}")
        return None
    return path.name
