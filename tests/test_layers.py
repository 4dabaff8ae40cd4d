"""The structure the README's Layout describes, held by the code itself.

`make lint` runs the same import-linter contracts; running them here puts
them in `make test`, so CI refuses a change that breaks a layer.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_the_import_contracts_hold():
    """verbs -> host -> ssh -> core, never upwards; the core never imports fabric, paramiko or requests."""
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout and "KEPT" in result.stdout


def test_listing_the_tasks_loads_no_ssh_or_verb_module():
    """``fab --list`` and ``--help`` import the task module only: the verbs load when a task runs."""
    probe = ("import sys, fabfile; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paramiko', 'fabric', 'jsonschema', "
             "'requests') or m.startswith('fabfile.')))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
