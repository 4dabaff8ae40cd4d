"""``invoke <verb>``: the fleet tasks for people who use Invoke rather than Fabric.

The verbs are the fabfile's own task objects, so ``invoke deploy --hosts pi-1``
takes exactly the flags ``fab deploy --hosts pi-1`` takes and runs the same
code; only Fabric's core flags (``-i``, ``-S``) are missing, because Invoke
has none (~/.ssh/config is still read). The dev tasks run what the Makefile
runs, so there is one definition of how to test, lint and benchmark.
"""

import shlex
from pathlib import Path

from invoke import Collection, task

import fabfile

#: The Makefile's directory: the dev tasks work from any directory Invoke found tasks.py from.
ROOT = Path(__file__).resolve().parent


@task(help={"args": "Extra pytest arguments, e.g. '-k init -x'"})
def test(c, args=""):
    """Run the test suite (what `make test` runs; it starts its own sshd on 127.0.0.1)."""
    with c.cd(ROOT):
        c.run(f"make test PYTEST_ARGS={shlex.quote(args)}")


@task
def lint(c):
    """Check the code with pyflakes (what `make lint` runs)."""
    with c.cd(ROOT):
        c.run("make lint")


@task
def bench(c):
    """Run the benchmarks against a throwaway local fleet (what `make bench` runs)."""
    with c.cd(ROOT):
        c.run("make bench")


namespace = Collection.from_module(fabfile)
for dev_task in (test, lint, bench):
    namespace.add_task(dev_task)
