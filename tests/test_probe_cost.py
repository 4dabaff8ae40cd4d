"""The status probe reads the version deploy noted, and still sees a binary someone else changed.

Starting the real PicoClaw for its version costs a board a 32 MB Go program
(banner included) on every ``status``; deploy leaves a note of what it
installed (``~/.picoclaw/.fleet-version``) and a hard link to that binary.
"""

import os
import shutil

from harness.cli import API_KEY, fab, fab_json
from harness.standin import build_standin
from harness.testbed import installed_binary

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
