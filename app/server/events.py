"""The persisted event log of a run and the live view over it.

The worker appends every stream event to `run_events` (a monotonic id per event, sent as the SSE
`id:`); a stream is only ever a reader of that table: it replays what is stored after a cursor
(`Last-Event-ID`) and continues live. In-process readers are woken at once; readers in other
processes notice within the poll interval. Nothing is sent that is not stored first, so a replay
from any id misses nothing and repeats nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

from app.db import ACTIVE, AppDB
from app.server.serde import dumps


@dataclass(frozen=True)
class StoredEvent:
    id: int
    event: str
    data: str  # one line of JSON


class RunSignals:
    """Per-run change counters: the executor bumps them, readers of that run wait for a change
    (one `asyncio.Event` per run and change, so a bump wakes only that run's readers)."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[int, asyncio.Event]] = {}

    def _get(self, run_id: str) -> tuple[int, asyncio.Event]:
        if run_id not in self._state:
            self._state[run_id] = (0, asyncio.Event())
        return self._state[run_id]

    def version(self, run_id: str) -> int:
        return self._get(run_id)[0]

    async def bump(self, run_id: str) -> None:
        version, event = self._get(run_id)
        self._state[run_id] = (version + 1, asyncio.Event())
        event.set()

    async def wait_past(self, run_id: str, seen: int, within_s: float) -> None:
        version, event = self._get(run_id)
        if version > seen:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within_s)

    def forget(self, run_id: str) -> None:
        self._state.pop(run_id, None)


class EventLog:
    """Append side, used by the run's worker."""

    def __init__(self, db: AppDB, signals: RunSignals) -> None:
        self.db = db
        self.signals = signals

    async def append(self, run_id: str, events: Iterable[tuple[str, object]]) -> None:
        rows = [(name, dumps(data)) for name, data in events]
        if rows:
            await self.db.append_events(run_id, rows)
            await self.signals.bump(run_id)


class EventBatcher:
    """Appends one run's events in order with group commit: while a write is in flight, newer
    events wait and go in the next write, so a busy database gets one round trip for many events
    and an idle one adds no delay. Events are serialised when added (chunks may change later).
    `drain()` waits for everything added so far to be stored and re-raises a failed write."""

    MAX_PENDING = 1000  # back-pressure: `add` waits when this many events are not stored yet

    def __init__(self, log: EventLog, run_id: str) -> None:
        self._log = log
        self._run_id = run_id
        self._pending: list[tuple[str, str]] = []
        self._task: asyncio.Task[None] | None = None

    async def add(self, name: str, data: object) -> None:
        self._pending.append((name, dumps(data)))
        if self._task is not None and self._task.done():
            self._task.result()  # a failed write fails the run
            self._task = None
        if self._task is None:
            self._task = asyncio.create_task(self._flush(), name=f"events:{self._run_id}")
        elif len(self._pending) >= self.MAX_PENDING:
            await self.drain()

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            await self._log.db.append_events(self._run_id, batch)
            await self._log.signals.bump(self._run_id)

    async def drain(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await task
        if self._pending:  # added after the last flush finished its loop
            await self._flush()


def wanted(event: str, modes: set[str] | None) -> bool:
    """Join streams may ask for a subset of the run's modes; control events always pass."""
    if not modes:
        return True
    base = event.split("|", 1)[0]
    if base in ("metadata", "error", "end"):
        return True
    if base == "messages":
        return bool({"messages", "messages-tuple"} & modes)
    return base in modes


async def follow(
    db: AppDB,
    signals: RunSignals,
    run_id: str,
    *,
    after: int = 0,
    modes: set[str] | None = None,
    poll_s: float = 0.5,
) -> AsyncIterator[StoredEvent]:
    """Stored events of `run_id` with id > `after`, then live ones until the run ends (or is
    deleted). The status is read only when no new events are stored (one query per batch while the
    run is live); once it is final every event was already stored, so one more empty read after
    it means the stream is complete."""
    cursor = after
    while True:
        seen = signals.version(run_id)
        rows = await db.events_after(run_id, cursor)
        if not rows:
            run = await db.get_run(run_id)
            if run is not None and run["status"] in ACTIVE:
                await signals.wait_past(run_id, seen, poll_s)
                continue
            # final: its worker stored every event before the status changed; one last read
            rows = await db.events_after(run_id, cursor)
            if not rows:
                return
        for row in rows:
            cursor = int(row["id"])
            if wanted(row["event"], modes):
                yield StoredEvent(cursor, row["event"], row["data"])


def parse_last_event_id(value: str | None) -> int:
    """`Last-Event-ID` -> cursor; anything that is not one of our ids replays from the start."""
    if value and value.strip().isdigit():
        return int(value.strip())
    return 0
