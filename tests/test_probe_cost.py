"""The status probe reads the version deploy noted, and still sees a binary someone else changed.

Starting the real PicoClaw for its version costs a board a 32 MB Go program
(banner included) on every ``status``; deploy leaves a note of what it
installed (``~/.picoclaw/.fleet-version``) and a hard link to that binary.
"""

import os
import pwd
import shutil
import stat
import subprocess

import pytest

from fabfile.host.facts import CONFIG_BYTES, CONFIG_SECTIONS, PROBE_COMMAND, SECURITY_MASK, parse_probe, probe_sections
from fabfile.host.paths import BINARY_PATH, CONFIG_FILE, SECURITY_FILE, VERSION_CACHE, VERSION_CACHE_BINARY
from harness.cli import API_KEY, fab, fab_json
from harness.standin import build_standin, write_picoclaw_config
from harness.testbed import DEFAULT_PATH, installed_binary

OLD_MTIME = 1_000_000_000  # 2001: what `tar -x` or `cp -p` gives a file unpacked from an old archive


def deployed_host(testbed, fleet_config, guarded_env, tmp_path):
    """A fresh host with stand-in 0.1.0 installed by ``fab deploy --from-file``, and its config."""
    [host] = testbed.add_hosts(1, prefix="pc")
    path = fleet_config(hosts=[host])
    env = {**guarded_env, "ANTHROPIC_API_KEY": API_KEY}
    binary = build_standin(tmp_path / "picoclaw-0.1.0", "0.1.0")
    result = fab(["deploy", "--config", str(path), "--from-file", str(binary), "--json"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    return host, path


def status_version(path, env):
    result, _, hosts = fab_json(["status", "--config", str(path), "--json"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    [host] = hosts.values()
    return host["version"]


def test_status_after_deploy_reads_the_note_and_never_starts_the_binary(testbed, fleet_config, guarded_env,
                                                                        tmp_path):
    host, path = deployed_host(testbed, fleet_config, guarded_env, tmp_path)
    binary = installed_binary(host)
    assert status_version(path, guarded_env) == "0.1.0"
    # Break the binary in place (same inode) and give it back its mtime: had the probe started
    # it, the version would not be 0.1.0. (This is the one change the note cannot see.)
    stat = binary.stat()
    with open(binary, "r+b") as handle:
        handle.write(b"#!/bin/false\n")
    os.utime(binary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert status_version(path, guarded_env) == "0.1.0"


def test_a_binary_unpacked_over_the_deployed_one_is_run_for_its_version(testbed, fleet_config, guarded_env,
                                                                         tmp_path):
    """A new file (another inode) is seen even with an mtime older than the note, as ``tar -x`` leaves it."""
    host, path = deployed_host(testbed, fleet_config, guarded_env, tmp_path)
    binary = installed_binary(host)
    unpacked = build_standin(binary.with_name("picoclaw.new"), "0.9.0")
    shutil.chown(unpacked, host.user, host.user)
    os.utime(unpacked, (OLD_MTIME, OLD_MTIME))
    os.replace(unpacked, binary)
    assert status_version(path, guarded_env) == "0.9.0"


def test_a_binary_rewritten_in_place_is_run_for_its_version(testbed, fleet_config, guarded_env, tmp_path):
    """Same inode, but written after the note (``cp new ~/.local/bin/picoclaw``): newer, so run."""
    host, path = deployed_host(testbed, fleet_config, guarded_env, tmp_path)
    binary = installed_binary(host)
    fresh = build_standin(tmp_path / "picoclaw-0.8.0", "0.8.0")
    with open(binary, "r+b") as handle:
        handle.write(fresh.read_bytes())
        handle.truncate()
    os.utime(binary, None)  # now: after the note
    assert status_version(path, guarded_env) == "0.8.0"


def test_a_redeploy_of_the_same_binary_writes_nothing_and_teardown_removes_the_note(testbed, fleet_config,
                                                                                   guarded_env, tmp_path):
    host, path = deployed_host(testbed, fleet_config, guarded_env, tmp_path)
    env = {**guarded_env, "ANTHROPIC_API_KEY": API_KEY}
    result, data, hosts = fab_json(["deploy", "--config", str(path), "--from-file",
                                    str(build_standin(tmp_path / "again", "0.1.0")), "--json"], env)
    assert result.returncode == 0, result.stderr
    assert (hosts[host.name]["binary"], hosts[host.name]["uploaded_bytes"]) == ("unchanged", 0)
    result = fab(["teardown", "--config", str(path), "--yes", "--json"], guarded_env)
    assert result.returncode == 0, result.stdout + result.stderr
    picoclaw_dir = host.home / ".picoclaw"
    assert not (picoclaw_dir / ".fleet-version").exists() and not (picoclaw_dir / ".fleet-binary").exists()


# --- the harness's (and the bench's) note: what a deploy leaves --------------------------------------


def note_files(host):
    """What a host's version note is: (link is the binary, note text, note mode, note owned by the user)."""
    binary, link, note = installed_binary(host), host.home / VERSION_CACHE_BINARY, host.home / VERSION_CACHE
    return (link.stat().st_ino == binary.stat().st_ino and binary.stat().st_nlink == 2, note.read_text(),
            stat.S_IMODE(note.stat().st_mode), note.stat().st_uid == pwd.getpwnam(host.user).pw_uid,
            note.stat().st_mtime_ns >= binary.stat().st_mtime_ns)


def test_install_standin_with_note_leaves_what_a_deploy_leaves_and_the_probe_trusts_it(testbed, fleet_config,
                                                                                      guarded_env, tmp_path):
    deployed, _ = deployed_host(testbed, fleet_config, guarded_env, tmp_path)
    plain, noted = testbed.add_hosts(2, prefix="pc")
    testbed.install_standin(plain, "0.1.0")
    assert not (plain.home / VERSION_CACHE).exists() and not (plain.home / VERSION_CACHE_BINARY).exists()
    testbed.install_standin(noted, "0.1.0", note=True)
    assert note_files(noted) == note_files(deployed) == (True, "0.1.0\n", 0o600, True, True)
    facts = parse_probe(testbed.run_as(noted, PROBE_COMMAND).stdout)
    assert (facts.version, facts.version_noted) == ("0.1.0", True)
    assert "version_from=note" in testbed.run_as(noted, PROBE_COMMAND).stdout
    assert not parse_probe(testbed.run_as(plain, PROBE_COMMAND).stdout).version_noted
    # Installed again (a new stand-in over the old, as the bench does), the note follows.
    testbed.install_standin(noted, "0.2.0", note=True)
    facts = parse_probe(testbed.run_as(noted, PROBE_COMMAND).stdout)
    assert (facts.version, facts.version_noted) == ("0.2.0", True)


def test_the_bench_fleet_leaves_the_note_and_status_never_starts_the_standin(testbed, fleet_config, guarded_env):
    from bench.fleet import VERSION, BenchFleet

    [host] = testbed.add_hosts(1, prefix="pc")
    fleet = object.__new__(BenchFleet)  # the bench's own method, over this session's testbed
    fleet.testbed = testbed
    fleet.install_standin([host])
    assert parse_probe(testbed.run_as(host, PROBE_COMMAND).stdout).version_noted
    # Broken in place with its mtime kept: had status started it, there would be no version.
    binary = installed_binary(host)
    times = binary.stat()
    with open(binary, "r+b") as handle:
        handle.write(b"#!/bin/false\n")
    os.utime(binary, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert status_version(fleet_config(hosts=[host]), guarded_env) == VERSION


# --- what the probe starts on the host --------------------------------------------------------------

SHELLS = [argv for argv in (["/bin/dash"], ["/bin/bash"], ["busybox", "sh"]) if shutil.which(argv[0])]


def provisioned_home(root, note=True):
    """A home as a deploy leaves it (stand-in, config.json, .security.yml, the note), owned by root."""
    binary = build_standin(root / BINARY_PATH, "0.1.0")
    write_picoclaw_config(root)
    if note:
        os.link(binary, root / VERSION_CACHE_BINARY)
        (root / VERSION_CACHE).write_text("0.1.0\n")
    return root


def run_probe(shell, home, path=DEFAULT_PATH, prefix=()):
    env = {"HOME": str(home), "PATH": path, "LANG": "C.UTF-8"}
    result = subprocess.run([*prefix, *shell, "-c", PROBE_COMMAND], env=env, cwd=home, capture_output=True,
                            stdin=subprocess.DEVNULL, check=True)
    return result.stdout.decode("utf-8", "surrogateescape")


@pytest.mark.skipif(not shutil.which("strace"), reason="needs strace")
@pytest.mark.skipif(not os.path.exists("/proc/sys/kernel/arch"), reason="needs Linux 6.1+ (/proc/sys/kernel/arch)")
@pytest.mark.parametrize("shell", SHELLS, ids=lambda argv: argv[0])
@pytest.mark.parametrize("files, started", [
    ((CONFIG_FILE, SECURITY_FILE), ["head", "sed"]),  # one head for both files, one sed masking one of them
    ((CONFIG_FILE,), ["head"]),
    ((SECURITY_FILE,), []),  # .security.yml only matters for the model a config.json selects
    ((), []),
])
def test_a_deployed_host_starts_at_most_head_and_sed(shell, files, started, tmp_path):
    """uname, the CPU count, the load and the version are the shell's own reads; no ``picoclaw version``."""
    home = provisioned_home(tmp_path)
    for name in (CONFIG_FILE, SECURITY_FILE):
        if name not in files:
            (home / name).unlink()
    log = tmp_path / "execve.log"
    run_probe(shell, home, prefix=["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", str(log)])
    assert sorted(started_programs(log)[1:]) == sorted(started), log.read_text()


def started_programs(log):
    """The programs an ``strace -f -e trace=execve`` log shows started, in order (the shell first).

    ``head | sed`` start at once: strace then splits a call into ``execve("...", <unfinished ...>``
    and ``<... execve resumed>) = 0`` lines of the same pid.
    """
    calls, started = {}, []
    for line in log.read_text().splitlines():
        pid = line.split()[0]
        if 'execve("' in line:
            calls[pid] = os.path.basename(line.split('"')[1])
        if ("execve(" in line or "execve resumed" in line) and line.rstrip().endswith("= 0"):
            started.append(calls[pid])
    return started


# --- what the probe prints, under each shell ------------------------------------------------------------


def masked(text):
    return subprocess.run(["sed", "-E", SECURITY_MASK], input=text.encode("utf-8", "surrogateescape"),
                          capture_output=True, check=True).stdout.decode("utf-8", "surrogateescape")


SECURITY_TEXTS = [
    "model_list:\n  claude-sonnet-4.6:0:\n    api_keys:\n    - sk-live-secret\n  gpt-5.4:0: {}\n",
    "# sk-comment\nmodel_list:\n  'q:0': {api_keys: [sk-flow]}\n  m:0:\n    api_keys: [sk-a]",  # no final newline
    "", "\n", "--- config.json\n--- security\nk: sk-x\n", "==> config.json <==\nk: sk-y\n",
    "token: \"123:abc def\"\n  -   >-\n      sk-folded\n\xff\xfe: sk-z\n",
]
CONFIG_TEXTS = ['{\n  "a": 1\n}\n', '{"a": 1}', "", "\n\n", "{not json\n", '{"k": "==> config.json <=="}\n']


@pytest.mark.parametrize("shell", SHELLS, ids=lambda argv: argv[0])
def test_sections_are_the_bounded_config_and_the_masked_security_under_every_shell(shell, tmp_path):
    home = provisioned_home(tmp_path)
    config, security = home / CONFIG_FILE, home / SECURITY_FILE
    for config_text in CONFIG_TEXTS + ["x" * (CONFIG_BYTES + 10)]:
        for security_text in SECURITY_TEXTS + [None]:
            config.write_bytes(config_text.encode())
            if security_text is None:
                security.unlink(missing_ok=True)
            else:
                security.write_bytes(security_text.encode("utf-8", "surrogateescape"))
            out = run_probe(shell, home)
            _, shown_config, shown_security = probe_sections(out)
            assert shown_config == config_text[:CONFIG_BYTES]
            assert shown_security == (None if security_text is None else masked(security_text))
            assert "sk-" not in out
            assert "version_from=note" in out


@pytest.mark.parametrize("sed", [["sed"]] + ([["busybox", "sed"]] if shutil.which("busybox") else []),
                         ids=lambda argv: argv[0])
@pytest.mark.parametrize("head_output", [
    # GNU head, and busybox head, when config.json could not be read: no header of its own
    "==> .security.yml <==\nk: sk-1\n",
    "\n==> .security.yml <==\nk: sk-1\n",
    # a header-like line in .security.yml is masked like the rest, or marks (spoiling the config section)
    "==> config.json <==\n{}\n\n==> .security.yml <==\nk: sk-1\n==> config.json <==\nj: sk-2\n"
    "==> .security.yml <==\nm: sk-3",
])
def test_the_config_script_never_lets_security_through_unmasked(sed, head_output):
    out = subprocess.run([*sed, "-E", CONFIG_SECTIONS], input=head_output, capture_output=True, text=True,
                         check=True).stdout
    assert "sk-" not in out
    assert out.count("--- security") == head_output.count("==> .security.yml <==")


# --- the machine: the kernel's word, uname only where the kernel has none ----------------------------


def shim(directory, name, text):
    path = directory / name
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
@pytest.mark.skipif(not os.path.exists("/proc/sys/kernel/arch"), reason="needs Linux 6.1+ (/proc/sys/kernel/arch)")
@pytest.mark.parametrize("kernel_arch, expected", [("mips\n", ("mips", "mipsle")), ("", ("riscv64", "riscv64"))])
def test_arch_is_read_from_the_kernel_and_uname_runs_only_without_it(kernel_arch, expected, tmp_path):
    """A MIPS kernel's name still takes the byte-order branch; an empty or missing one falls back to uname."""
    home = provisioned_home(tmp_path / "home")
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    shim(fakebin, "uname", 'echo riscv64\n')
    shim(fakebin, "od", "echo ' 01'\n")
    (tmp_path / "arch").write_text(kernel_arch)
    mount_then_probe = 'mount --bind "$0" /proc/sys/kernel/arch && exec "$@"'
    prefix = ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", mount_then_probe,
              str(tmp_path / "arch")]
    facts = parse_probe(run_probe(["/bin/sh"], home, f"{fakebin}:{DEFAULT_PATH}", prefix))
    assert (facts.machine, facts.arch) == expected
