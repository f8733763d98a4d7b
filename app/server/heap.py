"""Garbage-collector pauses of long-running server processes.

A server process holds a large heap that never goes away: modules, compiled graphs, pydantic
schemas, the model client — about a million tracked objects. CPython's full (generation 2)
collection walks every one of them, so each took 100–180 ms on the benchmark machine, and while
it runs nothing else in the process does: every stream and run creation waits (they showed up
as clusters of ~200 ms time-to-first-event). `gc.freeze()` moves the objects alive once start-up
is over to a permanent generation that collections skip; later collections only walk what was
allocated since. Cycles among frozen objects are never reclaimed — start-up objects live for the
life of the process anyway.

A process that executes runs freezes once more when its first run has ended: that run imports
and caches what every later run uses (a worker frozen only at start-up still paused 57–80 ms
per full collection)."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> int:
    """Collect what start-up left behind, then freeze the rest; returns the frozen count. Called
    again (the benchmark does, before each measured phase), it first thaws what it froze before,
    so cycles that became garbage since are collected too."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
