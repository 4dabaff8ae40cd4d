"""Smoke test of the benchmark suite: ``bench/run.py --quick`` runs end to end on its own testbed.

No time is asserted (the machine is shared and noisy); what is checked is
that every figure was measured, that the table and ``results.json`` carry
the same rows in the documented shape, and that the counters the figures
rest on hold (nothing uploaded on a re-deploy, one connection per host).
Then the bench's own pure code, without a testbed: figure 7's table and plot
data, the peers' input files and output checks, the options.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIZE_FIGURES = [f"7{letter}/4" for letter in "abcdefghijk"]  # --quick: figure 7 at 4 hosts only
FIGURES = ["1a", "1b", "1c", "1d", "1e", "2", "2b", "2c", "3a", "3b", "3c", "4a", "4b", "4c", "4d", "5a", "5b", "5c", "6",
           *SIZE_FIGURES, "8a", "8b", "8c"]
PSSH_FIGURES = {"1b", "3c", "4d"}
#: Figure 7's row for each peer tool (7a and 7b are ours).
PEER_FIGURES = {"pyinfra": "7c/4", "parallel-ssh": "7d/4", "openssh": "7e/4", "ansible": "7f/4", "pdsh": "7g/4",
                "clush": "7h/4", "asyncssh": "7i/4", "pyinfra-default": "7k/4"}
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
    expected_errors = set() if results["parallel_ssh"] else set(PSSH_FIGURES)
    expected_errors |= {PEER_FIGURES[key] for key, missing in results["peers"].items() if missing}
    errors = {f for f, row in rows.items() if row["verdict"] == "error"}
    assert errors == expected_errors, {f: rows[f].get("error") for f in errors}
    assert proc.returncode == (0 if not expected_errors else 1), proc.stderr[-3000:]


def test_rows_have_the_documented_shape(quick_run):
    _, results = quick_run
    assert results["options"]["quick"] is True and results["options"]["reps"] == 1
    assert results["command"].startswith("python bench/run.py")
    for row in results["figures"]:
        assert row["verdict"] in VERDICTS
        if row["verdict"] == "error" or row.get("absent"):
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
    assert rows["2c"]["ours"]["unit"] == rows["2c"]["baseline"]["unit"] == "ms"  # a host's known_hosts lookup


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


def test_fleet_sizes_table_and_plot(quick_run, tmp_path):
    """Figure 7 at --quick's 4 hosts: each tool a point, the baseline first, and its PNG next to --out."""
    from bench.run import PLOT_PYTHON

    proc, results = quick_run
    table = results["fleet_sizes"]
    assert table["sizes"] == [4]
    assert [tool["label"] for tool in table["tools"]][:3] == ["ThreadingGroup script", "fab dispatch --all (CLI)",
                                                            "fab status (CLI)"]
    assert "figure 7, wall time against fleet size" in proc.stdout
    rows = {row["figure"]: row for row in results["figures"]}
    assert rows["7a/4"]["tags"] == {"tool": "dispatch", "label": "fab dispatch --all (CLI)", "hosts": 4}
    assert results["persist_built"] is True
    for figure in ("8a", "8b", "8c"):  # warm connections: measured, a warm-up run first
        assert rows[figure]["ours"]["n"] == 1 and rows[figure]["ratio"] is not None
    plotted = Path(results["options"]["plot"])
    assert plotted.exists() == PLOT_PYTHON.exists(), proc.stdout[-2000:]
    if plotted.exists():
        assert plotted.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the bench's own code, no testbed -----------------------------------------------------


def summary(median, low, high, n=3):
    return {"median": median, "min": low, "max": high, "unit": "s", "n": n}


def size_row(figure, tool, label, hosts, ours, base, ratio, error=""):
    row = {"figure": figure, "what": f"{label}, {hosts} hosts", "tags": {"tool": tool, "label": label, "hosts": hosts},
           "ours": summary(*ours) if ours else None, "baseline": summary(*base) if ours else None,
           "ratio": summary(*ratio) if ours else None}
    if error:
        row["error"] = error
    return row


