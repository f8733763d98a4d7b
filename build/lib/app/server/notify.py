"""Cross-process wake-ups over Postgres LISTEN/NOTIFY: one listener per process.

The app database sends a notification from the very statement that makes a change (`app.db`:
`RUN_CHANNEL`, `CANCEL_CHANNEL`, `QUEUE_CHANNEL`; payload = run id, and for stored events the
events themselves when they fit: `app.db.PUSH_PAYLOAD_MAX`), so it reaches listeners only after
the change is committed. This module holds one dedicated connection per process (outside
the pool, so `LISTEN` stays in force), reads notifications as they arrive and fans them out to
in-process callbacks: a run's streams and waiters (`RunSignals.bump`), the executor's cancel and
claim wake-ups.

While connected, `RunSignals.via_db` is set (see `app.server.events`). When the connection drops
the listener says so, waiters fall back to polling, and it reconnects with back-off; once back, it
wakes every waiter and the claim loop, since notifications sent in between were lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

import psycopg
from psycopg import sql

from app.server.events import RunSignals
from app.tasks import cancel_and_wait

log = logging.getLogger("mkt.server")

Handler = Callable[[str], None]


class PgListener:
    """`LISTEN` on each channel of `handlers` and call `handlers[channel](payload)` for every
    notification, in arrival order, on the event loop."""

    PING_S = 30.0  # an idle connection is checked this often (a dead peer is noticed)

    def __init__(
        self,
        dsn: str,
        handlers: Mapping[str, Handler],
        signals: RunSignals,
        *,
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self._dsn = dsn
        self._handlers = dict(handlers)
        self._signals = signals
        self._on_reconnect = on_reconnect
        self._conn: psycopg.AsyncConnection[object] | None = None
        self._task: asyncio.Task[None] | None = None
        self.received = 0

    async def start(self) -> None:
        """Connect and listen before returning (raises if the database is unreachable)."""
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="notify:listen")

    async def stop(self) -> None:
        self._signals.via_db = False
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._close()

    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._dsn,
            autocommit=True,
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )
        for channel in self._handlers:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        self._conn = conn
        self._signals.via_db = True

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            try:
                if self._conn is None:
                    await self._connect()
                    log.warning("notifications: reconnected")
                    self._on_reconnect()
                backoff = 0.2
                await self._listen(self._conn)
            except (psycopg.Error, OSError) as exc:
                self._signals.via_db = False
                log.warning("notifications: connection lost (%s); polling until it is back", exc)
                await self._close()
                self._on_reconnect()  # anything written before the loss is read now
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _listen(self, conn: psycopg.AsyncConnection[object] | None) -> None:
        assert conn is not None
        while True:
            async for note in conn.notifies(timeout=self.PING_S):
                self.received += 1
                self.dispatch(note.channel, note.payload)
            await conn.execute("SELECT 1")  # idle for PING_S: is the peer still there?

    def dispatch(self, channel: str, payload: str) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:  # one faulty wake-up must not stop this process's listener
            log.exception("notifications: handler for %s failed", channel)
