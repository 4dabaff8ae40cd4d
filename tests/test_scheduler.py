"""The batch's scheduler on its own: which slot gets which task, and every task's one final status.

No SSH and no threads: each test plays the runner's part -- hosts answer
their probe or fail, slots ask for work, runs come back with a status --
and checks what the `Scheduler` decided. The same code drives ``fab batch``
on the real sshd in test_batch.py and test_batch_faults.py; here each rule
is pinned down on its own, including orders of events a testbed cannot
produce on demand.
"""

import random
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from fabfile.core.config import HostEntry
from fabfile.core.policy import choose_worker, load_rank
from fabfile.core.scheduler import NO_HOST, Scheduler
from fabfile.core.status import Status
from fabfile.core.tasks import Task


@dataclass
class Ran:
    """What the runner hands back for a run: an `AgentResult` as far as the scheduler looks."""

    status: Status
    message: str = ""
    duration_s: float = 0.1

    def to_dict(self):
        return {"answer": "", "stdout": "", "stderr": ""}


def entry(name, max_tasks=1):
    return HostEntry(name, "127.0.0.1", "pi", max_tasks=max_tasks)


def task(task_id, position, host=None):
    return Task(task_id, f"task {task_id}".encode(), position, f"--task #{position + 1}", host)


def tasks(*ids, pins=None):
    """Tasks with these ids in input order; `pins` maps an id to the host it is pinned to."""
    return [task(task_id, position, (pins or {}).get(task_id)) for position, task_id in enumerate(ids)]


def scheduler(task_list, hosts, **options):
    """A `Scheduler` over `hosts` (names, or (name, max_tasks)) whose wakes are recorded in `.woken`."""
    woken = []
    entries = [entry(*h) if isinstance(h, tuple) else entry(h) for h in hosts]
    sched = Scheduler(task_list, entries, on_wake=woken.append, **options)
    sched.woken = woken
    return sched


def host(sched, name):
    return next(h for h in sched.hosts if h.name == name)


def ready(sched, name, load1=0.0, ncpu=1):
    """`name` answered its probe with this load: its slots."""
    return sched.host_ready(host(sched, name), load1, ncpu)


def take(sched, slot):
    """The slot's thread asks for work: the task's id, or None."""
    job = sched.ask(slot)
    slot.taken = job
    return None if job is None else job.task.id


def finish(sched, slot, status=Status.OK, message=""):
    """The run the slot took comes back with `status`."""
    job, slot.taken = slot.taken, None
    sched.finished(slot, job, Ran(status, message))


def outcome(sched, task_id):
    """(status, host or None, attempts) of a task's final outcome."""
    [found] = [o for o in sched.outcomes.values() if o.task.id == task_id]
    return str(found.status), None if found.report.name == NO_HOST else found.report.name, found.attempts


# --- which host: the hold and least loaded first ------------------------------------------------------


def test_a_small_batch_waits_for_every_probe_then_the_least_loaded_win():
    sched = scheduler(tasks(1, 2), ["busy", "medium", "light", ("idle", 2)])
    waiting = ready(sched, "busy", 3.0, 1) + ready(sched, "medium", 2.0, 2) + ready(sched, "light", 0.2, 2)
    assert [take(sched, slot) for slot in waiting] == [None, None, None]
    assert all(sched.open_for(slot) for slot in waiting) and sched.woken == []
    idle = ready(sched, "idle", 0.0, 4)
    # idle: 0.00 per CPU, then 0.25 with our first task there; light: 0.10.
    assert [take(sched, slot) for slot in idle] == [1, None]
    assert [take(sched, slot) for slot in waiting] == [None, None, 2]
    assert sched.woken == [idle[0], waiting[2]]  # each slot given a task was woken, and no other


def test_a_host_failing_its_probe_releases_the_hold_too():
    sched = scheduler(tasks(1, 2), ["busy", "medium", "light", "gone"])
    slots = ready(sched, "busy", 3.0, 1) + ready(sched, "medium", 2.0, 2) + ready(sched, "light", 0.2, 2)
    assert [take(sched, slot) for slot in slots] == [None, None, None]
    sched.drop_host(host(sched, "gone"), Status.UNREACHABLE, "connection refused")
    assert [take(sched, slot) for slot in slots] == [None, 2, 1]


