"""How a command's end is awaited: on the channel's own event, not by polling for it.

Fabric's remote runner inherits invoke's `Runner.wait`, which checks every
10 ms (``input_sleep``) whether the command has ended. With 32 commands in
flight that is 3,200 wake-ups a second, each taking the GIL from the threads
doing the SSH work, and every command ends up to 10 ms after its exit status
came. paramiko sets ``Channel.status_event`` when the exit status arrives or
the channel closes (and `persist.RemoteChannel` offers the same event), so
`FleetRemote` sleeps on that instead, and still looks at the I/O threads every
`THREAD_CHECK_S` as invoke does: a reader that died never leaves it waiting.
"""

from fabric.runners import Remote

#: How often the wait also checks that the I/O threads are alive (and a close without an event).
THREAD_CHECK_S = 0.1
#: How long the wait lets invoke's timer finish closing the channel once the command's time is up.
KILL_FINISH_S = 5.0


class FleetRemote(Remote):
    """Fabric's `Remote` runner, woken by the command's end rather than a 10 ms poll."""

    def kill(self):
        """invoke's timer ran out: close the channel (Fabric's kill), marked as under way for `wait`."""
        self.killing = True
        Remote.kill(self)

    def wait(self):
        ended = getattr(self.channel, "status_event", None)
        if ended is None:  # a channel without the event: invoke's own polling
            return Remote.wait(self)
        while not (self.process_is_finished or self.has_dead_threads):
            ended.wait(THREAD_CHECK_S)
        let_kill_finish(self)
        return None


def let_kill_finish(runner):
    """When invoke's timer is closing `runner`'s channel, wait for it to finish (at most `KILL_FINISH_S`).

    paramiko sets the event as the close begins, before the close is sent.
    Ending the wait right then would let the run carry on while the timer
    thread is still at work: invoke reads "timed out" from that thread
    having ended, so the task came back as lost, not timed out, and a
    connection closed meanwhile raised in the timer thread.
    """
    timer = getattr(runner, "_timer", None)
    if getattr(runner, "killing", False) and timer is not None:
        timer.join(KILL_FINISH_S)


#: How much `command_output` asks paramiko for at a time.
READ_BYTES = 32768


def command_output(cxn, command):
    """What `command` prints on stdout, read straight off a new session of `cxn`, undecoded bytes replaced.

    For the status probe, which every verb runs on every host and of which
    only stdout counts: Fabric's `run` starts invoke's runner for it (two I/O
    threads, a `Result`, the config looked up at every step): 0.5-1.2 ms of
    client CPU a host (README, Performance).
    The exit status is not read, nor stderr: `command` sends its stderr
    elsewhere, as unread bytes would hold the channel's window. Nothing is
    written either, not even an end of stdin (as Fabric's runner without
    ``in_stream``): over a warm connection the process may have ended the
    command and closed its socket by then, and the write would fail. The
    caller's `deadlines.deadline` bounds it like any command (closing the
    transport ends the read); over a warm connection the channel is the warm
    process's.
    """
    channel = cxn.create_session()
    try:
        channel.exec_command(command)
        chunks = []
        while chunk := channel.recv(READ_BYTES):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        channel.close()
