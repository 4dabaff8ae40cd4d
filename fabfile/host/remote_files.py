"""Remote files over Fabric's SFTP: the one place that writes to a host's disk.

Every remote write of picoclaw-fleet goes through here, so the rules hold
everywhere: content travels over SFTP (never on a command line, where `ps`
and sshd logs would see it), a file is replaced by uploading a temporary
name in the same directory and renaming it over the old one (so an
interrupted upload never leaves a half file where a good one was), and a file
whose content already matches is not touched.

Paths are relative to the remote user's home unless absolute; commands get
them as absolute, `shlex.quote`d paths. Every operation runs under a
`deadlines.deadline`: a host that stops answering raises `HostStalled` naming
the operation, never hangs; an upload pushes its deadline back as bytes go out.
"""

import errno
import hashlib
import os
import posixpath
import secrets
import shlex
import stat
from contextlib import contextmanager

import paramiko

from ..ssh.deadlines import deadline, step_seconds

#: How much an upload writes per SFTP request (paramiko pipelines them).
CHUNK = 32768
#: A temporary upload file older than this (seconds) was left by an interrupted run.
STALE_TEMP_AGE = 3600
#: Files up to this size are compared by reading them back rather than hashing on the host.
SMALL_FILE = 65536

HASH_COMMAND = (
    "p={path}; "
    'if [ ! -f "$p" ]; then echo absent; '
    'elif command -v sha256sum >/dev/null 2>&1; then sha256sum -- "$p"; '
    'elif command -v shasum >/dev/null 2>&1; then shasum -a 256 -- "$p"; '
    "else echo no-tool; fi"
)


class RemoteFileError(Exception):
    """The host refused a file operation (permission denied, no such directory, disk full...).

    Not an `OSError` on purpose: a dropped connection is an OSError and is
    reported as ``unreachable``; this is the host answering "no", which the
    verb reports as a failure of that host with this message.
    """


def sftp(cxn):
    """The connection's SFTP session, its working directory set to the remote home.

    Fabric keeps one SFTP client per connection; paramiko then resolves
    relative paths against the directory set here, once per connection. A
    host that answers SSH but has no SFTP server is told apart from an
    unreachable one: it needs a package installed, not a network fix.
    """
    cxn.open()  # connecting fails as it is, for fan_out to name
    if cxn._sftp is not None:  # Fabric's own cache of the connection's SFTP client
        return cxn._sftp
    with deadline(cxn, "opening SFTP"):
        try:
            client = open_sftp(cxn)
        except (paramiko.SSHException, EOFError) as exc:
            transport = cxn.client.get_transport()
            if transport is None or not transport.is_active():
                raise
            raise RemoteFileError(f"the host has no working SFTP server ({exc or type(exc).__name__}): "
                                  "install one (e.g. openssh-sftp-server)") from None
        client.chdir(".")
    cxn._sftp = client
    return client


def open_sftp(cxn):
    """An SFTP client on a new channel of `cxn`, kept by Fabric as the connection's own.

    Built here rather than by ``cxn.sftp()`` so that the channel has a read
    timeout: paramiko's SFTP waits for each reply without one.
    """
    channel = cxn.client.get_transport().open_session()
    channel.settimeout(step_seconds(cxn))
    channel.invoke_subsystem("sftp")
    return paramiko.SFTPClient(channel)



def home(cxn):
    """The remote user's home directory, as an absolute path."""
    return sftp(cxn).getcwd()


def absolute(cxn, path):
    """`path` made absolute against the remote home (commands need absolute paths)."""
    return posixpath.join(home(cxn), path)


def shown(path):
    """``~/.local/bin/picoclaw`` for messages: how a sysadmin names a home-relative path."""
    return path if path.startswith("/") else f"~/{path}"


