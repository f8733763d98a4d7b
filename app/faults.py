"""Crash points for durability tests: `MKT_CRASH_AT=<name>` makes the process SIGKILL itself at
that point (no cleanup, no flush) — the same as `kill -9` at the worst possible moment."""

from __future__ import annotations

import os
import signal

ENV = "MKT_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
