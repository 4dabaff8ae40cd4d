"""The user's cache directory, and the configs it remembers as valid.

Checking a config against its schema costs each run jsonschema's import
(~40 ms of CPU) and the checks themselves (~18 ms at 512 hosts): more than
the rest of our start-up, paid again by every call of an agent that uses one
config all day. The outcome depends only on the config's bytes and on the
rules (the schema and the code that applies it), so a config that passed is
remembered as an empty file named by the sha256 of both (`ValidConfigs`): a
run with the same bytes under the same rules skips the check, and any change
to either checks again. A config that fails is never remembered, so its
message is always the one the check gives now.
"""

import hashlib
import os
from pathlib import Path

#: Marks kept; past this, the oldest go (a mark costs one check to remake).
MAX_MARKS = 256


def cache_dir(environ=None):
    """``$XDG_CACHE_HOME/picoclaw-fleet``, else ``~/.cache/picoclaw-fleet``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "picoclaw-fleet"


class ValidConfigs:
    """Configs that passed the check under `rules` (bytes: whatever decides the outcome).

    Only a convenience: a cache that cannot be read or written just means
    the check runs, so every OSError here is swallowed.
    """

    def __init__(self, rules, environ=None):
        self.directory = cache_dir(environ) / "valid-configs"
        self.rules = hashlib.sha256(rules).digest()

    def mark(self, config_bytes):
        """Where the mark of `config_bytes` under these rules is."""
        return self.directory / hashlib.sha256(self.rules + config_bytes).hexdigest()

    def known(self, config_bytes):
        """True when `config_bytes` passed the check under these rules before."""
        return self.mark(config_bytes).is_file()

    def remember(self, config_bytes):
        """Mark `config_bytes` as passed, and keep the directory at `MAX_MARKS` marks."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.mark(config_bytes).touch()
            self.prune()
        except OSError:
            pass

    def prune(self):
        """Drop the oldest marks beyond `MAX_MARKS` (by mtime: when each was made)."""
        with os.scandir(self.directory) as entries:
            marks = [(entry.stat().st_mtime_ns, entry.path) for entry in entries if entry.is_file()]
        for _, path in sorted(marks)[:-MAX_MARKS]:
            os.unlink(path)