def test_as_many_tasks_as_slots_start_on_the_first_host_ready():
    sched = scheduler(tasks(1, 2), ["a", "b"])
    [slot] = ready(sched, "a")
    assert take(sched, slot) == 1  # b is still connecting: no point waiting, every slot gets work
    finish(sched, slot)
    assert take(sched, slot) == 2


def test_unknown_loads_rank_after_known_ones_and_ties_go_to_config_order():
    sched = scheduler(tasks(1, 2, 3), ["unknown", "b", "c", "busy"])
    slots = {name: ready(sched, name, load1, ncpu)[0]
             for name, load1, ncpu in [("unknown", None, None), ("b", 0.5, 1), ("c", 0.5, 1), ("busy", 2.0, 1)]}
    assert {name: take(sched, slot) for name, slot in slots.items()} == {"unknown": None, "b": 1, "c": 2, "busy": 3}


def test_one_task_goes_where_dispatch_would_send_it():
    """Batch and dispatch share one ranking (`policy.load_rank`): a single task lands on dispatch's choice."""
    names = [f"h{n}" for n in range(5)]
    for seed in range(50):
        rng = random.Random(seed)
        facts = [SimpleNamespace(load1=rng.choice([None, 0.0, 0.5, 1.0, rng.uniform(0, 4)]),
                                 ncpu=rng.choice([None, 1, 2, 4]), installed=True) for _ in names]
        sched = scheduler(tasks(1), names)
        slots = [ready(sched, name, f.load1, f.ncpu)[0] for name, f in zip(names, facts)]
        [chosen] = [slot.host.name for slot in slots if take(sched, slot) == 1]
        assert chosen == choose_worker([entry(name) for name in names], facts).entry.name, seed
        chosen = host(sched, chosen)
        assert chosen.rank() == load_rank(chosen.load1, chosen.ncpu, chosen.order, running=1), seed


# --- retries -------------------------------------------------------------------------------------------


def test_retries_run_a_failed_task_again_on_another_free_host():
    sched = scheduler(tasks(1), [("a", 2), "b"], retries=1)
    a1, a2 = ready(sched, "a", 0.0, 4)
    [b] = ready(sched, "b", 3.0, 4)
    assert (take(sched, a1), take(sched, a2), take(sched, b)) == (1, None, None)
    finish(sched, a1, Status.FAILED)
    assert not sched.complete
    # a's other slot is idle and a is the least loaded, but the task failed there.
    assert (take(sched, a2), take(sched, b)) == (None, 1)
    finish(sched, b)
    assert outcome(sched, 1) == ("ok", "b", 2)
    assert (host(sched, "a").tasks_run, host(sched, "b").tasks_run) == (1, 1)


def test_without_retries_a_failure_is_final():
    sched = scheduler(tasks(1), ["a", "b"])
    a, b = ready(sched, "a", 0.0, 4)[0], ready(sched, "b", 3.0, 4)[0]
    take(sched, a)
    finish(sched, a, Status.FAILED, "PicoClaw exited with status 1")
    assert sched.complete and outcome(sched, 1) == ("failed", "a", 1)
    assert sched.outcomes[0].report.message == "PicoClaw exited with status 1"
    assert take(sched, b) is None and not sched.open_for(b)


def test_retries_that_keep_timing_out_end_with_the_last_run_on_the_only_host():
    sched = scheduler(tasks(1), ["a"], retries=2)
    [slot] = ready(sched, "a")
    for _ in range(3):
        assert take(sched, slot) == 1  # no other host: the same one runs it again
        finish(sched, slot, Status.TIMEOUT)
    assert outcome(sched, 1) == ("timeout", "a", 3)
    assert take(sched, slot) is None and host(sched, "a").tasks_run == 3


