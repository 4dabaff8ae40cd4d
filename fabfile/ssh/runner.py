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


class FleetRemote(Remote):
    """Fabric's `Remote` runner, woken by the command's end rather than a 10 ms poll."""

    def wait(self):
        ended = getattr(self.channel, "status_event", None)
        if ended is None:  # a channel without the event: invoke's own polling
            return Remote.wait(self)
        while not (self.process_is_finished or self.has_dead_threads):
            ended.wait(THREAD_CHECK_S)
        return None
