"""The app's own tables (outbox, threads, runs) in the same database as the checkpoints.

One SQL dialect serves both backends: SQL is written with `?` placeholders and ISO-8601 UTC text
timestamps (which order correctly as text); the Postgres backend rewrites `?` to `%s`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
from psycopg_pool import AsyncConnectionPool

SCHEMA_VERSION = 1

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

_OUTBOX_COLS = (
    "id, idempotency_key, thread_id, artifact_id, version, platform, kind, title, body, "
    "scheduled_at, status, created_at, published_at, external_id"
)

_KEY_COLS = "key_id, key_hash, name, role, tenant, created_at, last_used_at, revoked_at"


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
        return sql.replace("?", "%s")

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        if self._conn is not None:
            cur = await self._conn.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount)
        async with self.pool.connection() as conn:
            cur = await conn.execute(self._sql(sql), tuple(params))
            return int(cur.rowcount)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        if self._conn is not None:
            cur = await self._conn.execute(self._sql(sql), tuple(params))
            return [dict(r) for r in await cur.fetchall()]
        async with self.pool.connection() as conn:
            cur = await conn.execute(self._sql(sql), tuple(params))
            return [dict(r) for r in await cur.fetchall()]

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

    # --- schema ---------------------------------------------------------------------------------
    async def migrate(self) -> None:
        serial = "INTEGER" if self.dialect == "sqlite" else "BIGSERIAL"
        for stmt in _DDL:
            await self._b.execute(stmt.format(serial=serial))
        rows = await self._b.fetchall("SELECT version FROM app_schema")
        if not rows:
            await self._b.execute("INSERT INTO app_schema (version) VALUES (?)", (SCHEMA_VERSION,))

    async def is_migrated(self) -> bool:
        table_sql = (
            "SELECT name FROM sqlite_master WHERE type='table' AND name='app_schema'"
            if self.dialect == "sqlite"
            else "SELECT to_regclass('app_schema') IS NOT NULL AS name"
        )
        rows = await self._b.fetchall(table_sql)
        return bool(rows) and bool(rows[0]["name"])

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
            return await tx.fetchall(
                "UPDATE outbox SET status = 'publishing' WHERE id IN (SELECT id FROM outbox"
                " WHERE status = 'scheduled' AND scheduled_at <= ? ORDER BY scheduled_at LIMIT ?)"
                f" RETURNING {_OUTBOX_COLS}",
                (iso(now), limit),
            )

    async def mark_published(self, outbox_id: int, external_id: str) -> None:
        await self._b.execute(
            "UPDATE outbox SET status = 'published', published_at = ?, external_id = ?"
            " WHERE id = ? AND status = 'publishing'",
            (iso(utcnow()), external_id, outbox_id),
        )

    # --- threads and runs -----------------------------------------------------------------------
    async def touch_thread(
        self, thread_id: str, *, title: str = "", status: str, context: dict[str, Any] | None = None
    ) -> None:
        now = iso(utcnow())
        await self._b.execute(
            "INSERT INTO threads (thread_id, title, status, context, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (thread_id) DO UPDATE SET status ="
            " excluded.status, updated_at = excluded.updated_at,"
            " title = CASE WHEN threads.title = '' THEN excluded.title ELSE threads.title END,"
            " context = CASE WHEN excluded.context = '{}' THEN threads.context"
            " ELSE excluded.context END",
            (thread_id, title[:200], status, json.dumps(context or {}), now, now),
        )

    async def get_thread(self, thread_id: str) -> dict[str, Any] | None:
        rows = await self._b.fetchall("SELECT * FROM threads WHERE thread_id = ?", (thread_id,))
        if not rows:
            return None
        row = rows[0]
        row["context"] = json.loads(row["context"] or "{}")
        return row

    async def list_threads(self, limit: int = 50) -> list[dict[str, Any]]:
        return await self._b.fetchall(
            "SELECT thread_id, title, status, created_at, updated_at FROM threads"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )

    async def start_run(self, run_id: str, thread_id: str, provider: str) -> None:
        await self._b.execute(
            "INSERT INTO runs (run_id, thread_id, status, provider, started_at)"
            " VALUES (?, ?, 'running', ?, ?)",
            (run_id, thread_id, provider, iso(utcnow())),
        )

    async def finish_run(
        self, run_id: str, status: str, usage: dict[str, Any], error: str | None = None
    ) -> None:
        await self._b.execute(
            "UPDATE runs SET status = ?, usage = ?, error = ?, ended_at = ? WHERE run_id = ?",
            (status, json.dumps(usage), error, iso(utcnow()), run_id),
        )

    async def list_runs(self, thread_id: str) -> list[dict[str, Any]]:
        rows = await self._b.fetchall(
            "SELECT * FROM runs WHERE thread_id = ? ORDER BY started_at", (thread_id,)
        )
        for row in rows:
            row["usage"] = json.loads(row["usage"] or "{}")
        return rows

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


async def open_sqlite_db(path: Path) -> tuple[AppDB, aiosqlite.Connection]:
    # off the event loop: blocking filesystem calls stall every other run on the loop
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    conn = await aiosqlite.connect(path, isolation_level=None)
    await conn.execute("PRAGMA journal_mode=WAL")
    await conn.execute("PRAGMA busy_timeout=10000")
    return AppDB(_SqliteBackend(conn)), conn


def postgres_db(pool: AsyncConnectionPool[Any]) -> AppDB:
    return AppDB(_PostgresBackend(pool))
