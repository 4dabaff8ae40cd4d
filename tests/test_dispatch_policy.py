"""Dispatch's decisions that need no host: task limits, statuses, the selection policy, folding.

The fleet-facing behaviour of the same code is tested against the real sshd
in test_dispatch.py; here each rule is pinned down on its own, including the
corners (ties, unknown loads, UTF-8 length) that a testbed cannot easily
produce on demand.
"""

import pytest

from fabfile.host.agent import (
    AgentResult,
    KILLED_EXIT,
    NOT_INSTALLED_EXIT,
    NOT_INSTALLED_MARKER,
    agent_command,
    agent_status,
)
from fabfile.core.tasks import MAX_TASK_BYTES, check_timeout, task_bytes
from fabfile.core.config import FleetConfig, HostEntry
from fabfile.core.policy import choose_worker
from fabfile.host.facts import HostFacts
from fabfile.verbs.dispatch import dispatch_targets
from fabfile.core.errors import UsageError
from fabfile.verbs.answers import answer_groups, render_blocks
from fabfile.core.report import FleetReport, HostReport

# --- the task text -----------------------------------------------------------------------------


def test_task_up_to_the_argument_limit_is_accepted_as_utf8_bytes():
    assert task_bytes("a" * MAX_TASK_BYTES) == b"a" * MAX_TASK_BYTES
    assert task_bytes("ü🦞") == "ü🦞".encode()


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("a" * (MAX_TASK_BYTES + 1), "131072 bytes; Linux limits one argument to 131071"),
        ("ü" * 65536, "131072 bytes"),  # 65536 characters, but twice as many bytes
        ("", "the task is empty"),
        (None, "the task is empty"),
        ("a\0b", "NUL byte"),
        ("\udcff", "not valid UTF-8"),  # an undecodable argv byte, as Python hands it over
    ],
)
def test_task_refused(text, complaint):
    with pytest.raises(UsageError, match=complaint.replace("(", r"\(")):
        task_bytes(text)


def test_remote_command_is_small_and_carries_no_task():
    """The text goes on stdin, so the command line is the same for every task."""
    command = agent_command(120)
    assert len(command.encode()) < 1024
    assert "timeout -k 5 120 " in command
    assert "</dev/null" in command


@pytest.mark.parametrize("value, seconds", [("30", 30.0), ("0.5", 0.5), (120, 120.0)])
def test_timeout_accepted(value, seconds):
    assert check_timeout(value) == seconds


@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf", "nan"])
def test_timeout_refused(value):
    with pytest.raises(UsageError, match="--timeout"):
        check_timeout(value)


# --- what a run's result means --------------------------------------------------------------------


@pytest.mark.parametrize(
    "exit_code, stderr, duration, local, dropped, status",
    [
        (0, "", 1.0, False, False, "ok"),
        (3, "boom", 1.0, False, False, "failed"),
        (124, "", 10.0, False, False, "timeout"),
        (KILLED_EXIT, "", 15.0, False, False, "timeout"),  # TERM ignored, KILL needed
        (KILLED_EXIT, "", 1.0, False, False, "failed"),  # killed early by someone else
        (NOT_INSTALLED_EXIT, f"{NOT_INSTALLED_MARKER}: no executable", 0.1, False, False, "not-installed"),
        (NOT_INSTALLED_EXIT, "picoclaw's own 127", 0.1, False, False, "failed"),
        (None, "", 3.0, False, True, "lost"),
        (None, "", 3.0, False, False, "failed"),  # ended by a signal, connection fine
        (None, "", 20.0, True, False, "timeout"),  # local deadline: the host stopped answering
    ],
)
def test_agent_status(exit_code, stderr, duration, local, dropped, status):
    assert agent_status(exit_code, stderr, duration, 10, local, dropped)[0] == status


# --- choosing the worker ---------------------------------------------------------------------------


def entries(n):
    return [HostEntry(name=f"pi{i}", host="127.0.0.1", user="u") for i in range(n)]


def probe(entry, load1=0.0, ncpu=4, version="0.1.0", status="ok"):
    """What the status probe found on `entry`: its `HostFacts`, None when it was not reachable."""
    if status != "ok":
        return None
    return HostFacts(arch="amd64", machine="x86_64", version=version, load1=load1, ncpu=ncpu, env_present=True)


def test_least_loaded_per_cpu_wins():
    hosts = entries(3)
    probes = [probe(hosts[0], 1.0, 2), probe(hosts[1], 1.0, 8), probe(hosts[2], 0.5, 2)]
    chosen = choose_worker(hosts, probes)
    assert chosen.entry.name == "pi1"  # 0.125 per CPU beats 0.25 and 0.5
    assert chosen.installed
    assert "least loaded (0.12 load/CPU) of 3 reachable hosts with PicoClaw" in chosen.reason


def test_tie_goes_to_first_in_config_order():
    hosts = entries(3)
    probes = [probe(hosts[0], 2.0, 4), probe(hosts[1], 1.0, 4), probe(hosts[2], 0.5, 2)]
    chosen = choose_worker(hosts, probes)
    assert chosen.entry.name == "pi1"
    assert "tied with 1 more, first in config order" in chosen.reason


def test_unknown_load_ranks_after_known_and_all_unknown_is_config_order():
    hosts = entries(3)
    probes = [probe(hosts[0], None), probe(hosts[1], 3.0, 1), probe(hosts[2], 1.0, None)]
    assert choose_worker(hosts, probes).entry.name == "pi1"
    probes = [probe(hosts[0], None), probe(hosts[1], 1.0, None), probe(hosts[2], None)]
    chosen = choose_worker(hosts, probes)
    assert chosen.entry.name == "pi0"
    assert chosen.reason.startswith("the first in config order (load unknown)")


