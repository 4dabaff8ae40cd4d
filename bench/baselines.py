"""What our verbs are measured against: the same work done with the bare tools.

Each baseline does the least a sysadmin could write by hand to reach the
same hosts -- raw Fabric, parallel-ssh, or OpenSSH's own client -- with the
same key and the same concurrency as our run, and raises when a host fails:
a baseline that quietly skipped hosts would look fast.

parallel-ssh is imported only inside its functions: it is a bench-only
extra (``make bench`` installs it next to the venv), never a dependency of
picoclaw-fleet.
"""

import subprocess


def host_strings(hosts):
    """``user@127.0.0.1:port`` for each sim host, as Fabric's Group takes them."""
    return [f"{h.user}@{h.address}:{h.port}" for h in hosts]


def connect_kwargs(key):
    """The paramiko options our own connections use for a host with an ``ssh_key``."""
    return {"key_filename": [str(key)], "look_for_keys": False}


def threading_group_run(hosts, key, command="true"):
    """``fabric.ThreadingGroup(...).run(command)``: one thread and connection per host, then close.

    Fabric raises `GroupException` when any host fails, so a result here
    means every host ran the command.
    """
    from fabric import ThreadingGroup

    group = ThreadingGroup(*host_strings(hosts), connect_kwargs=connect_kwargs(key))
    try:
        return group.run(command, hide=True, in_stream=False)
    finally:
        group.close()


def fabric_sequential_tasks(hosts, key, commands):
    """Raw Fabric's batch: one `Connection` per host, in a thread each, running its share in turn.

    `commands` are dealt out round-robin, as evenly as they go; no queue, no
    probe, no retries. This is the floor a batch on the same hosts can
    reach: what the SSH connections and the tasks themselves cost here.
    """
    from concurrent.futures import ThreadPoolExecutor

    from fabric import Connection

    shares = [commands[i :: len(hosts)] for i in range(len(hosts))]

    def run_share(host, share):
        cxn = Connection(host.address, user=host.user, port=host.port, connect_kwargs=connect_kwargs(key))
        try:
            for command in share:
                cxn.run(command, hide=True, in_stream=False)  # raises on a non-zero exit
        finally:
            cxn.close()

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(run_share, hosts, shares))


def pssh_client(hosts, key, parallel):
    """A parallel-ssh client for the sim hosts: they share 127.0.0.1, so each gets a HostConfig."""
    from pssh.clients import ParallelSSHClient
    from pssh.config import HostConfig

    configs = [HostConfig(user=h.user, port=h.port, private_key=str(key)) for h in hosts]
    return ParallelSSHClient([h.address for h in hosts], host_config=configs, pool_size=parallel,
                             num_retries=1, timeout=60)


def pssh_run(hosts, key, parallel, command="true"):
    """``ParallelSSHClient.run_command(command)`` joined; raises unless every host exited 0."""
    client = pssh_client(hosts, key, parallel)
    output = client.run_command(command, stop_on_errors=True)
    client.join(output, consume_output=True)
    failed = [o.host for o in output if o.exit_code != 0]
    if failed or len(output) != len(hosts):
        raise RuntimeError(f"parallel-ssh: {len(failed)} of {len(hosts)} hosts failed")
    del client  # parallel-ssh disconnects when the client is freed; that is part of the cost


def pssh_sequential_tasks(hosts, key, commands):
    """parallel-ssh's batch: one client, a connection per host, the tasks dealt out as `fabric_sequential_tasks` does.

    parallel-ssh runs one command per host at a time, so each host's share
    goes in rounds (``run_command`` with a command per host, joined); the
    connections stay open from one round to the next. Raises unless every
    task exited 0.
    """
    client = pssh_client(hosts, key, len(hosts))
    shares = [commands[i :: len(hosts)] for i in range(len(hosts))]
    for round_ in range(max(len(share) for share in shares)):
        turn = [share[round_] if round_ < len(share) else "true" for share in shares]
        # "%s" % task: the task verbatim; latin-1 reads any bytes (the banner's emoji may be split across reads)
        output = client.run_command("%s", host_args=turn, stop_on_errors=True, encoding="latin-1")
        client.join(output, consume_output=True)
        failed = [o.host for o in output if o.exit_code != 0]
        if failed or len(output) != len(hosts):
            raise RuntimeError(f"parallel-ssh: {len(failed)} of {len(hosts)} tasks failed in round {round_}")
    del client


def pssh_copy(hosts, key, parallel, local_file, remote_file):
    """``ParallelSSHClient.copy_file(local, remote)`` over SFTP, every greenlet joined (errors raised)."""
    import gevent

    client = pssh_client(hosts, key, parallel)
    greenlets = client.copy_file(str(local_file), remote_file)
    gevent.joinall(greenlets, raise_error=True)
    del client


def openssh_argv(host, key, known_hosts, command="true"):
    """One OpenSSH client command line: batch mode, our key, its own known_hosts file."""
    return [
        "ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "StrictHostKeyChecking=accept-new", "-o", "ConnectTimeout=30",
        "-i", str(key), "-p", str(host.port), f"{host.user}@{host.address}", command,
    ]


def openssh_run(hosts, key, known_hosts, parallel, command="true"):
    """OpenSSH's ``ssh`` launched in parallel, at most `parallel` at once; raises unless all exit 0."""
    pending = [openssh_argv(h, key, known_hosts, command) for h in hosts]
    running, failed = [], 0
    while pending or running:
        while pending and len(running) < parallel:
            running.append(subprocess.Popen(pending.pop(), stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        done = running.pop(0)  # oldest first: a bound, not a scheduler
        failed += done.wait(timeout=120) != 0
    if failed:
        raise RuntimeError(f"OpenSSH: {failed} of {len(hosts)} hosts failed")


def write_hosts_file(path, hosts, key):
    """The hosts and key as JSON, for a baseline run in a child process (``python -m bench.baselines``)."""
    import json

    data = {"key": str(key), "hosts": [{"user": h.user, "address": h.address, "port": h.port} for h in hosts]}
    path.write_text(json.dumps(data))
    return path


def main(argv=None):
    """``python -m bench.baselines threading-group HOSTS.json``: the baseline as a process of its own.

    Figure 6 measures a process's peak RSS, so the baseline needs a process
    too; it does exactly what `threading_group_run` does in the bench.
    """
    import argparse
    import json
    from types import SimpleNamespace

    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument("baseline", choices=["threading-group"])
    parser.add_argument("hosts_file")
    args = parser.parse_args(argv)
    with open(args.hosts_file) as handle:
        data = json.load(handle)
    hosts = [SimpleNamespace(**h) for h in data["hosts"]]
    threading_group_run(hosts, data["key"])


if __name__ == "__main__":
    main()