def refused(cxn, exc):
    """True when `exc` is the SFTP server saying no, not the connection going away."""
    if not isinstance(exc, OSError) or isinstance(exc, (ConnectionError, TimeoutError)):
        return False
    transport = cxn.client.get_transport()
    return transport is not None and transport.is_active()


def reason(exc):
    """The server's reason in a few words: ``permission denied``, ``no such file``..."""
    if exc.errno == errno.EACCES:
        return "permission denied"
    if exc.errno == errno.ENOENT:
        return "no such file or directory"
    return str(exc.strerror or exc) or "failure"


@contextmanager
def operation(cxn, doing, path):
    """One operation on the host: under a deadline, the server's refusals turned into `RemoteFileError`.

    Yields the step's `deadlines.Watch`, for operations that move data to
    report progress.
    """
    with deadline(cxn, f"{doing} {shown(path)}") as watch:
        try:
            yield watch
        except OSError as exc:
            if refused(cxn, exc):
                raise RemoteFileError(f"cannot {doing} {shown(path)}: {reason(exc)}") from None
            raise


def stat_or_none(cxn, path):
    """The file's SFTP attributes (not following a final symlink), or None when absent."""
    with operation(cxn, "inspect", path):
        try:
            return sftp(cxn).lstat(path)
        except FileNotFoundError:
            return None


def exists(cxn, path):
    """True when `path` exists on the host (a dangling symlink counts)."""
    return stat_or_none(cxn, path) is not None


def read(cxn, path, limit=1 << 20):
    """The bytes of a small remote file, or None when it does not exist."""
    with operation(cxn, "read", path):
        try:
            with sftp(cxn).open(path, "rb") as handle:
                return handle.read(limit)
        except FileNotFoundError:
            return None


def sha256(cxn, path):
    """The sha256 hex digest of a remote file, or None when it is absent.

    Hashed on the host with ``sha256sum`` (or ``shasum``), so checking a 20 MB
    binary costs one short command, not a download. A host with neither tool
    has the file read back over SFTP and hashed here.
    """
    command = HASH_COMMAND.format(path=shlex.quote(absolute(cxn, path)))
    with deadline(cxn, f"hashing {shown(path)}"):
        result = cxn.run(command, hide=True, warn=True, in_stream=False)
    first = (result.stdout.split() or [""])[0].lstrip("\\")  # sha256sum marks escaped names with a backslash
    if first == "absent":
        return None
    if first == "no-tool":
        return _sha256_over_sftp(cxn, path)
    if len(first) == 64 and all(c in "0123456789abcdef" for c in first):
        return first
    problem = (result.stderr.strip().splitlines() or ["no digest printed"])[-1]
    raise RemoteFileError(f"cannot hash {shown(path)}: {problem}")


def _sha256_over_sftp(cxn, path):
    """Hash a remote file by reading it over SFTP (for hosts without sha256sum)."""
    digest = hashlib.sha256()
    with operation(cxn, "read", path) as watch, sftp(cxn).open(path, "rb") as handle:
        handle.prefetch()
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
            watch.progress()
    return digest.hexdigest()


def mkdir(cxn, path, mode):
    """Create directory `path` (and missing parents) with `mode`; True when it was created.

    An existing directory keeps its mode: the user may have chosen it. A
    directory created at the same moment by a concurrent deploy is fine.
    """
    if stat_or_none(cxn, path) is not None:
        return False
    parent = posixpath.dirname(path.rstrip("/"))
    if parent and parent not in ("/", "."):
        mkdir(cxn, parent, mode)
    with operation(cxn, "create directory", path):
        try:
            sftp(cxn).mkdir(path, mode)
        except OSError as exc:
            if refused(cxn, exc) and stat_or_none(cxn, path) is not None:
                return False  # a concurrent deploy created it first
            raise
        sftp(cxn).chmod(path, mode)  # mkdir's mode is filtered by the server's umask
    return True


