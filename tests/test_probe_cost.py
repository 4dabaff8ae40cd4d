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
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fabfile.host.facts import CONFIG_BYTES, PROBE_COMMAND, SECURITY_MASK, parse_probe, probe_sections
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
    ((CONFIG_FILE, SECURITY_FILE), ["head"]),  # head copies config.json; the shell masks .security.yml itself
    ((CONFIG_FILE,), ["head"]),
    ((SECURITY_FILE,), []),  # .security.yml only matters for the model a config.json selects
    ((), []),
])
def test_a_deployed_host_starts_at_most_head(shell, files, started, tmp_path):
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

    Programs that start at once (a pipeline) make strace split a call into ``execve("...", <unfinished ...>``
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


def masked(text, shell=("/bin/sh",)):
    """The probe's mask over `text` (str, or bytes as they are), as `shell` runs it."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return subprocess.run([*shell, "-c", SECURITY_MASK], input=data, capture_output=True, check=True,
                          env={"PATH": DEFAULT_PATH, "LANG": "C.UTF-8"}).stdout.decode("utf-8", "surrogateescape")


SECURITY_TEXTS = [
    "model_list:\n  claude-sonnet-4.6:0:\n    api_keys:\n    - sk-live-secret\n  gpt-5.4:0: {}\n",
    "# sk-comment\nmodel_list:\n  'q:0': {api_keys: [sk-flow]}\n  m:0:\n    api_keys: [sk-a]",  # no final newline
    "", "\n", "--- config.json\n--- security\nk: sk-x\n", "==> config.json <==\nk: sk-y\n",
    "token: \"123:abc def\"\n  -   >-\n      sk-folded\n\xff\xfe: sk-z\n",
]
CONFIG_TEXTS = ['{\n  "a": 1\n}\n', '{"a": 1}', "", "\n\n", "{not json\n", '{"k": "==> config.json <=="}\n',
                '{"k": 1}\n--- security\n']


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
            assert "sk-" not in out
            if security_text is None and "--- security" in config_text:
                continue  # not JSON, and no .security.yml: the config section ends at its own marker line
            assert shown_config == config_text[:CONFIG_BYTES]  # split at the last marker: the mask prints none
            assert shown_security == (None if security_text is None else masked(security_text, shell))
            assert "version_from=note" in out


#: What the probe ran before the mask was the shell's own (sed -E, one process more), kept as
#: the reference the shell must agree with on what PicoClaw and people write in .security.yml.
_SED_KEY_LINE = (r"""^([[:space:]]*("[^"]*"|'[^']*'|([^:#"'[:space:]]|:[^[:space:]])([^:#]|:[^[:space:]])*)"""
                 r"[[:space:]]*:)")
SED_MASK = "\n".join([
    r"/^[[:space:]]*(#|$)/d",
    r"s/^([[:space:]]*-)[[:space:]]+[^[:space:]].*$/\1 x/",
    r"/^[[:space:]]*-( x)?[[:space:]]*$/b",
    "s/" + _SED_KEY_LINE + r"""[[:space:]]+(\[\]|\{\}|""|'')[[:space:]]*(#.*)?$/\1 \5/""",
    "t",
    "s/" + _SED_KEY_LINE + r"[[:space:]]+[^[:space:]#].*$/\1 x/",
    "t",
    "s/" + _SED_KEY_LINE + r"[[:space:]]*(#.*)?$/\1/",
    "t",
    "d",
])

WRITTEN_SECURITY = (
    "# written by hand\nmodel_list:\n  \"claude-sonnet-4.6:0\":\n    api_keys: [\"sk-a\", \"sk-b\"]  # two\n"
    "  'gpt-5.4:0':\n    api_key: sk-c\n  gemini:\n    api_keys:\n      - sk-d\n      -   'sk-e'\n      -\n"
    "  empty:0: {}\n  none:0:\n  blank: ''\n  dq: \"\"\n  list: []\n  spaced : v\n\tcr: v\r\n  crkey:\r\n"
    "channel_list:\n  telegram:\n    token: \"123:abc def\"\n    settings: {a: 1}\n  -foo: bar\n  -: x\n"
    "web:\n  brave:\n    api_keys:\n    - >-\n      sk-folded\n    - |\n      sk-literal\n"
)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda argv: argv[0])
@pytest.mark.parametrize("text", [WRITTEN_SECURITY] + SECURITY_TEXTS[:2], ids=["written", "onboard", "no-newline"])
def test_the_shell_mask_gives_what_the_sed_mask_gave(shell, text):
    """What sed gave, but for a final newline the shell always ends with."""
    sed = subprocess.run(["sed", "-E", SED_MASK], input=text, capture_output=True, text=True, check=True).stdout
    assert masked(text, shell) == (sed if sed.endswith("\n") or not sed else sed + "\n")


