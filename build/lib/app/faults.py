"""Crash points for durability tests: `MKT_CRASH_AT=<name>` makes the process SIGKILL itself at
that point (no cleanup, no flush) — the same as `kill -9` at the worst possible moment.

With `MKT_CRASH_ONCE=<file>` only the first process to get there crashes (it creates the file
first): a supervised worker that is restarted with the same environment then carries on."""

from __future__ import annotations

import os
import signal

ENV = "MKT_CRASH_AT"
ONCE_ENV = "MKT_CRASH_ONCE"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) != name:
        return
    marker = os.environ.get(ONCE_ENV)
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # crashed here once already
    os.kill(os.getpid(), signal.SIGKILL)
