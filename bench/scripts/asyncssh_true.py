"""asyncssh running ``true`` on every host, as a process of its own (figure 7).

    .venv/bench-peers/asyncssh/bin/python bench/scripts/asyncssh_true.py HOSTS.json KNOWN_HOSTS FANOUT

The least an asyncssh user would write: one coroutine per host (connect with
the key, host key checked against KNOWN_HOSTS, ``run('true', check=True)``),
at most FANOUT connections at once, all gathered on one event loop. It is
here as the transport we weighed against paramiko (README, Performance):
pure Python like paramiko, but asyncio instead of a thread per connection.
Prints ``ok N`` when all N hosts exited 0; any failure raises (exit 1).
HOSTS.json as for threading_group_true.py.
"""

import asyncio
import json
import sys

import asyncssh


async def run_true(host, key, known_hosts, gate):
    async with gate:
        async with asyncssh.connect(host["address"], port=host["port"], username=host["user"], client_keys=[key],
                                    known_hosts=known_hosts, agent_path=None) as conn:
            await conn.run("true", check=True)


async def main(path, known_hosts, fanout):
    with open(path) as handle:
        data = json.load(handle)
    key = asyncssh.read_private_key(data["key"])
    gate = asyncio.Semaphore(fanout)
    await asyncio.gather(*(run_true(h, key, known_hosts, gate) for h in data["hosts"]))
    print(f"ok {len(data['hosts'])}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
