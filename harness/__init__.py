"""The test harness: a simulated fleet on this machine, for the tests, the benchmarks and the demo.

Not part of the product (pyproject.toml installs only ``fabfile``): it is what
``tests/``, ``bench/`` and ``demo/`` build their fleets from, so that all three
exercise picoclaw-fleet against the same real parts -- a real OpenSSH sshd on
127.0.0.1, one Unix user per simulated host, one stand-in PicoClaw, a local
release server, the fault makers -- and never against mocks of them.

One module a concept:

  testbed        Testbed and SimHost: the sshd, the users, acting on a host
  sshd           SshdServer: one private sshd process and its config
  load           a host's load and CPU count, faked in the mount namespace of its own sshd
  shims          PATH shims: a host whose `uname -m` (or PATH) is not this machine's
  faults         hosts and links that fail: silent, refusing, re-keyed, frozen, full, read-only
  standin        the stand-in PicoClaw (standin/picoclaw.py) and how it is built, packed, provisioned
  release_server a local GitHub releases API
  fake_llm       a local LLM provider for the real PicoClaw
  real_picoclaw  pytest plugin: the real PicoClaw binary, inside a loopback-only network namespace
  loopback       the network rule: 127.0.0.1, the loopback guard, in_loopback_netns
  cli            the product driven as a user drives it: `fab`, its JSON, a Connection, a terminal
  system         small root-side plumbing the other modules share

Everything here listens on and connects to 127.0.0.0/8 only. Most of it needs
root (it creates Unix users, runs sshd, mounts). Importable without pytest,
except real_picoclaw (a pytest plugin).
"""