def synthetic_figures():
    return [
        {"figure": "6", "what": "peak RSS", "ours": summary(60, 60, 61), "baseline": None, "ratio": None},
        size_row("7a/16", "dispatch", "fab dispatch --all (CLI)", 16, (0.8, 0.7, 0.9), (0.4, 0.4, 0.5), (2, 1.8, 2.1)),
        size_row("7c/16", "pyinfra", "pyinfra exec", 16, None, None, None, error="pyinfra is not installed: no x"),
        size_row("7e/16", "openssh", "OpenSSH + xargs", 16, (0.3, 0.3, 0.4), (0.4, 0.4, 0.5), (0.75, 0.7, 0.8)),
        size_row("7a/64", "dispatch", "fab dispatch --all (CLI)", 64, (2.0, 1.9, 2.2), (1.0, 1.0, 1.1), (2, 1.9, 2.1)),
        size_row("7c/64", "pyinfra", "pyinfra exec", 64, None, None, None, error="pyinfra is not installed: no x"),
        size_row("7e/64", "openssh", "OpenSSH + xargs", 64, (1.2, 1.1, 1.3), (1.0, 1.0, 1.1), (1.2, 1.1, 1.3)),
        {"figure": "8", "what": "warm", "ours": None, "baseline": None, "ratio": None, "absent": "not built"},
    ]


def test_pivot_puts_the_baseline_first_and_keeps_errors():
    from bench import plot

    table = plot.pivot(synthetic_figures())
    assert table["sizes"] == [16, 64]
    assert [t["key"] for t in table["tools"]] == ["threading-group", "dispatch", "pyinfra", "openssh"]
    baseline = table["tools"][0]["points"]
    assert baseline[16] == {"seconds": 0.4, "min": 0.4, "max": 0.5, "ratio": 1.0, "n": 3}
    assert table["tools"][1]["points"][64]["ratio"] == 2
    assert "error" in table["tools"][2]["points"][16]
    assert plot.pivot([{"figure": "1a", "ours": summary(1, 1, 1)}]) == {"sizes": [], "tools": []}


def test_size_table_cells_and_markdown():
    from bench import plot

    table = plot.pivot(synthetic_figures())
    assert plot.headers(table) == ["TOOL", "16 hosts", "64 hosts"]
    assert plot.table_rows(table) == [
        ["ThreadingGroup script", "1.00x (0.40 s)", "1.00x (1.00 s)"],
        ["fab dispatch --all (CLI)", "2.00x (0.80 s)", "2.00x (2.00 s)"],
        ["pyinfra exec", "not installed", "not installed"],
        ["OpenSSH + xargs", "0.75x (0.30 s)", "1.20x (1.20 s)"],
    ]
    lines = plot.markdown(table).splitlines()
    assert lines[0] == "| TOOL | 16 hosts | 64 hosts |" and lines[1] == "|---|---|---|"
    assert lines[3] == "| fab dispatch --all (CLI) | 2.00x (0.80 s) | 2.00x (2.00 s) |"
    assert plot.cell({"error": "FileNotFoundError"}) == "error" and plot.cell(None) == "-"


def test_plot_series_skip_unmeasured_tools_and_sort_fastest_first():
    from bench import plot

    table = plot.pivot(synthetic_figures())
    lines = plot.series(table)
    assert [s["key"] for s in lines] == ["threading-group", "openssh", "dispatch"]
    dispatch = lines[-1]
    assert dispatch["sizes"] == [16, 64] and dispatch["medians"] == [0.8, 2.0] and dispatch["ratios"] == [2, 2]
    assert dispatch["lows"] == [0.7, 1.9] and dispatch["highs"] == [0.9, 2.2] and dispatch["failed"] == []
    assert plot.legend_label(dispatch) == "fab dispatch --all (CLI): 2.00x, 2.00 s at 64"
    assert plot.missing(table) == ["pyinfra exec"]
    # a tool that failed at the largest size keeps its place by its last ratio, and says where it failed
    figures = synthetic_figures()
    figures[4] = size_row("7a/64", "dispatch", "fab dispatch --all (CLI)", 64, None, None, None, error="VerbFailed")
    dispatch = next(s for s in plot.series(plot.pivot(figures)) if s["key"] == "dispatch")
    assert dispatch["failed"] == [64] and plot.legend_label(dispatch).endswith("at 16 (failed at 64)")
    assert set(plot.STYLES) >= {t["key"] for t in table["tools"]}


