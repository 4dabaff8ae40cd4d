"""The one error type a user can cause.

Anything the user can fix by changing what they typed or wrote (a bad
config, a missing API key, an unknown host name) is raised as `UsageError`.
The tasks turn it into a single line on stderr and exit code 2, never a
traceback: a sysadmin wants to be told what to change, not where we were.
"""


class UsageError(Exception):
    """A mistake in the user's input: reported as one line, exit code 2."""
