"""The bare script figure 7 measures everything against: Fabric's ThreadingGroup running ``true``.

    python bench/scripts/threading_group_true.py HOSTS.json

What a sysadmin would write by hand: one ThreadingGroup over the hosts (one
thread and connection each), ``run('true')``, close. Started as a process of
its own, like every tool in the table, so its interpreter start and imports
count too. Fabric raises `GroupException` when a host fails, so ``ok N`` on
stdout means every host ran it. HOSTS.json: ``{"key": PATH, "hosts": [{"user",
"address", "port"}...]}`` (bench/peers.py writes it; every address is 127.0.0.1).
"""

import json
import sys

from fabric import ThreadingGroup


def main(path):
    with open(path) as handle:
        data = json.load(handle)
    hosts = [f"{h['user']}@{h['address']}:{h['port']}" for h in data["hosts"]]
    group = ThreadingGroup(*hosts, connect_kwargs={"key_filename": [data["key"]], "look_for_keys": False})
    try:
        results = group.run("true", hide=True, in_stream=False)
    finally:
        group.close()
    print(f"ok {len(results)}")


if __name__ == "__main__":
    main(sys.argv[1])
