"""parallel-ssh running ``true`` on every host, as a process of its own (figure 7).

    PYTHONPATH=.venv/bench-peers/parallel-ssh python bench/scripts/pssh_true.py HOSTS.json FANOUT

The least a parallel-ssh user would write: one ParallelSSHClient (a HostConfig
per host: they share 127.0.0.1 and differ by user), ``run_command('true')``,
join, check every exit code. Prints ``ok N`` when all N hosts exited 0, and
exits 1 otherwise. HOSTS.json as for threading_group_true.py.
"""

import json
import sys

from pssh.clients import ParallelSSHClient
from pssh.config import HostConfig


def main(path, fanout):
    with open(path) as handle:
        data = json.load(handle)
    hosts = data["hosts"]
    configs = [HostConfig(user=h["user"], port=h["port"], private_key=data["key"]) for h in hosts]
    client = ParallelSSHClient([h["address"] for h in hosts], host_config=configs, pool_size=fanout,
                               num_retries=1, timeout=60)
    output = client.run_command("true", stop_on_errors=True)
    client.join(output, consume_output=True)
    failed = [o.host for o in output if o.exit_code != 0]
    if failed or len(output) != len(hosts):
        sys.exit(f"parallel-ssh: {len(failed)} of {len(hosts)} hosts failed")
    print(f"ok {len(output)}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
