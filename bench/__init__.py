"""The benchmark suite behind ``make bench``: our verbs against raw Fabric and the peer tools.

Run it as ``python bench/run.py`` (``--quick`` for a small smoke run). It
builds its own throwaway fleet on 127.0.0.1 with the test suite's `Testbed`,
measures, prints a table and writes ``bench/results.json`` (and figure 7's
plot, ``bench/fleet-sizes.png``). The peers -- parallel-ssh, pyinfra,
Ansible, ClusterShell, pdsh, OpenSSH -- and matplotlib are installed by
``make bench`` into ``.venv/bench-peers`` (pdsh from Debian), never ours.
"""
