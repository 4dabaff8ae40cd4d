"""fabfile/host/remote_files.py against real sim hosts: SFTP reads and writes, atomic replace, removal."""

import hashlib
import stat
import threading

import pytest

from fabfile.host import remote_files
from fabfile.host.remote_files import RemoteFileError
from harness.cli import connect
from harness.shims import set_path


@pytest.fixture(scope="module")
def rf_hosts(testbed):
    return testbed.add_hosts(3, prefix="rf")


@pytest.fixture
def cxn(testbed, rf_hosts):
    connection = connect(testbed, rf_hosts[0])
    yield connection
    connection.close()


@pytest.fixture
def host(rf_hosts):
    return rf_hosts[0]


def mode_of(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_home_is_absolute_and_paths_resolve_against_it(cxn, host):
    assert remote_files.home(cxn) == str(host.home)
    assert remote_files.absolute(cxn, ".local/bin/x") == f"{host.home}/.local/bin/x"
    assert remote_files.absolute(cxn, "/etc/hostname") == "/etc/hostname"


def test_exists_read_sha256_on_absent_and_present(testbed, cxn, host):
    assert not remote_files.exists(cxn, "rf-probe.txt")
    assert remote_files.read(cxn, "rf-probe.txt") is None
    assert remote_files.sha256(cxn, "rf-probe.txt") is None
    testbed.run_as(host, "printf 'hello fleet' > rf-probe.txt")
    assert remote_files.exists(cxn, "rf-probe.txt")
    assert remote_files.read(cxn, "rf-probe.txt") == b"hello fleet"
    assert remote_files.sha256(cxn, "rf-probe.txt") == hashlib.sha256(b"hello fleet").hexdigest()


def test_sha256_without_sha256sum_reads_over_sftp(testbed, rf_hosts):
    host = rf_hosts[2]
    testbed.run_as(host, "printf 'no tools here' > hashme")
    set_path(host, "/nonexistent")  # neither sha256sum nor shasum can be found
    connection = connect(testbed, host)
    try:
        assert connection.run("command -v sha256sum", warn=True, hide=True, in_stream=False).failed
        assert remote_files.sha256(connection, "hashme") == hashlib.sha256(b"no tools here").hexdigest()
    finally:
        connection.close()
        set_path(host, "/usr/local/bin:/usr/bin:/bin")


def test_mkdir_creates_parents_with_mode_and_keeps_existing_modes(testbed, cxn, host):
    assert remote_files.mkdir(cxn, "rf-a/b/c", 0o700)
    for part in ("rf-a", "rf-a/b", "rf-a/b/c"):
        assert mode_of(host.home / part) == 0o700
    testbed.run_as(host, "mkdir -m 0755 rf-kept")
    assert not remote_files.mkdir(cxn, "rf-kept", 0o700)
    assert mode_of(host.home / "rf-kept") == 0o755


def test_write_if_changed_writes_once_with_mode(testbed, cxn, host):
    sent = []
    remote_files.mkdir(cxn, "rf-w", 0o700)
    assert remote_files.write_if_changed(cxn, "rf-w/config", b"content one\n", 0o600, sent.append)
    path = host.home / "rf-w" / "config"
    assert path.read_bytes() == b"content one\n" and mode_of(path) == 0o600
    assert path.stat().st_uid == (host.home).stat().st_uid  # owned by the host's user
    sent.clear()
    assert not remote_files.write_if_changed(cxn, "rf-w/config", b"content one\n", 0o600, sent.append)
    assert sent == []  # unchanged: nothing uploaded
    assert remote_files.write_if_changed(cxn, "rf-w/config", b"content two\n", 0o600, sent.append)
    assert path.read_bytes() == b"content two\n" and sum(sent) == len(b"content two\n")


def test_write_into_missing_directory_is_a_clear_error(cxn):
    with pytest.raises(RemoteFileError, match=r"cannot write ~/rf-nodir/file: no such file"):
        remote_files.write_if_changed(cxn, "rf-nodir/file", b"x", 0o644)


def test_unchanged_content_with_wrong_mode_gets_mode_fixed(testbed, cxn, host):
    testbed.run_as(host, "printf same > rf-modefix && chmod 0644 rf-modefix")
    assert not remote_files.write_if_changed(cxn, "rf-modefix", b"same", 0o600)
    assert mode_of(host.home / "rf-modefix") == 0o600


def test_replace_is_atomic_and_leaves_no_temp_files(testbed, cxn, host):
    testbed.run_as(host, "mkdir -p rf-atomic && printf old > rf-atomic/f && ln rf-atomic/f rf-atomic/old-link")
    remote_files.write_if_changed(cxn, "rf-atomic/f", b"new", 0o644)
    assert (host.home / "rf-atomic" / "f").read_bytes() == b"new"
    # a rename, not an in-place rewrite: the old inode (seen via a hard link) still holds the old bytes
    assert (host.home / "rf-atomic" / "old-link").read_bytes() == b"old"
    assert sorted(p.name for p in (host.home / "rf-atomic").iterdir()) == ["f", "old-link"]


def test_write_in_unwritable_directory_is_refused_and_leaves_old_file(testbed, cxn, host):
    testbed.run_as(host, "mkdir -p rf-ro && printf keep > rf-ro/f && chmod 0555 rf-ro")
    try:
        with pytest.raises(RemoteFileError, match=r"cannot write ~/rf-ro/f: permission denied"):
            remote_files.write_if_changed(cxn, "rf-ro/f", b"replace", 0o644)
        assert (host.home / "rf-ro" / "f").read_bytes() == b"keep"
    finally:
        testbed.run_as(host, "chmod 0755 rf-ro")


def test_secret_content_never_appears_in_any_command(testbed, cxn, host):
    secret = b"TOP-SECRET-rf-7731"
    remote_files.mkdir(cxn, "rf-secret", 0o700)
    remote_files.write_if_changed(cxn, "rf-secret/.env", b"KEY=" + secret + b"\n", 0o600)
    remote_files.write_if_changed(cxn, "rf-secret/.env", b"KEY=" + secret + b"\n", 0o600)
    log = testbed.command_log(host)
    assert log and all(secret.decode() not in command for command in log)
    assert "sftp" in log


def test_concurrent_writers_leave_one_complete_file(testbed, rf_hosts):
    host = rf_hosts[1]
    testbed.run_as(host, "mkdir -p rf-race")
    contents = [bytes([65 + i]) * 200_000 for i in range(4)]
    errors = []

    def writer(data):
        connection = connect(testbed, host)
        try:
            remote_files.write_if_changed(connection, "rf-race/blob", data, 0o644)
        except Exception as exc:  # collected: the assertion below reports it
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(c,)) for c in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert (host.home / "rf-race" / "blob").read_bytes() in contents
    assert [p.name for p in (host.home / "rf-race").iterdir()] == ["blob"]