@pytest.mark.parametrize("shell", SHELLS, ids=lambda argv: argv[0])
@pytest.mark.parametrize("line, shown", [
    ("a::: sk-1", ""), ("key:#sk-2", ""), ("a:#b: sk-3", ""),  # sed read these keys; dropped now
    ("\xff\xfe: sk-4", "\xff\xfe: x\n"),  # not UTF-8: sed dropped it, the shell masks it
    ('"unterminated: sk-5', ""), ('"a":sk-6', ""), ("'a' b: sk-7", ""), (": sk-8", ""), ("sk-9", ""),
    ("--- security", ""), ("--- config.json", ""), ("==> .security.yml <==", ""),
])
def test_lines_the_shell_mask_drops_or_reads_unlike_sed_never_show_a_value(shell, line, shown):
    assert masked(line + "\n", shell) == shown


def test_the_mask_stops_after_config_bytes_of_input():
    line = "k: v\n"
    text = line * (CONFIG_BYTES // len(line)) + "last: sk-1\n"
    shown = masked(text)
    assert shown == "k: x\n" * (CONFIG_BYTES // len(line)) and "last" not in shown


#: A YAML line as it comes: indentation, a plain or quoted key and a value after it, a list item, or a
#: line without a key (a block scalar's, a flow collection's rest); the value always holds the marker,
#: which must never come out. (A line of a block scalar that reads as a key shows that key: sed did too.)
SECRET = "SeCrEt"
_VALUE_TEXT = st.text(st.sampled_from(list(" \t:#-'\"[]{}|>x9") + ["\r"]), max_size=6)
_NO_KEY_TEXT = st.text(st.sampled_from(list(" \t#-'\"[]{}|>x9") + ["\r"]), max_size=6)
_KEYS = st.one_of(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_.:-]{0,10}\Z"),
                  st.from_regex(r'\A"[A-Za-z0-9 _.:-]{0,8}"\Z'), st.from_regex(r"\A'[A-Za-z0-9 _.:-]{0,8}'\Z"))
_LINE = st.one_of(
    st.tuples(st.sampled_from(["", "  ", "\t", "    "]), _KEYS, st.sampled_from([":", " :"]),
              st.sampled_from([" ", "  ", "\t"]), _VALUE_TEXT, _VALUE_TEXT).map(
        lambda p: p[0] + p[1] + p[2] + p[3] + p[4] + SECRET + p[5]),
    st.tuples(st.sampled_from(["", "  ", "\t"]), st.sampled_from(["- ", "-\t", "-  "]), _VALUE_TEXT).map(
        lambda p: p[0] + p[1] + p[2] + SECRET),
    st.tuples(_NO_KEY_TEXT, _NO_KEY_TEXT).map(lambda p: p[0] + SECRET + p[1]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_LINE, min_size=1, max_size=12))
@example(lines=['"": SeCrEt\t"|]-', '    "": |}|SeCrEt>x||:9', '\r- SeCrEt>'])  # a CR inside a line
def test_no_value_ever_leaves_the_mask(lines):
    text = "\n".join(lines) + "\n"
    shown = masked(text)
    assert SECRET not in shown, (text, shown)
    # a masked line (the shell's: up to a newline, a CR is just a character): a key, an item, or the
    # empty value after a key
    for line in shown.split("\n")[:-1]:
        assert line.rstrip().endswith((":", ": x", ": []", ": {}", ': ""', ": ''", "- x", "-")), (text, shown)


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
