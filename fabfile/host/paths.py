"""Where PicoClaw lives on a host, and the shell idioms every remote command shares.

Paths are relative to the remote user's home: SFTP resolves them there, and
shell commands prefix ``"$HOME"/``. PicoClaw reads its model choice from
`CONFIG_FILE` and the model's API key from `SECURITY_FILE`; `ENV_FILE` is
the seed's contract, read by nothing of ours (see README, deploy).
"""

BIN_DIR = ".local/bin"
BINARY_PATH = ".local/bin/picoclaw"
PICOCLAW_DIR = ".picoclaw"
ENV_FILE = ".picoclaw/.env"
CONFIG_FILE = ".picoclaw/config.json"
SECURITY_FILE = ".picoclaw/.security.yml"
#: The version deploy installed, written after the binary, and a hard link to the binary it
#: describes: while ~/.local/bin/picoclaw is that same file (same inode) and not newer than the
#: note, the status probe reads the version here instead of starting a 32 MB Go program for it.
VERSION_CACHE = ".picoclaw/.fleet-version"
VERSION_CACHE_BINARY = ".picoclaw/.fleet-binary"
#: PicoClaw's session files (``<key with : as _>.jsonl`` and ``.meta.json``) in its default workspace.
SESSIONS_DIR = ".picoclaw/workspace/sessions"


def bounded(command, seconds, kill_after=None):
    """`command` stopped by the host's ``timeout`` after `seconds` (KILLed `kill_after` later), if it has one.

    The host stops it even when our connection is gone; a board without
    coreutils or busybox ``timeout`` still runs it, bounded then only by our
    own deadline. `seconds` must already be safe in a shell line (a number).
    """
    kill = f"-k {kill_after} " if kill_after else ""
    return f"if command -v timeout >/dev/null 2>&1; then timeout {kill}{seconds} {command}; else {command}; fi"
