"""Run a command and report its own peak RSS: ``python -I -S bench/peak_rss.py OUT -- ARGV...``.

Why a middleman: Linux carries a process's peak RSS across ``exec``, and a
child forked (or vforked) from the bench starts with the bench's pages, so
``wait4`` on a direct child reports the bench's size, not the command's.
This small process forks the command itself: the command's peak then starts
from this script's few MB. Writes ``{"peak_rss_kb", "returncode"}`` as JSON to
OUT; the command's stdin, stdout and stderr pass through. Stdlib only, no
site packages (``-I -S``), to stay small.
"""

import json
import os
import sys


def main(argv):
    out, separator, command = argv[0], argv[1], argv[2:]
    if separator != "--" or not command:
        sys.exit("usage: peak_rss.py OUT -- ARGV...")
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    returncode = os.waitstatus_to_exitcode(status)
    with open(out, "w") as handle:
        json.dump({"peak_rss_kb": usage.ru_maxrss, "returncode": returncode}, handle)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]) & 0xFF)
