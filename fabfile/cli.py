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

import fabfile

NAME = "picoclaw-fleet"


def package_version():
    """The installed distribution's version (the source tree's when run uninstalled)."""
    try:
        return version(NAME)
    except PackageNotFoundError:
        return "0+unknown"


def make_program():
    """Fabric's `Fab` program over our tasks, under our name and version."""
    return Fab(
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
