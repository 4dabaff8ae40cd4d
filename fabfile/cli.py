"""The ``picoclaw-fleet`` console script: ``fab`` with our tasks built in.

``fab`` looks for a fabfile in the current directory and its parents, so it
only finds ours inside the repository. ``pip install .`` puts this program on
PATH instead: Fabric's own `Fab` program, given the fabfile package as its
namespace, so it runs the same tasks with the same core flags (``-i``,
``-S``, ``--list``...) from any directory.
"""

from importlib.metadata import PackageNotFoundError, version

from fabric import Config, Executor
from fabric.main import Fab
from invoke import Collection
from invoke.exceptions import ParseError

import fabfile

NAME = "picoclaw-fleet"


def package_version():
    """The installed distribution's version (the source tree's when run uninstalled)."""
    try:
        return version(NAME)
    except PackageNotFoundError:
        return "0+unknown"


class FleetProgram(Fab):
    """Fabric's `Fab`, except that a command line it cannot parse exits 2, not invoke's 1.

    An unknown verb or flag, or a flag without its value, is a mistake the
    user fixes, like every other usage error (one line, exit 2); 1 says a
    host or task failed, and an agent reading the exit code must be able to
    tell the two apart.
    """

    def parse_core(self, argv):
        with fabfile.usage_errors(ParseError):
            super().parse_core(argv)

    def parse_tasks(self):
        with fabfile.usage_errors(ParseError):
            super().parse_tasks()

    def parse_cleanup(self):
        with fabfile.usage_errors(ParseError):
            super().parse_cleanup()


def make_program():
    """Our `FleetProgram` over our tasks, under our name and version."""
    return FleetProgram(
        name=NAME,
        binary=NAME,
        version=package_version(),
        namespace=Collection.from_module(fabfile),
        executor_class=Executor,
        config_class=Config,
    )


program = make_program()


def main():
    """Console-script entry point (``[project.scripts]`` in pyproject.toml)."""
    program.run()