def fake_hosts(count, address="127.0.0.1"):
    from types import SimpleNamespace

    return [SimpleNamespace(user=f"pcfabcd{i:03d}", address=address, port=40000) for i in range(count)]


def test_peer_files_reach_loopback_only_with_one_ssh_config(tmp_path):
    from bench import peers

    files = peers.SizeFiles(fake_hosts(3), tmp_path / "key", tmp_path / "known_hosts", tmp_path / "p").write()
    config = files.path("ssh_config").read_text()
    assert "Host n0002\n    HostName 127.0.0.1\n    Port 40000\n    User pcfabcd002\n" in config
    for option in ("KexAlgorithms curve25519-sha256", "StrictHostKeyChecking yes", "ControlMaster no",
                   f"UserKnownHostsFile {tmp_path / 'known_hosts'}", f"IdentityFile {tmp_path / 'key'}"):
        assert option in config
    assert files.path("hosts.txt").read_text() == "n0000\nn0001\nn0002\n"
    assert files.path("inventory.ini").read_text() == "[bench]\nn0000\nn0001\nn0002\n"
    assert f"-F {files.path('ssh_config')}" in files.path("ansible.cfg").read_text()
    namespace = {}
    exec(files.path("inventory.py").read_text(), namespace)  # pyinfra takes (name, data) tuples
    name, data = namespace["hosts"][1]
    assert name == "n0001" and data["ssh_hostname"] == "127.0.0.1" and data["ssh_user"] == "pcfabcd001"
    assert data["ssh_strict_host_key_checking"] == "yes"
    assert json.loads(files.path("hosts.json").read_text())["hosts"][0] == {
        "user": "pcfabcd000", "address": "127.0.0.1", "port": 40000}
    with pytest.raises(ValueError, match="non-loopback"):
        peers.SizeFiles(fake_hosts(1, "10.0.0.1"), tmp_path / "key", tmp_path / "kh", tmp_path / "q").write()
    assert not (tmp_path / "q").exists()


def test_every_peer_has_an_invocation_with_fanout_one_per_host(tmp_path):
    from bench import peers

    files = peers.SizeFiles(fake_hosts(5), tmp_path / "key", tmp_path / "known_hosts", tmp_path / "p")
    for peer in peers.PEERS:
        invocation = peer.invocation(files, "/usr/bin/python3")
        argv = [str(a) for a in invocation.argv]
        assert "5" in argv, (peer.key, argv)
        # the command itself, or a script of bench/scripts/ that runs it (parallel-ssh, asyncssh)
        assert "true" in argv[-2:] or argv[-1].endswith("true") or any(Path(a).parent == peers.SCRIPTS and a.endswith("_true.py") for a in argv), argv
        assert peer.key in peers.INVOCATIONS and peer.label and peer.ran
    for peer in peers.DEFAULT_FANOUT_PEERS:  # the same tools at the fanout they choose themselves
        argv = [str(a) for a in peer.invocation(files, "/usr/bin/python3").argv]
        assert "5" not in argv and "--parallel" not in argv and argv[-1] == "true", argv
    pdsh = next(p for p in peers.PEERS if p.key == "pdsh").invocation(files, "python3")
    assert pdsh.env["PDSH_SSH_ARGS"] == f"-F {files.path('ssh_config')} %h"
    assert pdsh.text().startswith("PDSH_SSH_ARGS='-F ")


