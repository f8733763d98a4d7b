"""Crash points for durability tests: `MKT_CRASH_AT=<name>` makes the process SIGKILL itself at
that point (no cleanup, no flush) — the same as `kill -9` at the worst possible moment."""

from __future__ import annotations

import os
import signal

ENV = "MKT_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


DELAY_ENV = "MKT_SCRIPTED_DELAY_S"


def scripted_delay_s() -> float:
    """`MKT_SCRIPTED_DELAY_S=<seconds>`: each scripted model call takes this long (tests that need
    a run to be in flight: cancel, double texting, kill -9 mid-run). 0 when unset or invalid."""
    try:
        return max(0.0, float(os.environ.get(DELAY_ENV, "0")))
    except ValueError:
        return 0.0