def test_retries_alone_do_not_run_a_lost_task_again_and_its_host_is_dropped():
    sched = scheduler(tasks("t1", "t2"), ["a", "b"], retries=2)
    a, b = ready(sched, "a")[0], ready(sched, "b")[0]
    assert (take(sched, a), take(sched, b)) == ("t1", "t2")
    finish(sched, a, Status.LOST, "the connection dropped while the task was running")
    assert outcome(sched, "t1") == ("lost", "a", 1)
    assert host(sched, "a").status == Status.LOST
    assert host(sched, "a").message == "the connection dropped while task 't1' ran"
    assert take(sched, a) is None and not sched.open_for(a)


def test_retry_lost_runs_the_lost_task_again_on_another_host_first_in_the_queue():
    sched = scheduler(tasks("t1", "t2", "t3"), ["a", "b"], retry_lost=True)
    a, b = ready(sched, "a")[0], ready(sched, "b")[0]
    assert (take(sched, a), take(sched, b)) == ("t1", "t2")
    finish(sched, a, Status.LOST)
    assert take(sched, a) is None
    finish(sched, b)
    assert take(sched, b) == "t1"  # back at the front of the queue, before t3
    finish(sched, b)
    assert take(sched, b) == "t3"
    finish(sched, b)
    assert [outcome(sched, t) for t in ("t1", "t2", "t3")] == [("ok", "b", 2), ("ok", "b", 1), ("ok", "b", 1)]
    assert (host(sched, "a").status, host(sched, "a").tasks_run) == (Status.LOST, 1)


# --- pins ----------------------------------------------------------------------------------------------


def test_a_pinned_task_waits_for_its_host_and_never_blocks_the_tasks_behind_it():
    sched = scheduler(tasks("p", "f1", "f2", pins={"p": "b"}), ["a", "b"])
    [a] = ready(sched, "a")
    assert take(sched, a) == "f1"
    finish(sched, a)
    assert take(sched, a) == "f2"
    finish(sched, a)
    assert take(sched, a) is None and sched.open_for(a)  # p is still waiting for b
    [b] = ready(sched, "b", 9.0, 1)
    assert take(sched, b) == "p"
    finish(sched, b)
    assert [outcome(sched, t) for t in ("p", "f1", "f2")] == [("ok", "b", 1), ("ok", "a", 1), ("ok", "a", 1)]


def test_tasks_pinned_to_a_host_that_drops_end_with_its_status_and_run_nowhere_else():
    sched = scheduler(tasks("pin-a", "free", "pin-b", pins={"pin-a": "dead", "pin-b": "dead"}), ["a", "dead"])
    [a] = ready(sched, "a")
    assert take(sched, a) == "free"
    sched.drop_host(host(sched, "dead"), Status.UNREACHABLE, "connection refused (port 22)")
    for pinned in ("pin-a", "pin-b"):
        assert outcome(sched, pinned) == ("unreachable", "dead", 0)
    assert sched.outcomes[0].report.message == "pinned to dead, which is unreachable: connection refused (port 22)"
    finish(sched, a)
    assert take(sched, a) is None and sched.complete


def test_a_pinned_task_queued_behind_a_lost_run_ends_lost():
    sched = scheduler(tasks("t1", "t2", pins={"t2": "a"}), ["a", "b"])
    a, b = ready(sched, "a")[0], ready(sched, "b")[0]
    assert (take(sched, a), take(sched, b)) == ("t1", None)
    finish(sched, a, Status.LOST)
    assert outcome(sched, "t2") == ("lost", "a", 0)
    assert sched.outcomes[1].report.message == "pinned to a, which is lost: the connection dropped while task 't1' ran"


# --- slots and hosts failing ---------------------------------------------------------------------------


def test_a_refused_session_retires_the_slot_and_its_task_goes_back_while_the_host_keeps_the_others():
    sched = scheduler(tasks(1, 2, 3, 4), [("a", 3)])
    slots = ready(sched, "a")
    assert [take(sched, slot) for slot in slots] == [1, 2, 3]
    sched.slot_refused(slots[1], slots[1].taken, "the host refused an SSH session")
    a = host(sched, "a")
    assert (a.slots, a.status, a.message) == (2, Status.OK, "the host refused an SSH session")
    finish(sched, slots[0])
    assert take(sched, slots[0]) == 2  # the refused task, back at the front
    assert take(sched, slots[1]) is None and not sched.open_for(slots[1])
    for slot in (slots[0], slots[2]):
        finish(sched, slot)
    assert take(sched, slots[2]) == 4
    finish(sched, slots[2])
    assert [outcome(sched, n) for n in (1, 2, 3, 4)] == [("ok", "a", 1)] * 4
    assert a.tasks_run == 4