def test_peer_missing_says_why(tmp_path):
    from bench import peers

    peer = peers.Peer("nosuch", "No such tool", "nothing", (tmp_path / "bin" / "nosuch",))
    assert "nosuch is not installed" in peer.missing()
    assert peers.Peer("sh", "sh", "nothing", ("/bin/sh",)).missing() is None


def test_peer_output_checks():
    from types import SimpleNamespace

    from bench import peers

    files = peers.SizeFiles(fake_hosts(2), "k", "kh", Path("/nonexistent"))
    run = SimpleNamespace(returncode=0, stdout="n0000 | CHANGED | rc=0 >>\n\nn0001 | CHANGED | rc=0 >>\n", stderr="")
    peers.expect_ansible_hosts(run, files)
    run.stdout = "n0000 | CHANGED | rc=0 >>\nn0001 | UNREACHABLE! => {}\n"
    with pytest.raises(peers.PeerFailed):
        peers.expect_ansible_hosts(run, files)
    pyinfra = SimpleNamespace(returncode=0, stdout="", stderr="    Grand total           2       2         -       -\n")
    peers.expect_pyinfra_hosts(pyinfra, files)
    pyinfra.stderr = "    Grand total           2       1         1       -\n"
    with pytest.raises(peers.PeerFailed):
        peers.expect_pyinfra_hosts(pyinfra, files)
    peers.expect_ok_count(SimpleNamespace(stdout="ok 2\n"), files)
    with pytest.raises(peers.PeerFailed):
        peers.expect_ok_count(SimpleNamespace(stdout="ok 1\n"), files)
    with pytest.raises(peers.PeerFailed, match="exited 255"):
        next(p for p in peers.PEERS if p.key == "pdsh").check(SimpleNamespace(returncode=255, stdout="", stderr="x"), files)


def test_merged_env_keeps_the_loopback_guard_first():
    from bench import peers

    env = peers.merged_env({"PYTHONPATH": "/guard", "A": "1"}, {"PYTHONPATH": Path("/pssh"), "B": 2})
    assert env == {"PYTHONPATH": "/guard:/pssh", "A": "1", "B": "2"}


def test_options_sizes_large_quick_and_plot_path(tmp_path):
    from bench import run

    options = run.parse_options(["--out", str(tmp_path / "r.json")])
    assert options.sizes == [16, 64, 256] and options.plot == tmp_path / "fleet-sizes.png"
    assert "7" in options.only and "8" in options.only
    assert run.fleet_size(options) == 256
    assert run.parse_options(["--large"]).sizes == [16, 64, 256, 512]
    assert run.fleet_size(run.parse_options(["--large", "--only", "7"])) == 512
    assert run.fleet_size(run.parse_options(["--only", "1"])) == 64
    assert run.parse_options(["--quick"]).sizes == [4]
    assert run.parse_options(["--sizes", "8,2,8"]).sizes == [2, 8]
    with pytest.raises(SystemExit):
        run.parse_options(["--sizes", "a"])


def test_fewer_repetitions_from_256_hosts():
    from bench.sizes import size_reps

    assert [size_reps(5, n) for n in (4, 16, 64, 255, 256, 512)] == [5, 5, 5, 5, 3, 3]
    assert size_reps(1, 512) == 1


def test_absent_row_is_said_never_an_error():
    from bench.results import Row

    row = Row("8", "warm", baseline_what="ThreadingGroup script", absent="not built")
    assert row.verdict == "-" and row.cells()[2] == "not built"
    assert row.to_json()["absent"] == "not built" and "error" not in row.to_json()


def test_peer_versions_come_from_what_pip_left(tmp_path):
    from bench import peers

    (tmp_path / "lib" / "site-packages" / "ansible_core-2.19.14.dist-info").mkdir(parents=True)
    assert peers.dist_version(tmp_path, "ansible_core") == "ansible_core 2.19.14"
    assert peers.dist_version(tmp_path, "pyinfra") is None
