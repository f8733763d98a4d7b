"""The persisted event log of a run and the live view over it.

The worker appends every stream event to `run_events` (a monotonic id per event, sent as the SSE
`id:`); a stream is only ever a reader of that table: it replays what is stored after a cursor
(`Last-Event-ID`) and continues live. Nothing is sent that is not stored first, so a replay from
any id misses nothing and repeats nothing.

Readers wait on `RunSignals` and read again only when woken: by a write in this process, by a
Postgres notification (`app.server.notify`: a write in any process, delivered after it commits),
or when the poll interval passes — the only way to see another process's writes on SQLite
(latency up to `RUN_POLL_INTERVAL_S`), and a safety net on Postgres (`NOTIFY_FALLBACK_POLL_S`).

On Postgres the notification of an append carries the stored events themselves when they fit
(`app.db.PUSH_PAYLOAD_MAX`), with the id of the run's event before them: a reader whose cursor is
at that id takes them as they are, without reading them back; any other wake-up (events too
large, a status change, a batch that does not follow on the reader's cursor) makes it read the
table. Either way a reader sees each stored event once, in id order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field

from app.db import ACTIVE, AppDB
from app.redact import redact_obj
from app.server.serde import dumps

log = logging.getLogger("mkt.server")

PAGE = 500  # events per read
# the stream modes whose events carry a task's exception, as an `error` field with a text value
# (inside a JSON string the quotes are escaped, so message text does not match)
_TASK_MODES = frozenset({"tasks", "debug", "checkpoints"})
_ERROR_FIELD = '"error":"'


def encode_event(name: str, data: object) -> str:
    """An event's stored text. `error` events and events that carry an exception's text are
    redacted (`app.redact.redact_obj`): an exception's message may hold a credential (a request's
    headers, a DSN). Other events are stored as the graph produced them: redacting every payload
    would cost 40-90 µs for a small event and ~10 ms for a 27 kB `values` event (measured, against
    6-200 µs to serialise them), on the run's hot path."""
    text = dumps(data)
    if name == "error" or (name.split("|", 1)[0] in _TASK_MODES and _ERROR_FIELD in text):
        text = dumps(redact_obj(json.loads(text)))  # as JSON: an exception is its repr here
    return text


PUSHED_KEPT = 16  # pushed batches kept per watched run; a reader further behind reads the table


@dataclass(frozen=True)
class StoredEvent:
    id: int
    event: str
    data: str  # one line of JSON


@dataclass(frozen=True)
class PushedBatch:
    """Events that arrived in a notification: they follow the run's event `prev`; `status` is
    the run's final status when they end it."""

    prev: int
    events: tuple[StoredEvent, ...]
    status: str | None = None

    @property
    def last(self) -> int:
        return self.events[-1].id


def parse_pushed(text: str) -> PushedBatch:
    """The JSON part of a pushed RUN_CHANNEL payload (`app.db.PUSH_PAYLOAD_MAX`)."""
    doc = json.loads(text)
    events = tuple(StoredEvent(int(i), str(e), str(d)) for i, e, d in doc["e"])
    if not events:
        raise ValueError("a pushed batch without events")
    status = doc.get("s")
    return PushedBatch(int(doc["p"]), events, None if status is None else str(status))


@dataclass
class RunWatch:
    """One run's change counters while someone watches it: `version` moves on every wake-up,
    `dirty` only on those that a read of the table must follow (pushed batches do not)."""

    signals: RunSignals
    version: int = 0
    dirty: int = 0
    watchers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pushed: deque[PushedBatch] = field(default_factory=lambda: deque(maxlen=PUSHED_KEPT))

    def wake(self, *, dirty: bool) -> None:
        self.version += 1
        if dirty:
            self.dirty += 1
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_past(self, seen: int, within_s: float | None = None) -> None:
        """Return once the version is past `seen`, or after `within_s` (default: the poll
        interval that applies now)."""
        if self.version > seen:
            return
        with contextlib.suppress(TimeoutError):  # (not `wait_for`: it can lose a cancellation)
            async with asyncio.timeout(within_s or self.signals.poll_interval()):
                await self.changed.wait()


