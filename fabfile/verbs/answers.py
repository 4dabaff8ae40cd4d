"""Showing task answers to people (dispatch and batch): one host inline, many hosts as folded blocks.

One host: PicoClaw's answer alone (no banner, no log lines, no ``🦞 ``), so
``answer=$(fab dispatch -t ...)`` captures the answer and nothing else; when
the task did not succeed, its stderr and what went wrong go to stderr.
``--raw`` shows PicoClaw's stdout exactly as it printed it instead. Many hosts: a block per
host, headed by its name, status and duration. Hosts whose results are
identical share one block listing them all (``clush -b`` style), because 40
boards giving the same answer should read as one answer, not forty.
"""

import sys

from ..core.report import summary_line
from ..host.agent import AgentResult

RULE = "----"
#: What a host shows when its task never reached PicoClaw (unreachable, not run).
NO_OUTPUT = AgentResult.nothing()


def task_output(host):
    """The `AgentResult` of a host's task (also inside dispatch's `DispatchDetails`), else `NO_OUTPUT`."""
    details = getattr(host.details, "run", host.details)
    return details if isinstance(details, AgentResult) else NO_OUTPUT


def shown_output(host, raw=False):
    """What a host's block shows of its run: the answer as a line, or (`raw`) PicoClaw's stdout."""
    output = task_output(host)
    return output.stdout if raw else ensure_newline(output.answer)


def show_inline(report, out=None, err=None, raw=False):
    """Write each host's answer (or raw stdout); on failure its stderr and status line to `err`."""
    out, err = out or sys.stdout, err or sys.stderr
    for host in report.hosts:
        write(out, shown_output(host, raw))
        if host.ok and host.message:
            write(err, f"picoclaw-fleet: {host.name}: note: {host.message}\n")
        if not host.ok:
            write(err, task_output(host).stderr)
            detail = f": {host.message}" if host.message else ""
            write(err, f"picoclaw-fleet: {host.name}: {host.status}{detail}\n")


def write(stream, text):
    """`text` as is (no newline added), flushed so a reader on a pipe sees it now."""
    if text:
        stream.write(text)
        stream.flush()


def render_blocks(report, fold=True, raw=False):
    """The broadcast view: one block per host, or per group of identical hosts, then a summary."""
    parts = []
    for group in answer_groups(report.hosts, fold, raw):
        parts.append(block_header(group))
        parts.append(block_body(group[0], raw))
    parts.append(summary_line(report) + "\n")
    return "".join(parts)


def answer_groups(hosts, fold=True, raw=False):
    """Hosts grouped by what a reader sees of them, groups in order of first appearance.

    Two hosts fold together when status, message, answer and (for a host
    that did not succeed) stderr are all equal: a successful host's stderr is
    not shown, so it must not split a block either.
    """
    if not fold:
        return [[host] for host in hosts]
    groups = {}
    for host in hosts:
        groups.setdefault(shown_result(host, raw), []).append(host)
    return list(groups.values())


def shown_result(host, raw=False):
    """What of a host's result its block shows: the key hosts fold on."""
    stderr = "" if host.ok else task_output(host).stderr
    return host.status, host.message, shown_output(host, raw), stderr


def block_header(group):
    """``---- h00, h01 (2 hosts): ok, 0.11-0.14s ----``"""
    names = ", ".join(host.name for host in group)
    if len(group) > 1:
        names += f" ({len(group)} hosts)"
    return f"{RULE} {names}: {group[0].status}, {duration_span(group)} {RULE}\n"


def duration_span(group):
    """``0.12s`` for one host or equal times, ``0.11-0.14s`` for a group."""
    low, high = min(h.duration_s for h in group), max(h.duration_s for h in group)
    return f"{low:.2f}s" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}s"


def block_body(host, raw=False):
    """The answer (or raw stdout); for a host that did not succeed, its stderr and what went wrong, marked."""
    text = ensure_newline(shown_output(host, raw))
    if host.ok and host.message:
        text += f"[note] {host.message}\n"
    if not host.ok:
        stderr = task_output(host).stderr
        text += "".join(f"[stderr] {line}\n" for line in stderr.splitlines())
        if host.message:
            text += f"[{host.status}] {host.message}\n"
    return text


def ensure_newline(text):
    """`text` ending in a newline (empty stays empty), so the next header starts a line."""
    return text if not text or text.endswith("\n") else text + "\n"
