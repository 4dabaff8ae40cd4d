"""picoclaw-fleet, run from this skill's folder: ``python3 {baseDir}/scripts/picoclaw_fleet.py <verb> ...``.

For a machine where the ``picoclaw-fleet`` console script is not installed.
The skill folder carries the program (``fabfile/``) and the Python packages it
needs (``requirements.txt``, both put there by ``make skill``). When this
Python already has those packages, at the versions required, the program runs
in it directly. Otherwise they are installed once into a private virtualenv,
``$XDG_CACHE_HOME/picoclaw-fleet/skill-<digest>`` (default ``~/.cache``), one
per set of requirements and Python, and the program runs there.

The arguments, stdout, stderr and exit codes are the console script's. What
goes wrong before the program starts (a Python too old, an incomplete folder,
an install that fails) is one line on stderr and exit 2, as the program's own
usage errors are. Nothing is written into the skill folder.

Kept to the syntax of old Pythons, so that one too old can still say so.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import venv

NAME = "picoclaw-fleet"
MIN_PYTHON = (3, 10)
BASE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(BASE, "fabfile")
REQUIREMENTS = os.path.join(BASE, "requirements.txt")
COMPLETE = ".picoclaw-fleet-complete"
#: ``name`` then comma-separated ``<op> version`` clauses: what pyproject.toml's dependencies use.
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*((?:[<>=!]=?\s*[0-9][0-9.]*\s*,?\s*)*)$")
CLAUSE = re.compile(r"([<>=!]=?)\s*([0-9][0-9.]*)")


class Refused(Exception):
    """Why the program cannot start; shown as one line, exit 2."""


def fail(message):
    sys.stderr.write("{}: {}\n".format(NAME, message))
    sys.exit(2)


def install_hint():
    return "or install the console script: uv tool install {}".format(NAME)


def requirements():
    """The requirement lines of requirements.txt (comments and blanks dropped)."""
    with open(REQUIREMENTS, encoding="utf-8") as handle:
        lines = [line.split("#", 1)[0].strip() for line in handle]
    return [line for line in lines if line]


def version_tuple(text):
    parts = re.match(r"[0-9]+(?:\.[0-9]+)*", text)
    return tuple(int(p) for p in parts.group().split(".")) if parts else None


def compare(left, right):
    """-1, 0 or 1, comparing version tuples padded with zeros."""
    width = max(len(left), len(right))
    left, right = left + (0,) * (width - len(left)), right + (0,) * (width - len(right))
    return (left > right) - (left < right)


def satisfied(requirement):
    """True when this Python has the distribution `requirement` names, at a version it allows.

    Only the forms pyproject.toml uses are understood (``name>=a,<b``); any
    other form counts as not satisfied, so the private virtualenv takes it.
    """
    from importlib import metadata

    match = REQUIREMENT.match(requirement)
    if not match:
        return False
    try:
        installed = version_tuple(metadata.version(match.group(1)))
    except metadata.PackageNotFoundError:
        return False
    if installed is None:
        return False
    tests = {"<": lambda c: c < 0, "<=": lambda c: c <= 0, ">": lambda c: c > 0, ">=": lambda c: c >= 0,
             "==": lambda c: c == 0, "!=": lambda c: c != 0}
    for op, wanted in CLAUSE.findall(match.group(2)):
        if op not in tests or not tests[op](compare(installed, version_tuple(wanted))):
            return False
    return True


def private_venv(wanted):
    """Where this Python's virtualenv for `wanted` lives: one per requirements and interpreter."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256("\n".join(wanted + [os.path.realpath(sys.executable), sys.version]).encode())
    return os.path.join(cache, NAME, "skill-" + digest.hexdigest()[:16])


def venv_python(root):
    return os.path.join(root, "bin", "python")


def build_venv(root, wanted):
    """Create the virtualenv at `root` with `wanted` installed; built aside, then moved into place."""
    staging = "{}.tmp-{}".format(root, os.getpid())
    os.makedirs(os.path.dirname(root), exist_ok=True)
    sys.stderr.write("{}: first run from the skill folder: installing {} into {}\n".format(
        NAME, ", ".join(wanted), root))
    try:
        venv.EnvBuilder(with_pip=True, clear=True, symlinks=os.name != "nt").create(staging)
    except (OSError, subprocess.CalledProcessError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise Refused("{} cannot create a virtualenv ({}; on Debian/Ubuntu: apt-get install python3-venv), {}".format(
            sys.executable, exc, install_hint()))
    # pip's progress goes to stderr: stdout belongs to the program's JSON.
    pip = subprocess.run([venv_python(staging), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          *wanted], stdout=sys.stderr, stdin=subprocess.DEVNULL)
    if pip.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise Refused("installing its Python requirements failed (pip exited {}, see above): "
                      "check the network access to PyPI, {}".format(pip.returncode, install_hint()))
    open(os.path.join(staging, COMPLETE), "w").close()
    try:
        os.rename(staging, root)
    except OSError:  # another run finished first: use its virtualenv
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.exists(os.path.join(root, COMPLETE)):
            raise Refused("cannot put the virtualenv in place at {}: remove it and run again".format(root))


def run_here():
    """Run the program from the skill folder in this Python (its requirements are met)."""
    sys.dont_write_bytecode = True  # nothing is written into the skill folder
    sys.path.insert(0, BASE)
    import fabfile

    loaded = os.path.dirname(os.path.realpath(fabfile.__file__))
    if loaded != os.path.realpath(PACKAGE):
        raise Refused("this Python loads another picoclaw-fleet ({}), not the skill's ({})".format(loaded, PACKAGE))
    from fabfile.cli import main

    sys.argv[0] = NAME
    return main()


def start():
    if sys.version_info < MIN_PYTHON:
        raise Refused("needs Python {}.{} or later; {} is {}.{} ({})".format(
            MIN_PYTHON[0], MIN_PYTHON[1], sys.executable, sys.version_info[0], sys.version_info[1], install_hint()))
    if not (os.path.isfile(os.path.join(PACKAGE, "__init__.py")) and os.path.isfile(REQUIREMENTS)):
        raise Refused("{} holds no program (fabfile/, requirements.txt): reinstall the skill, "
                      "or build it with `make skill` in a checkout".format(BASE))
    wanted = requirements()
    if all(satisfied(r) for r in wanted):
        return run_here()
    root = private_venv(wanted)
    if os.path.realpath(sys.prefix) == os.path.realpath(root):
        raise Refused("the virtualenv {} lacks {}: remove it and run again".format(
            root, ", ".join(r for r in wanted if not satisfied(r))))
    if not os.path.exists(os.path.join(root, COMPLETE)):
        build_venv(root, wanted)
    python = venv_python(root)
    os.execv(python, [python, os.path.abspath(__file__)] + sys.argv[1:])


if __name__ == "__main__":
    try:
        sys.exit(start())
    except Refused as exc:
        fail(exc)