class RunSignals:
    """Per-run change counters for the runs someone in this process is watching (streams, join,
    wait). `bump(run_id)` wakes only that run's watchers; bumps of unwatched runs cost nothing and
    keep no state.

    `via_db` is set while this process's Postgres listener is connected: every write then comes
    back as a notification (this process's own writes too), so `wrote()` — called after a local
    write — does nothing and watchers only poll as a safety net. Without it (SQLite, or the
    listener reconnecting) `wrote()` bumps at once and watchers poll at `poll_s`."""

    def __init__(self, poll_s: float = 0.5, safety_poll_s: float = 5.0) -> None:
        self.poll_s = poll_s
        self.safety_poll_s = max(poll_s, safety_poll_s)
        self.via_db = False
        self._watched: dict[str, RunWatch] = {}

    def poll_interval(self) -> float:
        return self.safety_poll_s if self.via_db else self.poll_s

    @contextlib.contextmanager
    def watch(self, run_id: str) -> Iterator[RunWatch]:
        state = self._watched.get(run_id)
        if state is None:
            state = self._watched[run_id] = RunWatch(self)
        state.watchers += 1
        try:
            yield state
        finally:
            state.watchers -= 1
            if state.watchers == 0 and self._watched.get(run_id) is state:
                del self._watched[run_id]

    def bump(self, run_id: str) -> None:
        """`run_id` changed: its watchers read again."""
        state = self._watched.get(run_id)
        if state is not None:
            state.wake(dirty=True)

    def notified(self, payload: str) -> None:
        """A RUN_CHANNEL notification: a bare run id, or "<run id> <JSON>" carrying the stored
        events (`app.db.PUSH_PAYLOAD_MAX`), kept for the run's readers. Only watched runs cost a
        parse; a payload that does not parse makes the run's readers read the table."""
        run_id, _, pushed = payload.partition(" ")
        state = self._watched.get(run_id)
        if state is None:
            return
        if not pushed:
            state.wake(dirty=True)
            return
        try:
            batch = parse_pushed(pushed)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "notifications: unreadable events of run %s (%s): reading them", run_id, exc
            )
            state.wake(dirty=True)
            return
        state.pushed.append(batch)
        state.wake(dirty=False)

    def bump_all(self) -> None:
        """Every watcher reads again (after a gap in notifications)."""
        for run_id in list(self._watched):
            self.bump(run_id)

    def wrote(self, run_id: str) -> None:
        """This process changed `run_id` (events, status): wake its watchers here unless the
        database's notification will."""
        if not self.via_db:
            self.bump(run_id)

    @property
    def watched(self) -> int:
        return len(self._watched)


class EventLog:
    """Append side, used by the run's worker: writes only while `owner` holds the run's lease
    (`app.db.LeaseLostError` otherwise)."""

    def __init__(self, db: AppDB, signals: RunSignals, owner: str) -> None:
        self.db = db
        self.signals = signals
        self.owner = owner

    async def append(self, run_id: str, events: Iterable[tuple[str, object]]) -> None:
        await self.append_rows(run_id, [(name, encode_event(name, data)) for name, data in events])

    async def append_rows(self, run_id: str, rows: list[tuple[str, str]]) -> None:
        if rows:
            await self.db.append_events(run_id, rows, owner=self.owner)
            self.signals.wrote(run_id)


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
        self._pending.append((name, encode_event(name, data)))
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
            await self._log.append_rows(self._run_id, batch)

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
) -> AsyncIterator[StoredEvent]:
    """Stored events of `run_id` with id > `after`, then live ones until the run ends (or is
    deleted). Each read returns the new events and the run's status from one snapshot (one query
    per wake-up that needs one); after it the reader waits to be woken (or the poll interval). A
    final status means every event was already stored (the worker stores them before it changes
    the status), so the stream is complete once that read's events are sent. Events pushed in
    notifications are taken without a read when they follow on the cursor; a pushed batch that
    ends the run (`end`, with the final status) ends the stream the same way."""
    cursor = after
    with signals.watch(run_id) as watch:
        read_at: int | None = None  # `watch.dirty` when last read (None: read now)
        while True:
            seen = watch.version
            if read_at != watch.dirty:
                read_at = watch.dirty
                rows, status = await db.events_and_status(run_id, cursor, limit=PAGE)
                for row in rows:
                    cursor = int(row["id"])
                    if wanted(row["event"], modes):
                        yield StoredEvent(cursor, row["event"], row["data"])
                if len(rows) == PAGE:
                    read_at = None  # more are stored: read on
                    continue
                if status not in ACTIVE:
                    return
            # pushed batches that follow on the cursor, as stored (older ones were read)
            while (batch := next((b for b in watch.pushed if b.prev == cursor), None)) is not None:
                for ev in batch.events:
                    cursor = ev.id
                    if wanted(ev.event, modes):
                        yield ev
                if batch.status is not None and batch.status not in ACTIVE:
                    return
            if any(b.last > cursor for b in watch.pushed):
                read_at = None  # a batch past a gap (this reader fell behind): read the table
                continue
            await watch.wait_past(seen)
            if watch.version == seen:  # the poll interval passed unwoken: read (SQLite's way)
                read_at = None


_EVENT_ID_RE = re.compile(r"[0-9]{1,18}")  # ASCII digits only; 18 fit a database integer


def parse_last_event_id(value: str | None) -> int:
    """`Last-Event-ID` -> cursor; anything that is not one of our ids (not 1-18 ASCII digits:
    `²`, `-1`, a number past any database integer) replays from the start."""
    text = (value or "").strip()
    return int(text) if _EVENT_ID_RE.fullmatch(text) else 0