def ensure_mode(cxn, path, mode):
    """Give `path` exactly `mode` (permission bits); True when it had to change."""
    attrs = stat_or_none(cxn, path)
    if attrs is None:
        raise RemoteFileError(f"cannot set mode of {shown(path)}: no such file or directory")
    if stat.S_IMODE(attrs.st_mode) == mode:
        return False
    with operation(cxn, "set mode of", path):
        sftp(cxn).chmod(path, mode)
    return True


def temp_name(path):
    """A temporary name beside `path`, unique across processes, threads and hosts' runs."""
    directory, name = posixpath.split(path)
    return posixpath.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")


def upload_temp(cxn, path, data, mode, on_bytes=None):
    """Upload `data` to a new temporary file beside `path`, verified; return its name.

    The file is created exclusively and given `mode` before the first byte is
    written, so a secret is never readable by others even for a moment. Its
    sha256 is then checked on the host: what gets renamed into place is
    exactly what was sent. `on_bytes(n)` is called as bytes go out.
    """
    temp = temp_name(path)
    client = sftp(cxn)
    try:
        try:
            with operation(cxn, "write", path) as watch, client.open(temp, "wbx") as handle:
                handle.chmod(mode)
                handle.set_pipelined(True)
                view = memoryview(data)
                for start in range(0, len(view), CHUNK):
                    handle.write(view[start : start + CHUNK])
                    watch.progress()
                    if on_bytes:
                        on_bytes(len(view[start : start + CHUNK]))
            wanted = hashlib.sha256(data).hexdigest()
            got = sha256(cxn, temp)
            if got != wanted:
                raise RemoteFileError(f"upload of {shown(path)} arrived corrupted (sha256 {got or 'missing'}, sent {wanted})")
        except RemoteFileError as problem:
            raise RemoteFileError(disk_full_message(cxn, path, len(data)) or str(problem)) from None
        sweep_temps(cxn, path, temp)
    except BaseException:
        discard(cxn, temp)
        raise
    return temp


def disk_full_message(cxn, path, size):
    """``cannot write ~/x: no space left on device (...)`` when that is why a write failed, else None.

    SFTP reports a full disk as a bare "Failure" (or not at all until the
    file is closed), so the free space of the target's filesystem is asked
    for once the write has failed; its answer is a diagnosis, never a hang.
    """
    directory = posixpath.dirname(absolute(cxn, path)) or "."
    try:
        with deadline(cxn, f"checking free space for {shown(path)}"):
            result = cxn.run(f"df -Pk -- {shlex.quote(directory)}", hide=True, warn=True, in_stream=False)
        available_kb = int(result.stdout.splitlines()[-1].split()[3])
    except Exception:
        return None
    if available_kb * 1024 >= size:
        return None
    return (f"cannot write {shown(path)}: no space left on device "
            f"({available_kb} kB free on its filesystem, {size // 1024 + 1} kB needed)")


def sweep_temps(cxn, path, ours, max_age_s=STALE_TEMP_AGE):
    """Remove temporary files that interrupted uploads left beside `path` long ago.

    A cut connection cannot clean up after itself, and a 20 MB leftover
    matters on an SD card. Only our own naming pattern is touched, and only
    files older than `max_age_s` by the host's clock (compared with the temp
    file just written, `ours`), so a concurrent deploy's upload is never taken.
    """
    directory, name = posixpath.split(path)
    try:
        with deadline(cxn, f"listing {shown(directory or '.')}"):
            entries = {e.filename: e for e in sftp(cxn).listdir_attr(directory or ".")}
    except OSError as exc:
        if refused(cxn, exc):
            return  # an unlistable directory: leave it as it is
        raise
    now = entries[posixpath.basename(ours)].st_mtime
    prefix = f".{name}.tmp-"
    for filename, attrs in entries.items():
        if filename.startswith(prefix) and stat.S_ISREG(attrs.st_mode) and now - attrs.st_mtime > max_age_s:
            discard(cxn, posixpath.join(directory, filename))