def test_remove_and_remove_tree(testbed, cxn, host):
    testbed.run_as(host, "mkdir -p rf-tree/sub && touch rf-tree/sub/x rf-single && ln -s /etc rf-tree/link")
    assert remote_files.remove(cxn, "rf-single") is True
    assert remote_files.remove(cxn, "rf-single") is False
    assert remote_files.remove_tree(cxn, "rf-tree") is True
    assert not (host.home / "rf-tree").exists()
    assert remote_files.remove_tree(cxn, "rf-tree") is False


def test_remove_tree_refuses_the_home_directory(cxn, host):
    with pytest.raises(RemoteFileError, match="refusing to remove"):
        remote_files.remove_tree(cxn, str(host.home))
    assert host.home.exists()


def test_upload_sweeps_temp_files_left_long_ago_but_not_recent_ones(testbed, cxn, host):
    testbed.run_as(host, "mkdir -p rf-sweep && cd rf-sweep && "
                         "head -c 1000 /dev/zero > .f.tmp-1-aaaaaaaaaaaa && touch -d '3 hours ago' .f.tmp-1-aaaaaaaaaaaa && "
                         "head -c 1000 /dev/zero > .f.tmp-2-bbbbbbbbbbbb && "
                         "touch -d '3 hours ago' .other.tmp-3-cccccccccccc")
    remote_files.write_if_changed(cxn, "rf-sweep/f", b"fresh", 0o644)
    left = sorted(p.name for p in (host.home / "rf-sweep").iterdir())
    assert left == [".f.tmp-2-bbbbbbbbbbbb", ".other.tmp-3-cccccccccccc", "f"]


def test_host_without_sftp_server_is_a_clear_error(testbed, rf_hosts, tmp_path):
    from dataclasses import replace

    from harness.faults import NoSftpSshd

    server = NoSftpSshd(testbed, f"sshd-nosftp-{tmp_path.name}")
    server.start()
    try:
        connection = connect(testbed, replace(rf_hosts[0], port=server.port), tmp_path / "known_hosts")
        try:
            with pytest.raises(RemoteFileError, match="no working SFTP server"):
                remote_files.exists(connection, "anything")
            assert connection.run("true", hide=True, in_stream=False).ok  # the host itself is fine
        finally:
            connection.close()
    finally:
        server.stop()