def test_a_host_refusing_its_last_slot_is_dropped_failed_and_the_task_goes_elsewhere_or_nowhere():
    sched = scheduler(tasks(1, 2), ["a", "b"])
    a, b = ready(sched, "a")[0], ready(sched, "b")[0]
    assert (take(sched, a), take(sched, b)) == (1, 2)
    sched.slot_refused(a, a.taken, "refused")
    assert (host(sched, "a").state, host(sched, "a").status) == ("dropped", Status.FAILED)
    finish(sched, b)
    assert take(sched, b) == 1
    sched.slot_refused(b, b.taken, "refused")
    assert outcome(sched, 1) == ("not-run", None, 0)
    assert sched.outcomes[0].report.message == "no host left to run it: a failed, b failed"


def test_a_host_dropped_between_tasks_gives_its_queued_work_to_the_others():
    sched = scheduler(tasks(1, 2, 3, 4), ["a", "b"])
    a, b = ready(sched, "a")[0], ready(sched, "b")[0]
    assert (take(sched, a), take(sched, b)) == (1, 2)
    finish(sched, a)
    assert take(sched, a) == 3
    sched.not_started(a, a.taken, Status.LOST, "the connection dropped between tasks")
    assert (host(sched, "a").status, host(sched, "a").message) == (Status.LOST, "the connection dropped between tasks")
    finish(sched, b)
    assert take(sched, b) == 3
    finish(sched, b)
    assert take(sched, b) == 4
    finish(sched, b)
    assert [outcome(sched, n) for n in (1, 2, 3, 4)] == [("ok", "a", 1), ("ok", "b", 1), ("ok", "b", 1), ("ok", "b", 1)]


def test_a_task_handed_to_a_slot_of_a_host_that_drops_before_it_started_goes_elsewhere():
    sched = scheduler(tasks(1, 2, 3), [("a", 2), "b"])
    a1, a2 = ready(sched, "a")
    assert take(sched, a1) == 1 and a2.job is not None  # handed to a2, whose thread has not picked it up yet
    sched.woken.clear()
    finish(sched, a1, Status.LOST)
    assert a2 in sched.woken  # its thread hears that its host is gone
    assert take(sched, a2) is None and host(sched, "a").running == 0
    [b] = ready(sched, "b")
    assert take(sched, b) == 2
    finish(sched, b)
    assert take(sched, b) == 3
    finish(sched, b)
    assert [outcome(sched, n) for n in (1, 2, 3)] == [("lost", "a", 1), ("ok", "b", 1), ("ok", "b", 1)]


def test_picoclaw_gone_mid_run_drops_the_host_and_the_task_runs_elsewhere_uncounted():
    sched = scheduler(tasks(1), ["a", "b"])
    a, b = ready(sched, "a", 0.0, 1)[0], ready(sched, "b", 1.0, 1)[0]
    assert (take(sched, a), take(sched, b)) == (1, None)
    finish(sched, a, Status.NOT_INSTALLED, "PicoClaw is not installed at ~/.local/bin/picoclaw")
    assert (host(sched, "a").status, host(sched, "a").tasks_run) == (Status.NOT_INSTALLED, 0)
    assert take(sched, b) == 1
    finish(sched, b)
    assert outcome(sched, 1) == ("ok", "b", 1)


def test_no_host_left_ends_every_task_not_run_naming_the_hosts():
    sched = scheduler(tasks(1, 2, 3), ["closed", "silent", "noauth"])
    sched.drop_host(host(sched, "closed"), Status.UNREACHABLE, "connection refused")
    sched.drop_host(host(sched, "silent"), Status.UNREACHABLE, "no answer within 2s")
    assert not sched.complete
    sched.drop_host(host(sched, "noauth"), Status.AUTH_FAILED, "authentication failed")
    assert [outcome(sched, n) for n in (1, 2, 3)] == [("not-run", None, 0)] * 3
    assert {o.report.message for o in sched.outcomes.values()} == {
        "no host left to run it: closed unreachable, silent unreachable, noauth auth-failed"}