def commit(cxn, temp, path):
    """Atomically rename `temp` over `path`: readers see the old file or the new, never half.

    Uses OpenSSH's posix-rename extension; a server without it gets ``mv -f``
    on the host, which is the same rename(2) in the same directory.
    """
    with operation(cxn, "replace", path):
        try:
            sftp(cxn).posix_rename(temp, path)
            return
        except OSError as exc:
            if not refused(cxn, exc) or "unsupported" not in str(exc).lower():
                raise
    command = f"mv -f -- {shlex.quote(absolute(cxn, temp))} {shlex.quote(absolute(cxn, path))}"
    with deadline(cxn, f"replacing {shown(path)}"):
        result = cxn.run(command, hide=True, warn=True, in_stream=False)
    if result.failed:
        raise RemoteFileError(f"cannot replace {shown(path)}: {result.stderr.strip() or 'mv failed'}")


def discard(cxn, temp):
    """Remove a temporary file if the connection still allows it; never raises."""
    try:
        with deadline(cxn, f"removing {shown(temp)}"):
            sftp(cxn).remove(temp)
    except Exception:
        pass  # the connection is gone, or it was never created: nothing more to do


def write_if_changed(cxn, path, data, mode, on_bytes=None):
    """Make remote `path` hold `data` with `mode`; True when its content was written.

    Unchanged content is left alone (only a wrong mode is corrected), so a
    re-deploy writes nothing. Otherwise the new content goes through
    `upload_temp` and `commit`. A small file is compared by reading it over
    SFTP, which spares the host a process; a big one is hashed on the host.
    """
    if len(data) <= SMALL_FILE:
        same = read(cxn, path, SMALL_FILE + 1) == data
    else:
        same = sha256(cxn, path) == hashlib.sha256(data).hexdigest()
    if same:
        ensure_mode(cxn, path, mode)
        return False
    write(cxn, path, data, mode, on_bytes)
    return True


def hard_link(cxn, target, link):
    """Make remote `link` another name of `target` (replacing it); False when the host cannot.

    SFTP has no portable hard link, so this runs ``ln -f`` on the host. A
    link across file systems is refused by the kernel: callers treat the
    link as an optimisation, never as required.
    """
    command = f"ln -f -- {shlex.quote(absolute(cxn, target))} {shlex.quote(absolute(cxn, link))}"
    with deadline(cxn, f"linking {shown(link)}"):
        return not cxn.run(command, hide=True, warn=True, in_stream=False).failed


def write(cxn, path, data, mode, on_bytes=None):
    """Make remote `path` hold `data` with `mode`, whatever it held: `upload_temp`, then `commit`."""
    commit(cxn, upload_temp(cxn, path, data, mode, on_bytes), path)


def remove(cxn, path):
    """Remove one file (or symlink) by its exact name; True when it was there."""
    with operation(cxn, "remove", path):
        try:
            sftp(cxn).remove(path)
        except FileNotFoundError:
            return False
    return True


def remove_tree(cxn, path):
    """Remove directory `path` and everything in it; True when it was there.

    One ``rm -rf`` of the exact, quoted, absolute path: never a glob, never a
    variable the shell expands. A symlink is removed itself, not followed.
    """
    attrs = stat_or_none(cxn, path)
    if attrs is None:
        return False
    target = absolute(cxn, path)
    if posixpath.normpath(target) in ("/", posixpath.normpath(home(cxn))):
        raise RemoteFileError(f"refusing to remove {target}: it is / or the home directory")
    with deadline(cxn, f"removing {shown(path)}"):
        result = cxn.run(f"rm -rf -- {shlex.quote(target)}", hide=True, warn=True, in_stream=False)
    if result.failed or stat_or_none(cxn, path) is not None:
        raise RemoteFileError(f"cannot remove {shown(path)}: {result.stderr.strip() or 'still present'}")
    return True