def test_hosts_without_picoclaw_or_unreachable_are_skipped():
    hosts = entries(4)
    probes = [
        probe(hosts[0], status="unreachable"),
        probe(hosts[1], 0.0, version=None),
        probe(hosts[2], 3.0),
        probe(hosts[3], 2.0),
    ]
    chosen = choose_worker(hosts, probes)
    assert (chosen.entry.name, chosen.installed) == ("pi3", True)
    assert "of 2 reachable hosts with PicoClaw" in chosen.reason


def test_no_picoclaw_anywhere_picks_the_least_loaded_reachable_host_to_deploy_to():
    hosts = entries(3)
    probes = [
        probe(hosts[0], status="unreachable"),
        probe(hosts[1], 2.0, version=None),
        probe(hosts[2], 1.0, version=None),
    ]
    chosen = choose_worker(hosts, probes)
    assert (chosen.entry.name, chosen.installed) == ("pi2", False)
    assert "no reachable host has PicoClaw: deploying to the least loaded" in chosen.reason


def test_nothing_reachable_chooses_nothing():
    hosts = entries(2)
    assert choose_worker(hosts, [probe(h, status="unreachable") for h in hosts]) is None


# --- which hosts the flags name ------------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path):
    hosts = [HostEntry(name=n, host="127.0.0.1", user="u", tags=t) for n, t in
             [("pi1", ("kitchen",)), ("pi2", ("kitchen",)), ("nas", ())]]
    return FleetConfig(path=tmp_path / "fleet.json", hosts=hosts)


def test_targets_modes(fleet):
    assert dispatch_targets(fleet).mode == "policy"
    assert [e.name for e in dispatch_targets(fleet).entries] == ["pi1", "pi2", "nas"]
    assert dispatch_targets(fleet, host="nas").mode == "named"
    assert [e.name for e in dispatch_targets(fleet, hosts="@kitchen").entries] == ["pi1", "pi2"]
    assert dispatch_targets(fleet, all_hosts=True).mode == "broadcast"
    adhoc = dispatch_targets(fleet, host="me@127.0.0.2:2222").entries[0]
    assert (adhoc.user, adhoc.host, adhoc.port) == ("me", "127.0.0.2", 2222)


@pytest.mark.parametrize(
    "kwargs, complaint",
    [
        ({"host": "pi1", "all_hosts": True}, "--host names one host"),
        ({"host": "pi1", "hosts": "nas"}, "--host names one host"),
        ({"hosts": "nas", "all_hosts": True}, "--all or --hosts, not both"),
        ({"host": "pi*"}, "matches 2 hosts"),
        ({"host": "nope"}, "unknown host 'nope'"),
    ],
)
def test_targets_refused(fleet, kwargs, complaint):
    with pytest.raises(UsageError, match=complaint):
        dispatch_targets(fleet, **kwargs)


# --- folding identical answers ------------------------------------------------------------------------


def answer(name, status="ok", text="42", stderr="", message="", duration=0.2):
    """A host's dispatch report whose PicoClaw answered `text` (its raw stdout: banner, then the answer)."""
    stdout = f"\r\n##\n \r\n\n\U0001f99e {text}\n" if text else ""
    result = AgentResult(stdout, stderr, 0 if status == "ok" else 1, status, message, duration, answer=text)
    return HostReport(name, f"u@{name}", status, duration, message, result)


def test_identical_answers_fold_into_one_block_in_first_seen_order():
    hosts = [answer("a", duration=0.11), answer("b", text="41"), answer("c", duration=0.14),
             answer("d", "failed", "", "boom\n", "PicoClaw exited with status 3")]
    assert [[h.name for h in g] for g in answer_groups(hosts)] == [["a", "c"], ["b"], ["d"]]
    text = render_blocks(FleetReport("dispatch", hosts))
    assert text == (
        "---- a, c (2 hosts): ok, 0.11-0.14s ----\n42\n"
        "---- b: ok, 0.20s ----\n41\n"
        "---- d: failed, 0.20s ----\n[stderr] boom\n[failed] PicoClaw exited with status 3\n"
        "4 hosts: 1 failed, 3 ok\n"
    )


def test_stderr_of_a_successful_host_neither_shows_nor_splits_a_block():
    hosts = [answer("a", stderr="warning: x\n"), answer("b")]
    assert len(answer_groups(hosts)) == 1
    assert "warning" not in render_blocks(FleetReport("dispatch", hosts))


def test_failed_hosts_with_different_stderr_stay_apart():
    hosts = [answer("a", "failed", "", "disk full\n"), answer("b", "failed", "", "no key\n")]
    assert len(answer_groups(hosts)) == 2


def test_no_fold_gives_every_host_its_block():
    hosts = [answer("a"), answer("b")]
    text = render_blocks(FleetReport("dispatch", hosts), fold=False)
    assert text.count("----\n42\n") == 2
    assert "---- a: ok" in text and "---- b: ok" in text


def test_output_without_final_newline_still_starts_the_next_header_on_its_own_line():
    hosts = [answer("a", text="no newline"), answer("b", "unreachable", "", "", "connection refused")]
    text = render_blocks(FleetReport("dispatch", hosts))
    assert "no newline\n---- b: unreachable" in text
    assert "[unreachable] connection refused\n" in text


def test_raw_blocks_show_picoclaws_stdout_and_fold_on_it():
    hosts = [answer("a"), answer("b")]
    text = render_blocks(FleetReport("dispatch", hosts), raw=True)
    assert text == "---- a, b (2 hosts): ok, 0.20s ----\n\r\n##\n \r\n\n\U0001f99e 42\n2 hosts: 2 ok\n"