def test_a_host_whose_turn_comes_after_every_task_ended_is_unused():
    sched = scheduler(tasks(1, 2), ["a", "late"])
    [a] = ready(sched, "a")
    for expected in (1, 2):
        assert take(sched, a) == expected
        finish(sched, a)
    assert sched.closed
    sched.skip_host(host(sched, "late"))
    late = host(sched, "late")
    assert (late.status, late.message) == (Status.UNUSED, "not connected: every task had ended")


# --- Ctrl-C --------------------------------------------------------------------------------------------


def test_interrupt_ends_unstarted_tasks_not_run_and_running_ones_interrupted():
    sched = scheduler(tasks(1, 2, 3, 4, 5), ["a", "b", "late"])
    a, b = ready(sched, "a")[0], ready(sched, "b")[0]
    assert (take(sched, a), take(sched, b)) == (1, 2)
    finish(sched, a)
    assert take(sched, a) == 3
    busy = sched.interrupt()
    assert [h.name for h in busy] == ["a", "b"]  # the hosts whose tasks the runner must stop
    assert [outcome(sched, n) for n in (1, 4, 5)] == [("ok", "a", 1), ("not-run", None, 0), ("not-run", None, 0)]
    assert sched.outcomes[3].report.message == "interrupted before it started"
    assert set(sched.woken) >= {a, b}  # every slot hears that the run is over
    finish(sched, b, Status.FAILED)  # TERM ended it
    assert outcome(sched, 2) == ("interrupted", "b", 1)
    assert sched.outcomes[1].report.message == "stopped by Ctrl-C while it ran"
    assert take(sched, b) is None and not sched.open_for(b)
    assert [o.task.id for o in sched.new_outcomes()] == [1, 4, 5, 2]
    sched.abandon("interrupted; could not confirm that it stopped on the host")  # task 3 never came back
    assert outcome(sched, 3) == ("interrupted", "a", 0)
    assert [o.task.id for o in sched.new_outcomes()] == [3]
    finish(sched, a)  # ... until after the run gave up on it: too late to change what was reported
    assert outcome(sched, 3) == ("interrupted", "a", 0) and sched.new_outcomes() == []
    assert (host(sched, "late").status, host(sched, "late").message) == (
        Status.INTERRUPTED, "still connecting when interrupted")
    assert sched.complete and len(sched.finish_order) == 5


def test_after_interrupt_a_task_waiting_for_a_retry_keeps_its_last_run_and_a_late_success_stays_ok():
    sched = scheduler(tasks(1, 2), ["a", "b"], retries=3)
    a, b = ready(sched, "a")[0], ready(sched, "b")[0]
    assert (take(sched, a), take(sched, b)) == (1, 2)
    finish(sched, a, Status.TIMEOUT)
    assert sched.new_outcomes() == []  # it waits for its retry
    sched.interrupt()
    [ended] = sched.new_outcomes()
    assert (ended.task.id, str(ended.status), ended.attempts) == (1, "timeout", 1)
    finish(sched, b)
    assert outcome(sched, 2) == ("ok", "b", 1)
    assert take(sched, a) is None


def test_a_host_whose_turn_comes_after_ctrl_c_is_never_contacted():
    sched = scheduler(tasks(1), ["a", "b"])
    sched.interrupt()
    assert sched.closed
    sched.skip_host(host(sched, "b"))
    assert (host(sched, "b").status, host(sched, "b").message) == (
        Status.INTERRUPTED, "not connected: the run was interrupted")


# --- every task, exactly one final status ----------------------------------------------------------------


STATUSES = [Status.OK] * 8 + [Status.FAILED, Status.TIMEOUT, Status.LOST, Status.NOT_INSTALLED]


