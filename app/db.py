"""The app's own tables (outbox, threads, runs, run events) in the same database as the checkpoints.

One SQL dialect serves both backends: SQL is written with `?` placeholders and ISO-8601 UTC text
timestamps (which order correctly as text); the Postgres backend rewrites `?` to `%s` (and a literal `%` to `%%`).

Schema changes are versioned: `_DDL` is the version-1 baseline (idempotent `CREATE ... IF NOT
EXISTS`), `_UPGRADES[n]` moves a database from version n-1 to n inside one transaction, so an
existing SQLite file or Postgres database upgrades in place on `mkt db migrate` (SQLite: on open).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiosqlite
import psycopg
from psycopg_pool import AsyncConnectionPool

from app.tasks import to_the_end

SCHEMA_VERSION = 4

_T = TypeVar("_T")

# what a database that is briefly unreachable, restarting, locked or out of pooled connections
# raises (psycopg_pool.PoolTimeout is a psycopg.Error): background loops log these and retry
DB_ERRORS: tuple[type[Exception], ...] = (OSError, sqlite3.Error, psycopg.Error)

_DDL = [
    """CREATE TABLE IF NOT EXISTS app_schema (version INTEGER NOT NULL)""",
    # API keys (app/apikeys.py): only a sha256 of each key is stored; the key is shown once
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY,
        key_hash TEXT NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        role TEXT NOT NULL,
        tenant TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_used_at TEXT,
        revoked_at TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS outbox (
        id {serial} PRIMARY KEY,
        idempotency_key TEXT NOT NULL UNIQUE,
        thread_id TEXT NOT NULL,
        artifact_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        platform TEXT NOT NULL,
        kind TEXT NOT NULL,
        title TEXT NOT NULL DEFAULT '',
        body TEXT NOT NULL,
        scheduled_at TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'scheduled',
        created_at TEXT NOT NULL,
        published_at TEXT,
        external_id TEXT
    )""",
    """CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, scheduled_at)""",
    """CREATE INDEX IF NOT EXISTS outbox_thread ON outbox (thread_id, artifact_id)""",
    """CREATE TABLE IF NOT EXISTS threads (
        thread_id TEXT PRIMARY KEY,
        title TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'idle',
        context TEXT NOT NULL DEFAULT '{{}}',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL,
        status TEXT NOT NULL,
        provider TEXT NOT NULL DEFAULT '',
        usage TEXT NOT NULL DEFAULT '{{}}',
        error TEXT,
        started_at TEXT NOT NULL,
        ended_at TEXT
    )""",
    """CREATE INDEX IF NOT EXISTS runs_thread ON runs (thread_id, started_at)""",
]

# the threads of stateless runs (their metadata says so); the same text in the partial index
# and in the query, so that both databases use the index
_STATELESS = "metadata LIKE '%\"stateless\"%'"

