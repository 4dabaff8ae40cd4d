"""Smoke test of the benchmark suite: ``bench/run.py --quick`` runs end to end on its own testbed.

No time is asserted (the machine is shared and noisy); what is checked is
that every figure was measured, that the table and ``results.json`` carry
the same rows in the documented shape, and that the counters the figures
rest on hold (nothing uploaded on a re-deploy, one connection per host).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["1a", "1b", "1c", "1d", "1e", "2", "2b", "3a", "3b", "3c", "4a", "4b", "4c", "5a", "5b", "5c", "6"]
PSSH_FIGURES = {"1b", "3c"}
VERDICTS = {"pass", "MISS", "-", "error"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, guarded_env_module):
    """One ``--quick`` run shared by the tests: (CompletedProcess, parsed results.json)."""
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--out", str(out)],
        cwd=ROOT, env=guarded_env_module, capture_output=True, text=True, timeout=1200,
    )
    assert out.exists(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


@pytest.fixture(scope="module")
def guarded_env_module():
    from harness.loopback import guarded_env

    return guarded_env()


def test_every_figure_is_measured(quick_run):
    proc, results = quick_run
    rows = {row["figure"]: row for row in results["figures"]}
    assert list(rows) == FIGURES
    expected_errors = set() if results["parallel_ssh"] else PSSH_FIGURES
    errors = {f for f, row in rows.items() if row["verdict"] == "error"}
    assert errors == expected_errors, {f: rows[f].get("error") for f in errors}
    assert proc.returncode == (0 if not expected_errors else 1), proc.stderr[-3000:]


def test_rows_have_the_documented_shape(quick_run):
    _, results = quick_run
    assert results["options"]["quick"] is True and results["options"]["reps"] == 1
    assert results["command"].startswith("python bench/run.py")
    for row in results["figures"]:
        assert row["verdict"] in VERDICTS
        if row["verdict"] == "error":
            continue
        ours = row["ours"]
        reps = 5 if row["figure"].startswith("5") else 1  # CLI start is cheap: always 5 repetitions
        assert ours["n"] == reps and ours["min"] <= ours["median"] <= ours["max"]
        if row["baseline"] is not None:  # paired ratios: within what the two sides' ranges allow
            base, ratio = row["baseline"], row["ratio"]
            assert ours["min"] / base["max"] <= ratio["min"] * (1 + 1e-9)
            assert ratio["min"] <= ratio["median"] <= ratio["max"] <= ours["max"] / base["min"] * (1 + 1e-9)
        if row["goal"] is not None:
            assert row["verdict"] in {"pass", "MISS"}


def test_counters_behind_the_figures(quick_run):
    _, results = quick_run
    rows = {row["figure"]: row for row in results["figures"]}
    assert rows["3a"]["ours"]["max"] == 0 and rows["3a"]["verdict"] == "pass"  # a re-deploy uploads nothing
    assert rows["4b"]["ours"]["median"] == 4  # --quick's batch runs on 4 hosts: one connection each
    assert 0 < rows["6"]["ours"]["median"] < 1000 and rows["6"]["ours"]["unit"] == "MB"
    assert rows["5c"]["ours"]["unit"] == "ms"


def test_table_on_stdout_matches_results(quick_run):
    proc, results = quick_run
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:2] == ["FIG", "WHAT"]
    table_figures = [line.split()[0] for line in lines[1 : 1 + len(results["figures"])]]
    assert table_figures == [row["figure"] for row in results["figures"]]
    for row in results["figures"]:
        line = next(line for line in lines[1:] if line.split()[0] == row["figure"])
        assert line.rstrip().endswith(row["verdict"])


def test_testbed_is_torn_down(quick_run):
    """The run removed what it created: its sim users, its sshd's directory, its scratch directory."""
    import pwd

    _, results = quick_run
    testbed = results["testbed"]
    assert testbed["user_prefix"].startswith("pcf")
    assert [e.pw_name for e in pwd.getpwall() if e.pw_name.startswith(testbed["user_prefix"])] == []
    assert not Path(testbed["workdir"]).exists()
    assert not Path(testbed["scratch"]).exists()