def play(seed):
    """A random run: hosts come and go, runs end every way, sometimes a Ctrl-C; what it ended with.

    The slots behave as the runner's threads do: one that asked and got
    nothing sleeps until the scheduler wakes it (`on_wake`), so a task
    handed to a sleeping slot without a wake would leave the run stuck.
    """
    rng = random.Random(seed)
    names = [f"h{n}" for n in range(rng.randint(1, 5))]
    hosts = [(name, rng.randint(1, 3)) for name in names]
    ids = list(range(rng.randint(1, 12)))
    pins = {n: rng.choice(names) for n in ids if rng.random() < 0.2}
    retries, retry_lost = rng.randint(0, 2), rng.random() < 0.5
    sched = scheduler(tasks(*ids, pins=pins), hosts, retries=retries, retry_lost=retry_lost)
    connecting, threads, asleep, holding, streamed, runs = list(sched.hosts), [], set(), {}, [], 0
    while True:
        asleep -= set(sched.woken)
        sched.woken.clear()
        assert all(sched.open_for(slot) for slot in asleep), f"seed {seed}: a slot sleeps on, though its part is over"
        for slot in [s for s in threads if s not in holding and s not in asleep]:
            job = sched.ask(slot)
            if job is not None:
                holding[slot] = job
            elif sched.open_for(slot):
                asleep.add(slot)
            else:
                threads.remove(slot)  # its thread returns
        streamed += sched.new_outcomes()
        if sched.complete:
            break
        events = ["probe"] * 4 * bool(connecting) + ["run"] * 8 * bool(holding) + ["fault"] * bool(holding)
        events += ["unreachable"] * bool(connecting)
        assert events or sched.stopping, f"seed {seed}: tasks not final, and nothing left that could happen"
        events += ["give up"] * 4 if sched.stopping else ["ctrl-c"]
        event = rng.choice(events)
        if event == "probe":
            joining = connecting.pop(rng.randrange(len(connecting)))
            if sched.closed:
                sched.skip_host(joining)
            else:
                threads += sched.host_ready(joining, rng.choice([None, 0.1, 1.0, 2.5]), rng.choice([None, 1, 4]))
        elif event == "unreachable":
            sched.drop_host(connecting.pop(rng.randrange(len(connecting))), Status.UNREACHABLE, "refused")
        elif event == "run":
            slot = rng.choice(list(holding))
            status = rng.choice(STATUSES)
            runs += status != Status.NOT_INSTALLED
            sched.finished(slot, holding.pop(slot), Ran(status))
        elif event == "fault":
            slot = rng.choice(list(holding))
            threads.remove(slot)
            if rng.random() < 0.5:
                sched.slot_refused(slot, holding.pop(slot), "refused")
            else:
                sched.not_started(slot, holding.pop(slot), Status.LOST, "the connection dropped between tasks")
        elif event == "ctrl-c" and rng.random() < 0.1:
            sched.interrupt()
        elif event == "give up" and rng.random() < 0.5:
            sched.abandon("could not confirm that it stopped")
            for slot, job in list(holding.items())[::2]:  # some come back after all, too late to count
                status = rng.choice(STATUSES)
                runs += status != Status.NOT_INSTALLED
                sched.finished(slot, job, Ran(status))
            holding.clear()
    asleep -= set(sched.woken)
    assert not asleep, f"seed {seed}: slots left sleeping when the run ended: their threads would hang"
    return sched, streamed, pins, retries, runs


@pytest.mark.parametrize("first_seed", range(0, 400, 100))
def test_every_task_ends_with_exactly_one_final_status_whatever_happens(first_seed):
    for seed in range(first_seed, first_seed + 100):
        check_play(seed)


def check_play(seed):
    """One random run, and the promises: one final status a task, in input order, pins and retries kept."""
    sched, streamed, pins, retries, runs = play(seed)
    assert sched.complete, seed
    positions = [o.task.position for o in streamed]
    assert sorted(positions) == list(range(len(sched.tasks)))  # each task streamed once, none twice
    assert [o.task.id for o in sched.results()] == [t.id for t in sched.tasks]  # input order
    for found in sched.results():
        if found.task.host is not None:  # pinned: ran there, or ended with that host's status, or not run at all
            assert found.report.name in (found.task.host, NO_HOST), (seed, found)
        assert found.attempts <= max(1, retries) + 1, (seed, found)
        if found.status == Status.OK:
            assert found.attempts >= 1 and found.report.name != NO_HOST
    assert sum(h.tasks_run for h in sched.hosts) == runs