# version n-1 -> n; each list runs in one transaction together with the version bump
_UPGRADES: dict[int, list[str]] = {
    2: [
        # threads: owner tenant, API metadata, the graph the thread runs
        "ALTER TABLE threads ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE threads ADD COLUMN metadata TEXT NOT NULL DEFAULT '{{}}'",
        "ALTER TABLE threads ADD COLUMN graph_id TEXT NOT NULL DEFAULT 'supervisor'",
        "CREATE INDEX IF NOT EXISTS threads_tenant ON threads (tenant, updated_at)",
        # runs: the queue (pending -> running -> terminal), leases, the request, cancellation
        "ALTER TABLE runs ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE runs ADD COLUMN assistant_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE runs ADD COLUMN graph_id TEXT NOT NULL DEFAULT 'supervisor'",
        "ALTER TABLE runs ADD COLUMN kwargs TEXT NOT NULL DEFAULT '{{}}'",
        "ALTER TABLE runs ADD COLUMN metadata TEXT NOT NULL DEFAULT '{{}}'",
        "ALTER TABLE runs ADD COLUMN multitask_strategy TEXT NOT NULL DEFAULT 'reject'",
        "ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE runs ADD COLUMN lease_owner TEXT",
        "ALTER TABLE runs ADD COLUMN lease_expires_at TEXT",
        "ALTER TABLE runs ADD COLUMN cancel_action TEXT",
        "ALTER TABLE runs ADD COLUMN before_checkpoint_id TEXT",
        "ALTER TABLE runs ADD COLUMN updated_at TEXT",
        # version-1 runs left 'running' by a killed process have no lease: they are over
        "UPDATE runs SET status = 'error', error = 'the process running it stopped'"
        " WHERE status = 'running'",
        # at most one running run per thread, enforced by the database
        "CREATE UNIQUE INDEX IF NOT EXISTS runs_one_running ON runs (thread_id)"
        " WHERE status = 'running'",
        "CREATE INDEX IF NOT EXISTS runs_queue ON runs (status, started_at)",
        # the persisted stream of every run (SSE ids are these ids)
        """CREATE TABLE IF NOT EXISTS run_events (
            id {autoinc},
            run_id TEXT NOT NULL,
            event TEXT NOT NULL,
            data TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS run_events_run ON run_events (run_id, id)",
        "CREATE INDEX IF NOT EXISTS run_events_age ON run_events (created_at)",
    ],
    3: [
        # the pending writes the thread had when a run started (rollback keeps only those)
        "ALTER TABLE runs ADD COLUMN before_writes TEXT",
    ],
    4: [
        # stateless runs' threads, looked for every minute (`stale_stateless_threads`)
        f"CREATE INDEX IF NOT EXISTS threads_stateless ON threads (updated_at) WHERE {_STATELESS}",
    ],
}

RUN_COLS = (
    "run_id, thread_id, tenant, assistant_id, graph_id, status, kwargs, metadata,"
    " multitask_strategy, attempt, lease_owner, lease_expires_at, cancel_action,"
    " before_checkpoint_id, before_writes, provider, usage, error, started_at, ended_at,"
    " updated_at"
)
ACTIVE = ("pending", "running")

# Postgres NOTIFY channels; the payload is a run id. Each is sent by the statement that makes the
# change it announces, so it is delivered only once that change is committed (`app.server.notify`
# listens; SQLite has no notifications and other processes poll).
RUN_CHANNEL = "mkt_run"  # a run has new events or a final status: wake its streams and waiters
# A RUN_CHANNEL notification that announces stored events carries them when they fit
# (`PUSH_PAYLOAD_MAX` bytes; Postgres's limit is 8000): "<run id> <JSON>", the JSON being
# {"r": run id, "p": the run's last event id before these, "e": [[id, event, data], ...],
#  "s": the run's status when these end it}; a stream that is at id "p" takes them without reading
# them back (`app.server.events.follow`). Anything else sends the bare run id: read the table
# (so do all appends while Postgres's notification queue is over half full).
PUSH_PAYLOAD_MAX = 7900
# ... and only while Postgres's notification queue (8 GB, kept for the slowest listener) is less
# full than this: past it (a listening process stuck with its connection open) only bare run ids
# are sent, so the queue fills no faster than it did before events were pushed
PUSH_MAX_QUEUE_USAGE = 0.5
CANCEL_CHANNEL = "mkt_cancel"  # cancel requested for a running run: its worker stops it now
QUEUE_CHANNEL = "mkt_queue"  # a run became claimable (queued or released): wake the workers
EVENTS_PER_STATEMENT = 500

# LangGraph's Postgres checkpointer stores channel values once per version in checkpoint_blobs;
# a checkpoint names the versions it uses in `channel_versions`. A rollback deletes a run's
# checkpoints {delete} and, in the same statement, the blobs of versions they used that no kept
# checkpoint uses (what the checkpointer's own `prune` does; every CTE sees the rows before the
# delete, so the kept ones are those not deleted). Parameters: {delete}'s, then the thread id.
_DELETE_WITH_BLOBS_SQL = (
    "WITH deleted AS ({delete} RETURNING checkpoint_id, checkpoint_ns,"
    " checkpoint -> 'channel_versions' AS versions),"
    " freed AS (SELECT DISTINCT d.checkpoint_ns AS ns, v.key AS channel, v.value AS version"
    " FROM deleted d CROSS JOIN LATERAL jsonb_each_text(d.versions) AS v),"
    " blobs AS (DELETE FROM checkpoint_blobs b USING freed f WHERE b.thread_id = ?"
    " AND b.checkpoint_ns = f.ns AND b.channel = f.channel AND b.version = f.version"
    " AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.thread_id = b.thread_id"
    " AND c.checkpoint_ns = b.checkpoint_ns AND c.checkpoint -> 'channel_versions' ->> b.channel"
    " = b.version AND c.checkpoint_id NOT IN (SELECT checkpoint_id FROM deleted)))"
    " SELECT checkpoint_id FROM deleted"
)

# the checkpoint a run starts from: its thread's root head ('' for none yet); {thread} is the
# SQL for the thread id (a parameter or a column of the enclosing query)
_ROOT_HEAD_SQL = (
    "coalesce((SELECT max(checkpoint_id) FROM checkpoints WHERE thread_id = {thread}"
    " AND checkpoint_ns = ''), '')"
)

_OUTBOX_COLS = (
    "id, idempotency_key, thread_id, artifact_id, version, platform, kind, title, body, "
    "scheduled_at, status, created_at, published_at, external_id"
)

_KEY_COLS = "key_id, key_hash, name, role, tenant, created_at, last_used_at, revoked_at"


class ThreadBusyError(RuntimeError):
    """The thread already has an active run (and the caller asked not to queue)."""


class LeaseLostError(RuntimeError):
    """The writer no longer holds the run's lease (it was taken over, or it ended)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id}: this worker no longer holds its lease")


class StorageNotMigratedError(RuntimeError):
    """The database has no app/checkpoint tables yet."""

    def __init__(self, where: str) -> None:
        super().__init__(f"{where} is not migrated: run `mkt db migrate` first")


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return ts.astimezone(UTC).isoformat(timespec="seconds")


def iso_us(ts: datetime) -> str:
    """Microsecond timestamps for rows that are ordered (runs, events, leases)."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def outbox_key(thread_id: str, artifact_id: str, version: int) -> str:
    """Idempotency key: one outbox row per (thread, artifact, version), whatever re-runs."""
    return hashlib.sha256(f"{thread_id}\x1f{artifact_id}\x1f{version}".encode()).hexdigest()[:32]


class _Backend(Protocol):
    dialect: str

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...
    def transaction(self) -> Any: ...


class _SqliteBackend:
    """One autocommit connection per process; a lock keeps transactions from interleaving and
    `BEGIN IMMEDIATE` serialises writers across processes."""

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, lock: asyncio.Lock | None = None) -> None:
        self.conn = conn
        self.conn.row_factory = aiosqlite.Row
        self._lock = lock or asyncio.Lock()
        self._in_tx = lock is not None

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self._in_tx:
            return (await self.conn.execute(sql, tuple(params))).rowcount
        async with self._lock:
            return (await self.conn.execute(sql, tuple(params))).rowcount

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if self._in_tx:
            cur = await self.conn.execute(sql, tuple(params))
            return [dict(r) for r in await cur.fetchall()]
        async with self._lock:
            cur = await self.conn.execute(sql, tuple(params))
            return [dict(r) for r in await cur.fetchall()]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteBackend]:
        async with self._lock:
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteBackend(self.conn, self._lock)
            except BaseException:
                await self.conn.execute("ROLLBACK")
                raise
            else:
                await self.conn.execute("COMMIT")


class _PostgresBackend:
    dialect = "postgres"

    def __init__(self, pool: AsyncConnectionPool[Any], conn: Any = None) -> None:
        self.pool = pool
        self._conn = conn

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("%", "%%").replace("?", "%s")  # a literal % is %% to psycopg

    # A statement on a pooled connection (no transaction around it) runs to its end even when
    # its caller is cancelled (`app.tasks.to_the_end`): the connection goes back to the pool whole
    # instead of being closed, as a cancelled query's connection often is. Only the statement is
    # shielded, once it has its connection: a caller that leaves while waiting for one leaves the
    # pool's queue, so a dry pool does not fill with statements nobody waits for.

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self._conn is not None:
            cur = await self._conn.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount)

        async def run(conn: Any) -> int:
            cur = await conn.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount)

        return await self._pooled(run)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if self._conn is not None:
            cur = await self._conn.execute(self._sql(sql), tuple(params))
            return [dict(r) for r in await cur.fetchall()]

        async def run(conn: Any) -> list[dict[str, Any]]:
            cur = await conn.execute(self._sql(sql), tuple(params))
            return [dict(r) for r in await cur.fetchall()]

        return await self._pooled(run)

    async def _pooled(self, statement: Callable[[Any], Awaitable[_T]]) -> _T:
        """`statement` on a connection of the pool, as `pool.connection()` runs it (the connection
        goes back when it is done) — but the statement and the return are one task of their own."""
        # a cancellation lands only at an await: none comes between taking the connection and
        # handing it to the task, which returns it whatever happens
        conn = await self.pool.getconn()

        async def on_conn() -> _T:
            try:
                async with conn:
                    return await statement(conn)
            finally:
                await self.pool.putconn(conn)

        return await to_the_end(on_conn())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresBackend]:
        async with self.pool.connection() as conn, conn.transaction():
            yield _PostgresBackend(self.pool, conn)


class AppDB:
    """Outbox, thread and run records."""

    def __init__(self, backend: _Backend) -> None:
        self._b = backend

    @property
    def dialect(self) -> str:
        return self._b.dialect

    def _notifying(
        self, sql: str, *channels: str | tuple[str, str], also: str = "", columns: str = ""
    ) -> str:
        """Postgres: run `sql` (a statement ending `RETURNING run_id, ...`) so that every row it
        changes also sends a NOTIFY on each channel (an SQL expression) with the run id as
        payload, or (channel, payload expression) — delivered when the change commits, never
        before. `also`: more CTEs that may read `changed`; `columns`: more output columns.
        SQLite: `sql` unchanged."""
        if self.dialect != "postgres":
            return sql
        pairs = [(c, "changed.run_id") if isinstance(c, str) else c for c in channels]
        sends = ", ".join(
            f"pg_notify({channel}, {payload}) AS _notify{i}"
            for i, (channel, payload) in enumerate(pairs)
        )
        return f"WITH changed AS ({sql}){also} SELECT changed.*, {sends}{columns} FROM changed"

    @staticmethod
    def _push_ctes(inserted: str, status: bool = False) -> str:
        """Postgres CTEs (to follow `WITH ...`) that build `push(payload)`: the RUN_CHANNEL
        payload announcing the events in CTE `inserted` (columns id, run_id, event, data): "<run
        id> <JSON>" with the events (see `PUSH_PAYLOAD_MAX`), or the bare run id when they do not
        fit. `prev` reads the run's last event id before them: every CTE of a statement sees the
        same snapshot, which does not hold the rows being inserted. Parameters, in order: the
        run id, then (with `status`) the status that the events end the run with. No row when
        nothing was inserted."""
        end = ", 's', ?::text" if status else ""
        return (
            ", prev AS (SELECT coalesce(max(id), 0) AS id FROM run_events WHERE run_id = ?)"
            ", push AS MATERIALIZED (SELECT CASE WHEN octet_length(b.payload) <= "
            f"{PUSH_PAYLOAD_MAX} AND pg_notification_queue_usage() < {PUSH_MAX_QUEUE_USAGE!r}"
            " THEN b.payload ELSE b.run_id END AS payload FROM"
            " (SELECT min(i.run_id) AS run_id, min(i.run_id) || ' ' || json_build_object("
            "'r', min(i.run_id), 'p', (SELECT id FROM prev),"
            f" 'e', json_agg(json_build_array(i.id, i.event, i.data) ORDER BY i.id){end})::text"
            f" AS payload FROM {inserted} i HAVING count(*) > 0) b)"
        )

    # --- schema ---------------------------------------------------------------------------------
    async def migrate(self) -> int:
        """Create the baseline tables, then apply each pending upgrade in its own transaction
        (the version row is locked, so concurrent migrations apply each step once)."""
        sqlite = self.dialect == "sqlite"
        fmt = {
            "serial": "INTEGER" if sqlite else "BIGSERIAL",
            "autoinc": "INTEGER PRIMARY KEY AUTOINCREMENT" if sqlite else "BIGSERIAL PRIMARY KEY",
        }
        for stmt in _DDL:
            await self._b.execute(stmt.format(**fmt))
        async with self._b.transaction() as tx:
            if not await tx.fetchall("SELECT version FROM app_schema"):
                await tx.execute("INSERT INTO app_schema (version) VALUES (1)")
        lock = "" if sqlite else " FOR UPDATE"
        for target in sorted(_UPGRADES):
            async with self._b.transaction() as tx:
                version = int(
                    (await tx.fetchall(f"SELECT version FROM app_schema{lock}"))[0]["version"]
                )
                if version >= target:
                    continue
                for stmt in _UPGRADES[target]:
                    await tx.execute(stmt.format(**fmt))
                await tx.execute("UPDATE app_schema SET version = ?", (target,))
        return await self.schema_version()

    async def schema_version(self) -> int:
        rows = await self._b.fetchall("SELECT version FROM app_schema")
        return int(rows[0]["version"]) if rows else 0

    async def is_migrated(self) -> bool:
        table_sql = (
            "SELECT name FROM sqlite_master WHERE type='table' AND name='app_schema'"
            if self.dialect == "sqlite"
            else "SELECT to_regclass('app_schema') IS NOT NULL AS name"
        )
        rows = await self._b.fetchall(table_sql)
        return (
            bool(rows) and bool(rows[0]["name"]) and await self.schema_version() >= SCHEMA_VERSION
        )

    # --- outbox ---------------------------------------------------------------------------------
    async def enqueue(
        self,
        *,
        thread_id: str,
        artifact_id: str,
        version: int,
        platform: str,
        kind: str,
        title: str,
        body: str,
        scheduled_at: datetime,
    ) -> tuple[dict[str, Any], bool]:
        """Write one outbox row exactly once; returns (row, created). Older scheduled versions of
        the same artifact on the same thread are marked `superseded` in the same transaction."""
        key = outbox_key(thread_id, artifact_id, version)
        async with self._b.transaction() as tx:
            created = (
                await tx.execute(
                    "INSERT INTO outbox (idempotency_key, thread_id, artifact_id, version, platform,"
                    " kind, title, body, scheduled_at, status, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'scheduled', ?)"
                    " ON CONFLICT (idempotency_key) DO NOTHING",
                    (
                        key,
                        thread_id,
                        artifact_id,
                        version,
                        platform,
                        kind,
                        title,
                        body,
                        iso(scheduled_at),
                        iso(utcnow()),
                    ),
                )
                == 1
            )
            if created:
                await tx.execute(
                    "UPDATE outbox SET status = 'superseded' WHERE thread_id = ? AND artifact_id = ?"
                    " AND version < ? AND status = 'scheduled'",
                    (thread_id, artifact_id, version),
                )
            rows = await tx.fetchall(
                f"SELECT {_OUTBOX_COLS} FROM outbox WHERE idempotency_key = ?", (key,)
            )
        return rows[0], created

    async def list_outbox(
        self, *, thread_id: str | None = None, status: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if thread_id:
            where.append("thread_id = ?")
            params.append(thread_id)
        if status:
            where.append("status = ?")
            params.append(status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return await self._b.fetchall(
            f"SELECT {_OUTBOX_COLS} FROM outbox{clause} ORDER BY scheduled_at, id LIMIT ?",
            (*params, limit),
        )

    async def claim_due(self, now: datetime, limit: int = 50) -> list[dict[str, Any]]:
        """Atomically move due rows from `scheduled` to `publishing` (each claimed once)."""
        async with self._b.transaction() as tx:
            # (the due rows are read once: see `claim_runs` on `IN (SELECT ... LIMIT ?)`)
            return await tx.fetchall(
                "WITH due AS MATERIALIZED (SELECT id FROM outbox WHERE status = 'scheduled'"
                " AND scheduled_at <= ? ORDER BY scheduled_at, id LIMIT ?)"
                " UPDATE outbox SET status = 'publishing' WHERE id IN (SELECT id FROM due)"
                # a row another claim took meanwhile is skipped: Postgres checks this again on
                # the row's new version once that claim commits
                " AND status = 'scheduled'"
                f" RETURNING {_OUTBOX_COLS}",
                (iso(now), limit),
            )

    async def mark_published(self, outbox_id: int, external_id: str) -> None:
        await self._b.execute(
            "UPDATE outbox SET status = 'published', published_at = ?, external_id = ?"
            " WHERE id = ? AND status = 'publishing'",
            (iso(utcnow()), external_id, outbox_id),
        )

    # --- threads ---------------------------------------------------------------------------------
    async def touch_thread(
        self,
        thread_id: str,
        *,
        title: str = "",
        status: str,
        context: dict[str, Any] | None = None,
        tenant: str = "default",
    ) -> None:
        now = iso(utcnow())
        await self._b.execute(
            "INSERT INTO threads (thread_id, title, status, context, created_at, updated_at, tenant)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id) DO UPDATE SET status ="
            " excluded.status, updated_at = excluded.updated_at,"
            " title = CASE WHEN threads.title = '' THEN excluded.title ELSE threads.title END,"
            " context = CASE WHEN excluded.context = '{}' THEN threads.context"
            " ELSE excluded.context END",
            (thread_id, title[:200], status, json.dumps(context or {}), now, now, tenant),
        )

    async def create_thread(
        self,
        thread_id: str,
        *,
        tenant: str,
        metadata: dict[str, Any],
        graph_id: str,
        status: str = "idle",
    ) -> tuple[dict[str, Any], bool]:
        """Insert a thread; returns (row, created). An existing id is never taken over: a row of
        another tenant is reported as not created and not returned (the caller answers 409)."""
        now = iso_us(utcnow())
        rows = await self._b.fetchall(
            "INSERT INTO threads (thread_id, title, status, context, created_at, updated_at,"
            " tenant, metadata, graph_id) VALUES (?, '', ?, '{}', ?, ?, ?, ?, ?)"
            " ON CONFLICT (thread_id) DO NOTHING RETURNING *",
            (thread_id, status, now, now, tenant, json.dumps(metadata), graph_id),
        )
        if rows:
            return _thread_row(rows[0]), True
        row = await self.get_thread(thread_id)
        assert row is not None
        return row, False

    async def get_thread(self, thread_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        """One thread; with `tenant`, only when it belongs to that tenant."""
        sql, params = "SELECT * FROM threads WHERE thread_id = ?", [thread_id]
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        rows = await self._b.fetchall(sql, params)
        return _thread_row(rows[0]) if rows else None

    async def search_threads(
        self,
        tenant: str,
        *,
        status: str | None = None,
        metadata: dict[str, Any] | None = None,
        ids: Sequence[str] | None = None,
        limit: int = 10,
        offset: int = 0,
        sort_by: str = "created_at",
        descending: bool = True,
    ) -> list[dict[str, Any]]:
        """A tenant's threads; `metadata` matches as langgraph-api's filter does
        (`metadata_contains`; filtered here, so it works the same on both backends)."""
        where, params = ["tenant = ?"], [tenant]
        if status:
            # `unfinished` (a CLI run stopped mid-way) is `idle` on the wire
            statuses = ["idle", "unfinished"] if status == "idle" else [status]
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params += statuses
        if ids:
            where.append(f"thread_id IN ({', '.join('?' * len(ids))})")
            params += list(ids)
        if sort_by not in ("created_at", "updated_at", "thread_id", "status"):
            sort_by = "created_at"
        order = f"{sort_by} {'DESC' if descending else 'ASC'}, thread_id"
        sql = f"SELECT * FROM threads WHERE {' AND '.join(where)} ORDER BY {order}"
        if not metadata:
            rows = await self._b.fetchall(f"{sql} LIMIT ? OFFSET ?", (*params, limit, offset))
            return [_thread_row(r) for r in rows]
        matched = [
            row
            for row in map(_thread_row, await self._b.fetchall(sql, params))
            if metadata_contains(row["metadata"], metadata)
        ]
        return matched[offset : offset + limit]

    async def update_thread(
        self,
        thread_id: str,
        *,
        metadata: dict[str, Any] | None = None,
        status: str | None = None,
        graph_id: str | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        """Merge `metadata` keys (top-level keys replaced whole, as langgraph-api's `||` does)
        under the row's lock, set status / graph / saved context."""
        sets, params = ["updated_at = ?"], [iso_us(utcnow())]
        if status is not None:
            sets.append("status = ?")
            params.append(status)
        if graph_id is not None:
            sets.append("graph_id = ?")
            params.append(graph_id)
        if context is not None:
            sets.append("context = ?")
            params.append(json.dumps(context))
        sql = f"UPDATE threads SET {', '.join(sets)} WHERE thread_id = ?"
        if metadata is None:
            await self._b.execute(sql, (*params, thread_id))
            return
        lock = "" if self.dialect == "sqlite" else " FOR UPDATE"  # SQLite: BEGIN IMMEDIATE
        async with self._b.transaction() as tx:
            rows = await tx.fetchall(
                f"SELECT metadata FROM threads WHERE thread_id = ?{lock}", (thread_id,)
            )
            if rows:
                merged = {**_loads(rows[0]["metadata"], {}), **metadata}
                await tx.execute(
                    sql.replace(" WHERE", ", metadata = ? WHERE"),
                    (*params, json.dumps(merged), thread_id),
                )

    async def delete_thread(self, thread_id: str) -> None:
        async with self._b.transaction() as tx:
            await tx.execute(
                "DELETE FROM run_events WHERE run_id IN (SELECT run_id FROM runs WHERE thread_id = ?)",
                (thread_id,),
            )
            await tx.execute("DELETE FROM runs WHERE thread_id = ?", (thread_id,))
            await tx.execute("DELETE FROM threads WHERE thread_id = ?", (thread_id,))

    async def delete_run_checkpoints(self, thread_id: str, run_id: str) -> int:
        """Roll `thread_id` back past `run_id`: delete the checkpoints that run wrote (in every
        namespace, every attempt) and their pending writes, so the thread's head is again the
        checkpoint it started from, with that checkpoint's own pending writes (an approval
        waiting, finished sibling tasks). What langgraph-api does (`adelete_for_runs`). The
        LangGraph checkpointer's tables live in this database; returns checkpoints deleted."""
        run = await self.get_run(run_id)
        async with self._b.transaction() as tx:
            return await self._delete_checkpoints(
                tx, thread_id, run_id, run["before_writes"] if run is not None else None
            )

    async def _delete_checkpoints(
        self, tx: Any, thread_id: str, run_id: str, before: list[Any] | None
    ) -> int:
        """`delete_run_checkpoints` in the transaction `tx`; `before`: the run's
        `before_writes`."""
        writes, match = self._checkpoint_tables()
        await tx.execute(
            f"DELETE FROM {writes} WHERE thread_id = ? AND checkpoint_id IN"
            f" (SELECT checkpoint_id FROM checkpoints WHERE thread_id = ? AND {match})",
            (thread_id, thread_id, run_id),
        )
        delete = f"DELETE FROM checkpoints WHERE thread_id = ? AND {match}"
        if self.dialect == "postgres":  # and the channel values only they used
            rows = await tx.fetchall(
                _DELETE_WITH_BLOBS_SQL.format(delete=delete), (thread_id, run_id, thread_id)
            )
        else:  # SQLite's checkpointer keeps values in the checkpoint
            rows = await tx.fetchall(f"{delete} RETURNING checkpoint_id", (thread_id, run_id))
        # the run also wrote onto the heads it started from (a resumed approval, tasks that
        # finished before the next checkpoint): keep only what was pending there at its start
        kept: dict[tuple[str, str], set[tuple[str, int]]] = {}
        for ns, cid, tid, idx in before or []:
            keys = kept.setdefault((ns, cid), set())
            if tid is not None:
                keys.add((tid, int(idx)))
        for (ns, cid), keys in kept.items():
            for w in await tx.fetchall(
                f"SELECT task_id, idx FROM {writes} WHERE thread_id = ? AND checkpoint_ns = ?"
                " AND checkpoint_id = ?",
                (thread_id, ns, cid),
            ):
                if (w["task_id"], int(w["idx"])) not in keys:
                    await tx.execute(
                        f"DELETE FROM {writes} WHERE thread_id = ? AND checkpoint_ns = ? AND"
                        " checkpoint_id = ? AND task_id = ? AND idx = ?",
                        (thread_id, ns, cid, w["task_id"], w["idx"]),
                    )
        return len(rows)

    async def stale_stateless_threads(self, older_than: datetime) -> list[str]:
        """Threads of stateless runs due for deletion (`on_completion` delete) that nobody
        deleted (their client went away before the end), idle since before `older_than`."""
        rows = await self._b.fetchall(
            "SELECT thread_id, metadata FROM threads WHERE updated_at < ? AND status <> 'busy'"
            f" AND {_STATELESS} AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.thread_id ="
            " threads.thread_id AND runs.status IN ('pending', 'running'))",
            (iso_us(older_than),),
        )
        out = []
        for row in rows:
            meta = _loads(row["metadata"], {})
            if meta.get("stateless") and meta.get("on_completion", "delete") == "delete":
                out.append(str(row["thread_id"]))
        return out

    async def list_threads(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._b.fetchall(
            "SELECT thread_id, title, status, created_at, updated_at FROM threads"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )

    # --- runs: the queue ----------------------------------------------------------------------
    async def enqueue_run(
        self,
        *,
        run_id: str,
        thread_id: str,
        tenant: str,
        assistant_id: str,
        graph_id: str,
        kwargs: dict[str, Any],
        metadata: dict[str, Any],
        multitask_strategy: str,
        events: Sequence[tuple[str, str]] = (),
        thread_context: dict[str, Any] | None = None,
        thread_metadata: dict[str, Any] | None = None,
        metadata_read: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Queue a run as `pending`; returns (run, active runs it found on the thread). With
        `reject` and an active run nothing is written and `ThreadBusyError` is raised. The check
        and the insert are one transaction holding the thread row (Postgres `FOR UPDATE`; SQLite
        `BEGIN IMMEDIATE`), so two requests cannot both pass the check. `events` (the run's first
        stream events; their ids are returned as the run's `event_ids`), `thread_context` (saved
        for later runs) and `thread_metadata` (keys merged into the thread's metadata) are
        written in the same transaction, before any worker can see the run; Postgres wakes the
        workers at commit. `enqueue` on Postgres needs no check: one statement, and no active
        runs are returned; there `thread_metadata` is merged into `metadata_read` (the thread's
        metadata as the caller read it) and written only if the thread still has that metadata
        (a PATCH in between wins; the thread's next run merges it then)."""
        lock = "" if self.dialect == "sqlite" else " FOR UPDATE"
        now = iso_us(utcnow())
        if multitask_strategy == "enqueue" and self.dialect == "postgres":
            # nothing to check and no active run to act on: one statement, no transaction
            run = await self._enqueue_statement(
                run_id,
                thread_id,
                tenant,
                assistant_id,
                graph_id,
                kwargs,
                metadata,
                now,
                events,
                thread_context,
                (metadata_read or {}, thread_metadata) if thread_metadata else None,
            )
            return run, []
        async with self._b.transaction() as tx:
            held = await tx.fetchall(
                f"SELECT metadata FROM threads WHERE thread_id = ?{lock}", (thread_id,)
            )
            active = await tx.fetchall(
                f"SELECT {RUN_COLS} FROM runs WHERE thread_id = ? AND status IN ('pending', 'running')"
                " ORDER BY started_at",
                (thread_id,),
            )
            if active and multitask_strategy == "reject":
                raise ThreadBusyError(thread_id)
            rows = await tx.fetchall(
                self._notifying(
                    "INSERT INTO runs (run_id, thread_id, tenant, assistant_id, graph_id, status,"
                    " kwargs, metadata, multitask_strategy, started_at, updated_at)"
                    f" VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?) RETURNING {RUN_COLS}",
                    f"'{QUEUE_CHANNEL}'",
                ),
                (
                    run_id,
                    thread_id,
                    tenant,
                    assistant_id,
                    graph_id,
                    json.dumps(kwargs),
                    json.dumps(metadata),
                    multitask_strategy,
                    now,
                    now,
                ),
            )
            event_ids = []
            if events:
                added = await tx.fetchall(*self._append_sql(run_id, events, None, now))
                event_ids = sorted(int(r["id"]) for r in added)
            sets, values = [], []
            if thread_context is not None:
                sets.append("context = ?")
                values.append(json.dumps(thread_context))
            if thread_metadata and held:  # merged with what the held row has
                sets.append("metadata = ?")
                values.append(json.dumps({**_loads(held[0]["metadata"], {}), **thread_metadata}))
            if sets:
                await tx.execute(
                    f"UPDATE threads SET {', '.join(sets)}, updated_at = ? WHERE thread_id = ?",
                    (*values, now, thread_id),
                )
        return {**_run_row(rows[0]), "event_ids": event_ids}, [_run_row(r) for r in active]

    async def _enqueue_statement(
        self,
        run_id: str,
        thread_id: str,
        tenant: str,
        assistant_id: str,
        graph_id: str,
        kwargs: dict[str, Any],
        metadata: dict[str, Any],
        now: str,
        events: Sequence[tuple[str, str]],
        thread_context: dict[str, Any] | None,
        thread_metadata: tuple[dict[str, Any], dict[str, Any]] | None,
    ) -> dict[str, Any]:
        """Postgres, `enqueue`: the run, its first events and the thread's context in one
        statement (atomic; the workers are woken at commit)."""
        params: list[Any] = [
            run_id,
            thread_id,
            tenant,
            assistant_id,
            graph_id,
            json.dumps(kwargs),
            json.dumps(metadata),
            now,
            now,
        ]
        also = ""
        if events:
            values = ", ".join("(?, ?, ?)" for _ in events)
            also += (
                ", first_events AS (INSERT INTO run_events (run_id, event, data, created_at)"
                f" SELECT changed.run_id, v.column1, v.column2, ? FROM changed, (VALUES {values})"
                " AS v ORDER BY v.column3 RETURNING id)"
            )
            params.append(now)
            for n, (name, data) in enumerate(events):
                params += [name, data, n]
        if thread_context is not None:
            also += (
                ", saved_context AS (UPDATE threads SET context = ?, updated_at = ?"
                " WHERE thread_id = ?)"
            )
            params += [json.dumps(thread_context), now, thread_id]
        if thread_metadata is not None:  # compare-and-set on the text this class writes
            read, merge = thread_metadata
            also += (
                ", saved_metadata AS (UPDATE threads SET metadata = ?, updated_at = ?"
                " WHERE thread_id = ? AND metadata = ?)"
            )
            params += [json.dumps({**read, **merge}), now, thread_id, json.dumps(read)]
        rows = await self._b.fetchall(
            self._notifying(
                "INSERT INTO runs (run_id, thread_id, tenant, assistant_id, graph_id, status,"
                " kwargs, metadata, multitask_strategy, started_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, 'enqueue', ?, ?)"
                f" RETURNING {RUN_COLS}",
                f"'{QUEUE_CHANNEL}'",
                also=also,
                columns=", (SELECT array_agg(id ORDER BY id) FROM first_events) AS event_ids"
                if events
                else "",
            ),
            params,
        )
        run = _run_row(rows[0])
        run["event_ids"] = [int(i) for i in run.get("event_ids") or []]
        return run

    async def claim_runs(
        self, owner: str, lease_until: datetime, limit: int, *, start: bool = False
    ) -> list[dict[str, Any]]:
        """Move up to `limit` pending runs to `running` under `owner`'s lease: for each thread only
        its oldest pending run, and only when the thread has no running run. The partial unique
        index `runs_one_running` makes a lost race a unique violation, which is skipped.

        With `start` (an executor about to run them; needs the checkpointer's tables) the claimed
        runs are also marked started — threads `busy`, and for a first attempt the checkpoint it
        starts from, as `mark_run_started` records it — in the same statement on Postgres, in
        the same transaction on SQLite."""
        if limit <= 0:
            return []
        if self.dialect == "postgres":
            # one statement; SKIP LOCKED: workers claiming at once take different runs
            now = iso_us(utcnow())
            params: tuple[Any, ...] = (owner, iso_us(lease_until), now)
            sets = (
                "status = 'running', lease_owner = ?, lease_expires_at = ?, attempt = attempt + 1,"
                " updated_at = ?"
            )
            if start:  # SET expressions see the row before the update: attempt 0 = never claimed
                sets += (
                    ", before_checkpoint_id = CASE WHEN runs.attempt = 0 THEN"
                    f" {_ROOT_HEAD_SQL.format(thread='runs.thread_id')}"
                    " ELSE runs.before_checkpoint_id END,"
                    " before_writes = CASE WHEN runs.attempt = 0 THEN"
                    f" {self._head_writes_sql('runs.thread_id')} ELSE runs.before_writes END"
                )
            # the picked runs are a MATERIALIZED CTE, read once: as `run_id IN (SELECT ... LIMIT
            # ? FOR UPDATE SKIP LOCKED)` the planner may run the subquery again for each row it
            # updates, each time skipping the rows it has just locked — and on a table without
            # statistics it did: one claim of 8 took all 100 pending runs
            update = (
                "WITH picked AS MATERIALIZED (SELECT run_id AS picked_id FROM runs r"
                " WHERE status = 'pending'"
                " AND NOT EXISTS (SELECT 1 FROM runs x WHERE x.thread_id = r.thread_id"
                "   AND x.status = 'running')"
                " AND NOT EXISTS (SELECT 1 FROM runs y WHERE y.thread_id = r.thread_id"
                "   AND y.status = 'pending' AND y.started_at < r.started_at)"
                " ORDER BY started_at LIMIT ? FOR UPDATE SKIP LOCKED),"
                f" claimed AS (UPDATE runs SET {sets} FROM picked"
                " WHERE runs.run_id = picked.picked_id AND runs.status = 'pending'"
                f" RETURNING {RUN_COLS})"
            )
            params = (limit, *params)
            if start:
                update += (
                    ", busy AS (UPDATE threads t SET status = 'busy',"
                    " graph_id = c.graph_id, updated_at = ? FROM claimed c"
                    " WHERE t.thread_id = c.thread_id)"
                )
                params += (now,)
            update += " SELECT * FROM claimed"
            try:
                rows = await self._b.fetchall(update, params)
                return [_run_row(r) for r in rows]
            except Exception as exc:
                if not is_unique_violation(exc):
                    raise
                # a run started outside the queue (the CLI) took a thread: one run at a time
        candidates = await self._b.fetchall(
            "SELECT run_id FROM runs r WHERE status = 'pending'"
            " AND NOT EXISTS (SELECT 1 FROM runs x WHERE x.thread_id = r.thread_id"
            "   AND x.status = 'running')"
            " AND NOT EXISTS (SELECT 1 FROM runs y WHERE y.thread_id = r.thread_id"
            "   AND y.status = 'pending' AND y.started_at < r.started_at)"
            " ORDER BY started_at LIMIT ?",
            (limit,),
        )
        claimed: list[dict[str, Any]] = []
        for cand in candidates:
            now = iso_us(utcnow())
            try:  # claimed and marked started together, or neither (no run left `running`)
                async with self._b.transaction() as tx:
                    rows = await tx.fetchall(
                        "UPDATE runs SET status = 'running', lease_owner = ?, lease_expires_at = ?,"
                        " attempt = attempt + 1, updated_at = ? WHERE run_id = ?"
                        f" AND status = 'pending' RETURNING {RUN_COLS}",
                        (owner, iso_us(lease_until), now, cand["run_id"]),
                    )
                    if start and rows:
                        run = _run_row(rows[0])
                        first = run["attempt"] == 1
                        for sql, params in self._start_statements(
                            run["run_id"],
                            run["thread_id"],
                            run["graph_id"],
                            record_before=first,
                            now=now,
                        ):
                            await tx.execute(sql, params)
                        if first:  # with the start it recorded
                            rows = await tx.fetchall(
                                f"SELECT {RUN_COLS} FROM runs WHERE run_id = ?", (cand["run_id"],)
                            )
            except Exception as exc:
                if not is_unique_violation(exc):
                    raise
                continue
            claimed += [_run_row(r) for r in rows]
        return claimed

    async def start_run_now(
        self,
        run_id: str,
        thread_id: str,
        provider: str,
        owner: str,
        lease_until: datetime,
        *,
        tenant: str = "default",
        graph_id: str = "supervisor",
    ) -> None:
        """A run that starts at once under `owner`'s lease (the CLI). `ThreadBusyError` when the
        thread already has a running run (the unique index decides)."""
        now = iso_us(utcnow())
        try:
            await self._b.execute(
                "INSERT INTO runs (run_id, thread_id, tenant, graph_id, assistant_id, status,"
                " provider, attempt, lease_owner, lease_expires_at, started_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?, 1, ?, ?, ?, ?)",
                (
                    run_id,
                    thread_id,
                    tenant,
                    graph_id,
                    graph_id,
                    provider,
                    owner,
                    iso_us(lease_until),
                    now,
                    now,
                ),
            )
        except Exception as exc:
            if is_unique_violation(exc):
                raise ThreadBusyError(thread_id) from exc
            raise

    async def running_run(self, thread_id: str) -> dict[str, Any] | None:
        rows = await self._b.fetchall(
            f"SELECT {RUN_COLS} FROM runs WHERE thread_id = ? AND status = 'running'", (thread_id,)
        )
        return _run_row(rows[0]) if rows else None

    async def renew_lease(
        self, run_id: str, owner: str, lease_until: datetime
    ) -> str | bool | None:
        """Extend the lease; returns the requested cancel action (None when none), or False when
        the lease is no longer ours (the run finished elsewhere or was taken over)."""
        rows = await self._b.fetchall(
            "UPDATE runs SET lease_expires_at = ? WHERE run_id = ? AND lease_owner = ?"
            " AND status = 'running' RETURNING cancel_action",
            (iso_us(lease_until), run_id, owner),
        )
        if not rows:
            return False
        action = rows[0]["cancel_action"]
        return str(action) if action else None

    async def running_runs(self) -> list[dict[str, Any]]:
        """Every running run with its lease (the sweeper decides which are stale)."""
        rows = await self._b.fetchall(f"SELECT {RUN_COLS} FROM runs WHERE status = 'running'")
        return [_run_row(r) for r in rows]

    async def requeue_run(self, run_id: str, owner: str | None, *, released: bool = False) -> bool:
        """Give a running run back to the queue (its lease expired, its process died, or a
        shutdown released it); compare-and-set on the owner so only one sweeper wins. Waits for
        an event write of the old owner in flight (it share-locks the row), so the old owner's
        events all precede the next attempt's. `released`: by a graceful shutdown, counted in
        `kwargs.released` (such attempts are not given up on as dead: `RUN_MAX_ATTEMPTS`)."""
        count = (
            "jsonb_set(kwargs::jsonb, '{released}',"
            " to_jsonb(coalesce((kwargs::jsonb ->> 'released')::int, 0) + 1))::text"
            if self.dialect == "postgres"
            else "json_set(kwargs, '$.released',"
            " coalesce(json_extract(kwargs, '$.released'), 0) + 1)"
        )
        sql = (
            "UPDATE runs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,"
            f"{f' kwargs = {count},' if released else ''}"
            " updated_at = ? WHERE run_id = ? AND status = 'running'"
        )
        params: list[Any] = [iso_us(utcnow()), run_id]
        if owner is None:
            sql += " AND lease_owner IS NULL"
        else:
            sql += " AND lease_owner = ?"
            params.append(owner)
        sql += " RETURNING run_id"
        return len(await self._b.fetchall(self._notifying(sql, f"'{QUEUE_CHANNEL}'"), params)) == 1

    def _checkpoint_tables(self) -> tuple[str, str]:
        """LangGraph's checkpointer tables in this database: (writes table, `run_id` match on
        `checkpoints.metadata`). AsyncSqliteSaver keeps metadata as JSON in a BLOB."""
        if self.dialect == "postgres":
            return "checkpoint_writes", "metadata->>'run_id' = ?"
        return "writes", "json_extract(CAST(metadata AS TEXT), '$.run_id') = ?"

    def _head_writes_sql(self, thread: str = "?") -> str:
        """A JSON list of [ns, checkpoint id, task id, idx] of the writes pending on the thread's
        head checkpoints (one per namespace: the root's, an interrupted subgraph's), plus
        [ns, id, null, null] for each head: what a rollback must leave on them. `thread` is the
        SQL for the thread id: a parameter (bound twice) or a column of the enclosing query."""
        writes, _ = self._checkpoint_tables()
        heads = (
            f"SELECT c.checkpoint_ns, c.checkpoint_id FROM checkpoints c WHERE c.thread_id = {thread}"
            " AND NOT EXISTS (SELECT 1 FROM checkpoints d WHERE d.thread_id = c.thread_id AND"
            " d.checkpoint_ns = c.checkpoint_ns AND d.parent_checkpoint_id = c.checkpoint_id)"
        )
        rows = (
            f"SELECT h.checkpoint_ns AS ns, h.checkpoint_id AS cid, w.task_id AS tid, w.idx AS idx"
            f" FROM ({heads}) h LEFT JOIN {writes} w ON w.thread_id = {thread} AND"
            " w.checkpoint_ns = h.checkpoint_ns AND w.checkpoint_id = h.checkpoint_id"
        )
        if self.dialect == "postgres":
            return (
                "(SELECT coalesce(json_agg(json_build_array(ns, cid, tid, idx)), '[]')::text"
                f" FROM ({rows}) x)"
            )
        return f"(SELECT json_group_array(json_array(ns, cid, tid, idx)) FROM ({rows}) x)"

    async def mark_run_started(self, run_id: str, thread_id: str, graph_id: str) -> None:
        """A run starts: its thread becomes `busy` and the checkpoint the thread is at before the
        run (its root head; '' for none yet) is recorded with the writes pending on the thread's
        head checkpoints (rollback goes back to exactly that) — read here, in the same statement.
        One statement on Postgres, one transaction on SQLite. (`claim_runs(start=True)` does
        this as it claims; this is for a run that no claim recorded.)"""
        statements = self._start_statements(
            run_id, thread_id, graph_id, record_before=True, now=iso_us(utcnow())
        )
        (thread_sql, thread_params), (run_sql, run_params) = statements
        if self.dialect == "postgres":
            await self._b.execute(
                f"WITH t AS ({thread_sql} RETURNING thread_id) {run_sql}",
                (*thread_params, *run_params),
            )
            return
        async with self._b.transaction() as tx:
            for sql, params in statements:
                await tx.execute(sql, params)

    def _start_statements(
        self, run_id: str, thread_id: str, graph_id: str, *, record_before: bool, now: str
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """What marks a claimed run started (`mark_run_started`), as statements."""
        out: list[tuple[str, tuple[Any, ...]]] = [
            (
                "UPDATE threads SET status = 'busy', graph_id = ?, updated_at = ?"
                " WHERE thread_id = ?",
                (graph_id, now, thread_id),
            )
        ]
        if record_before:
            out.append(
                (
                    f"UPDATE runs SET before_checkpoint_id = {_ROOT_HEAD_SQL.format(thread='?')},"
                    f" before_writes = {self._head_writes_sql()}, updated_at = ? WHERE run_id = ?",
                    (thread_id, thread_id, thread_id, now, run_id),
                )
            )
        return out

    async def set_run_fields(self, run_id: str, **fields: Any) -> None:
        allowed = {"before_checkpoint_id", "provider", "cancel_action", "kwargs"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"not settable: {sorted(bad)}")
        sets = [f"{k} = ?" for k in fields]
        values = [json.dumps(v) if k == "kwargs" else v for k, v in fields.items()]
        await self._b.execute(
            f"UPDATE runs SET {', '.join(sets)}, updated_at = ? WHERE run_id = ?",
            (*values, iso_us(utcnow()), run_id),
        )

    async def request_cancel(
        self,
        run_id: str,
        action: str,
        *,
        usage: dict[str, Any] | None = None,
        rollback: bool = False,
    ) -> dict[str, Any] | None:
        """Cancel a run; returns it afterwards (None when it does not exist), with `ended: True`
        when this call ended it. A pending one ends now: `interrupted`, its last event `end`
        `{"run_id", "status"}` stored in the same transaction (Postgres pushes it to the run's
        streams at commit, as `finish_run` does) and, with `usage`, that usage recorded; with
        `rollback`, the checkpoints an earlier attempt of it wrote are deleted in that transaction
        too (`delete_run_checkpoints`; a run released back to the queue part-way), so no run
        queued behind it can start from them. A running one is flagged and its worker stops it —
        at once when it runs in this process or (Postgres) hears the cancel notification, else on
        its next heartbeat."""
        now = iso_us(utcnow())
        end_data = json.dumps({"run_id": run_id, "status": "interrupted"}, separators=(",", ":"))
        sets = (
            "cancel_action = ?, updated_at = ?,"
            " ended_at = CASE WHEN status = 'pending' THEN ? ELSE ended_at END,"
        )
        params: list[Any] = [action, now, now]
        if usage is not None:
            sets += " usage = CASE WHEN status = 'pending' THEN ? ELSE usage END,"
            params.append(json.dumps(usage))
        sql = (
            f"UPDATE runs SET {sets}"
            " status = CASE WHEN status = 'pending' THEN 'interrupted' ELSE status END"
            f" WHERE run_id = ? AND status IN ('pending', 'running') RETURNING {RUN_COLS}"
        )
        params.append(run_id)
        async with self._b.transaction() as tx:
            if self.dialect == "postgres":
                # a pending run ended: its `end` is stored and pushed to its streams; a running
                # one: its worker is told; either way the workers look at the queue again
                also = (
                    ", ended AS (INSERT INTO run_events (run_id, event, data, created_at)"
                    " SELECT run_id, 'end', ?, ? FROM changed WHERE status = 'interrupted'"
                    " RETURNING id, run_id, event, data)"
                ) + self._push_ctes("ended", status=True)
                params += [end_data, now, run_id, "interrupted"]
                rows = await tx.fetchall(
                    self._notifying(
                        sql,
                        (
                            f"CASE WHEN changed.status = 'running' THEN '{CANCEL_CHANNEL}'"
                            f" ELSE '{RUN_CHANNEL}' END",
                            "CASE WHEN changed.status = 'running' THEN changed.run_id"
                            " ELSE coalesce((SELECT payload FROM push), changed.run_id) END",
                        ),
                        f"'{QUEUE_CHANNEL}'",
                        also=also,
                    ),
                    params,
                )
            else:
                rows = await tx.fetchall(sql, params)
                if rows and rows[0]["status"] == "interrupted":
                    await tx.execute(
                        "INSERT INTO run_events (run_id, event, data, created_at)"
                        " VALUES (?, 'end', ?, ?)",
                        (run_id, end_data, now),
                    )
            if not rows:
                return await self.get_run(run_id)
            row = _run_row(rows[0])
            row["ended"] = row["status"] == "interrupted"
            if row["ended"] and rollback and row["attempt"] > 0:
                await self._delete_checkpoints(tx, row["thread_id"], run_id, row["before_writes"])
        return row

    async def settle_thread_status(self, thread_id: str, status: str) -> bool:
        """Set the thread's status to `status` unless a run of it is running (its claim made the
        thread `busy`, which stays): after a run ended outside its worker. True when set."""
        rows = await self._b.fetchall(
            "UPDATE threads SET status = ?, updated_at = ? WHERE thread_id = ? AND NOT EXISTS"
            " (SELECT 1 FROM runs WHERE thread_id = ? AND status = 'running') RETURNING thread_id",
            (status, iso_us(utcnow()), thread_id, thread_id),
        )
        return bool(rows)

    async def start_run(self, run_id: str, thread_id: str, provider: str) -> None:
        """A run without a lease (kept for callers outside the queue; the CLI uses leases)."""
        now = iso_us(utcnow())
        await self._b.execute(
            "INSERT INTO runs (run_id, thread_id, status, provider, attempt, started_at, updated_at)"
            " VALUES (?, ?, 'running', ?, 1, ?, ?)",
            (run_id, thread_id, provider, now, now),
        )

    async def finish_run(
        self,
        run_id: str,
        status: str,
        usage: dict[str, Any],
        error: str | None = None,
        *,
        owner: str | None = None,
        thread_status: str | None = None,
        end_event: bool = False,
    ) -> bool:
        """Record the end of a run; with `owner`, only while that owner still holds it. With
        `thread_status`, the thread's status is set in the same statement (Postgres) or
        transaction (SQLite), and only if the run was finished here. With `end_event`, the run's
        last event, `end` `{"run_id", "status"}`, is stored with it (a stream's final read has
        it; the SDK then knows the run ended without asking). Postgres tells the run's streams
        and the workers (the thread's next queued run may start) at commit."""
        now = iso_us(utcnow())
        end_data = json.dumps({"run_id": run_id, "status": status}, separators=(",", ":"))
        sql = (
            "UPDATE runs SET status = ?, usage = ?, error = ?, ended_at = ?, updated_at = ?,"
            " lease_owner = NULL, lease_expires_at = NULL WHERE run_id = ?"
        )
        params: list[Any] = [status, json.dumps(usage), error, now, now, run_id]
        if owner is not None:
            sql += " AND lease_owner = ? AND status = 'running'"
            params.append(owner)
        sql += " RETURNING run_id, thread_id"
        thread_sql = "UPDATE threads SET status = ?, updated_at = ? WHERE thread_id = ?"
        if self.dialect == "postgres":
            also = ""
            if thread_status is not None:
                also = (
                    ", thread AS (UPDATE threads SET status = ?, updated_at = ?"
                    " WHERE thread_id IN (SELECT thread_id FROM changed))"
                )
                params += [thread_status, now]
            run_note: str | tuple[str, str] = f"'{RUN_CHANNEL}'"
            if end_event:  # the streams get `end` and the final status in the notification
                also += (
                    ", ended AS (INSERT INTO run_events (run_id, event, data, created_at)"
                    " SELECT run_id, 'end', ?, ? FROM changed RETURNING id, run_id, event, data)"
                ) + self._push_ctes("ended", status=True)
                params += [end_data, now, run_id, status]
                run_note = (f"'{RUN_CHANNEL}'", "(SELECT payload FROM push)")
            sql = self._notifying(sql, run_note, f"'{QUEUE_CHANNEL}'", also=also)
            return len(await self._b.fetchall(sql, params)) == 1
        async with self._b.transaction() as tx:
            rows = await tx.fetchall(sql, params)
            if rows and thread_status is not None:
                await tx.execute(thread_sql, (thread_status, now, rows[0]["thread_id"]))
            if rows and end_event:
                await tx.execute(
                    "INSERT INTO run_events (run_id, event, data, created_at) VALUES (?, 'end', ?, ?)",
                    (run_id, end_data, now),
                )
        return len(rows) == 1

    async def get_run(
        self, run_id: str, *, tenant: str | None = None, thread_id: str | None = None
    ) -> dict[str, Any] | None:
        sql, params = f"SELECT {RUN_COLS} FROM runs WHERE run_id = ?", [run_id]
        if tenant is not None:
            sql += " AND tenant = ?"
            params.append(tenant)
        if thread_id is not None:
            sql += " AND thread_id = ?"
            params.append(thread_id)
        rows = await self._b.fetchall(sql, params)
        return _run_row(rows[0]) if rows else None

    async def list_runs(
        self,
        thread_id: str,
        *,
        status: str | None = None,
        limit: int = 1000,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        sql, params = f"SELECT {RUN_COLS} FROM runs WHERE thread_id = ?", [thread_id]
        if status:
            sql += " AND status = ?"
            params.append(status)
        sql += f" ORDER BY started_at {'DESC' if newest_first else 'ASC'} LIMIT ? OFFSET ?"
        return [_run_row(r) for r in await self._b.fetchall(sql, (*params, limit, offset))]

    async def active_runs(self, thread_id: str) -> list[dict[str, Any]]:
        rows = await self._b.fetchall(
            f"SELECT {RUN_COLS} FROM runs WHERE thread_id = ? AND status IN ('pending', 'running')"
            " ORDER BY started_at",
            (thread_id,),
        )
        return [_run_row(r) for r in rows]

    async def delete_run(self, run_id: str) -> None:
        async with self._b.transaction() as tx:
            await tx.execute("DELETE FROM run_events WHERE run_id = ?", (run_id,))
            await tx.fetchall(
                self._notifying(
                    "DELETE FROM runs WHERE run_id = ? RETURNING run_id", f"'{RUN_CHANNEL}'"
                ),
                (run_id,),
            )

    # --- run events (the persisted stream) ----------------------------------------------------
    async def append_events(
        self, run_id: str, events: Sequence[tuple[str, str]], *, owner: str | None = None
    ) -> list[int]:
        """Append (event name, JSON text) pairs in order; returns their ids (monotonic), one
        statement per `EVENTS_PER_STATEMENT` events; Postgres wakes the run's streams at commit.

        With `owner`, only while that owner holds the run's lease (else `LeaseLostError`, nothing
        written). On Postgres the run's row is share-locked by the insert, so a takeover (an
        update of that row) waits for the write in flight: a run's events are committed in id
        order even when its worker changes, and a per-run cursor never skips one. (Ids of
        different runs may commit out of order; cursors are per run, so that is harmless.)"""
        now = iso_us(utcnow())
        ids: list[int] = []
        for start in range(0, len(events), EVENTS_PER_STATEMENT):
            chunk = events[start : start + EVENTS_PER_STATEMENT]
            rows = await self._b.fetchall(*self._append_sql(run_id, chunk, owner, now))
            if not rows and owner is not None:
                raise LeaseLostError(run_id)
            ids += sorted(int(r["id"]) for r in rows)
        return ids

    def _append_sql(
        self, run_id: str, events: Sequence[tuple[str, str]], owner: str | None, now: str
    ) -> tuple[str, list[Any]]:
        values = ", ".join("(?, ?, ?)" for _ in events)
        params: list[Any] = [now]
        if owner is None:
            source = "(SELECT ? AS run_id) r"
            params.append(run_id)
        else:
            lock = " FOR SHARE" if self.dialect == "postgres" else ""
            source = f"(SELECT run_id FROM runs WHERE run_id = ? AND lease_owner = ?{lock}) r"
            params += [run_id, owner]
        for n, (name, data) in enumerate(events):
            params += [name, data, n]
        sql = (
            "INSERT INTO run_events (run_id, event, data, created_at)"
            f" SELECT r.run_id, v.column1, v.column2, ? FROM {source}, (VALUES {values}) AS v"
            " ORDER BY v.column3 RETURNING id, run_id"
        )
        if self.dialect != "postgres":
            return sql, params
        # the streams get the events in the notification (when they fit): no read back. Not
        # `_notifying`: its `changed.*` would send every event's data back to this process
        params.append(run_id)
        return (
            f"WITH changed AS ({sql}, event, data){self._push_ctes('changed')}"
            f" SELECT changed.id, changed.run_id, pg_notify('{RUN_CHANNEL}', push.payload) AS _n"
            " FROM changed, push"
        ), params

    async def notification_queue_usage(self) -> float | None:
        """How full Postgres's notification queue is (0 to 1); None on SQLite (no queue)."""
        if self.dialect != "postgres":
            return None
        rows = await self._b.fetchall("SELECT pg_notification_queue_usage() AS usage")
        return float(rows[0]["usage"])

    async def events_after(
        self, run_id: str, after_id: int, limit: int = 500
    ) -> list[dict[str, Any]]:
        return await self._b.fetchall(
            "SELECT id, event, data FROM run_events WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?",
            (run_id, after_id, limit),
        )

    async def events_and_status(
        self, run_id: str, after_id: int, limit: int = 500
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` events after `after_id` and the run's status (None: no such run), read
        in one statement, so from one snapshot: when the status is final, every event the run
        will ever have is in this read or the next page."""
        rows = await self._b.fetchall(
            "SELECT 0 AS part, e.id, e.event, e.data FROM (SELECT id, event, data FROM run_events"
            " WHERE run_id = ? AND id > ? ORDER BY id LIMIT ?) AS e"
            " UNION ALL SELECT 1, 0, status, '' FROM runs WHERE run_id = ?"
            " ORDER BY part, id",
            (run_id, after_id, limit, run_id),
        )
        status = str(rows.pop()["event"]) if rows and rows[-1]["part"] == 1 else None
        return rows, status

    async def prune_events(self, older_than: datetime) -> int:
        """Delete the event logs of runs that ended before `older_than`."""
        return await self._b.execute(
            "DELETE FROM run_events WHERE run_id IN (SELECT run_id FROM runs WHERE ended_at IS NOT"
            " NULL AND ended_at < ?)",
            (iso_us(older_than),),
        )

    # --- API keys (hashes only; see app/apikeys.py) -------------------------------------------
    async def insert_api_key(
        self, *, key_id: str, key_hash: str, name: str, role: str, tenant: str
    ) -> dict[str, Any]:
        await self._b.execute(
            "INSERT INTO api_keys (key_id, key_hash, name, role, tenant, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (key_id, key_hash, name, role, tenant, iso(utcnow())),
        )
        row = await self.get_api_key(key_id)
        assert row is not None
        return row

    async def get_api_key(self, key_id: str) -> dict[str, Any] | None:
        rows = await self._b.fetchall(
            f"SELECT {_KEY_COLS} FROM api_keys WHERE key_id = ?", (key_id,)
        )
        return rows[0] if rows else None

    async def list_api_keys(
        self, *, tenant: str | None = None, include_revoked: bool = True
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if tenant is not None:
            where.append("tenant = ?")
            params.append(tenant)
        if not include_revoked:
            where.append("revoked_at IS NULL")
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return await self._b.fetchall(
            f"SELECT {_KEY_COLS} FROM api_keys{clause} ORDER BY created_at, key_id", params
        )

    async def revoke_api_key(self, key_id: str) -> bool:
        """True when the key was active and is now revoked."""
        return (
            await self._b.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (iso(utcnow()), key_id),
            )
            == 1
        )

    async def count_active_api_keys(self) -> int:
        rows = await self._b.fetchall("SELECT COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL")
        return int(rows[0]["n"])

    async def touch_api_key(self, key_id: str, when: datetime) -> None:
        await self._b.execute(
            "UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (iso(when), key_id)
        )


def is_unique_violation(exc: BaseException) -> bool:
    import sqlite3

    import psycopg.errors

    return isinstance(exc, psycopg.errors.UniqueViolation) or (
        isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)
    )


def _loads(value: Any, default: Any) -> Any:
    if value is None or value == "":
        return default
    return json.loads(value) if isinstance(value, str) else value


def metadata_contains(stored: dict[str, Any], query: dict[str, Any]) -> bool:
    """A metadata filter as langgraph-api applies it (Postgres' `@>` on objects): every key of
    `query` is in `stored` with an equal value, or, for an object, one that contains it."""
    for key, value in query.items():
        if key not in stored:
            return False
        if isinstance(value, dict) and isinstance(stored[key], dict):
            if not metadata_contains(stored[key], value):
                return False
        elif stored[key] != value:
            return False
    return True


def _thread_row(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["context"] = _loads(row.get("context"), {})
    row["metadata"] = _loads(row.get("metadata"), {})
    return row


def _run_row(row: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in row.items() if not k.startswith("_notify")}
    for key in ("kwargs", "metadata", "usage"):
        row[key] = _loads(row.get(key), {})
    row["before_writes"] = _loads(row.get("before_writes"), None)
    return row


async def open_sqlite_db(path: Path) -> tuple[AppDB, aiosqlite.Connection]:
    # off the event loop: blocking filesystem calls stall every other run on the loop
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA busy_timeout=10000")
    return AppDB(_SqliteBackend(conn)), conn


def postgres_db(pool: AsyncConnectionPool[Any]) -> AppDB:
    return AppDB(_PostgresBackend(pool))
