"""The one error type a user can cause.

Anything the user can fix by changing what they typed or wrote (a bad
config, a missing API key, an unknown host name) is raised as `UsageError`.
The tasks turn it into a single line on stderr and exit code 2, never a
traceback: a sysadmin wants to be told what to change, not where we were.
"""

import re

#: Everything `str.splitlines` breaks a line at, and the other C0/C1 controls:
#: none of them may reach the terminal from a message, which must stay one line.
_LINE_BREAKING = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

#: A message longer than this is cut (a repr of a huge value must not flood a terminal).
MAX_MESSAGE_CHARS = 2000


def one_line(text, limit=MAX_MESSAGE_CHARS):
    """`text` as one printable line: control characters escaped, cut at `limit` characters."""
    text = _LINE_BREAKING.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates from odd bytes
    return text if len(text) <= limit else text[: limit - 1] + "…"


class UsageError(Exception):
    """A mistake in the user's input: reported as one line, exit code 2.

    The message is made one line here, whatever it quotes (a host name with a
    newline in it, a value with control characters), so every verb keeps the
    one-line promise without checking.
    """

    def __init__(self, message):
        super().__init__(one_line(message))
