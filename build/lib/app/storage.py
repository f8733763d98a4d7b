"""One checkpointer factory and the app database, opened together.

Embedded default: SQLite files in DATA_DIR (checkpoints and app tables in one database file).
With DATABASE_URL: `AsyncPostgresSaver` and the app tables on one psycopg pool owned by the app.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from app.db import AppDB, StorageNotMigratedError, open_sqlite_db, postgres_db
from app.settings import Settings, get_settings


@dataclass
class Storage:
    checkpointer: BaseCheckpointSaver[Any]
    db: AppDB
    description: str  # e.g. "sqlite .data/mkt.sqlite" (never includes credentials)


def redact_dsn(dsn: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - an unparsable DSN is reported, never echoed
        return "postgres (unparsable DATABASE_URL)"
    return f"postgres {parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


RECENTLY_USED_S = 2.0
_handed_out: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def pooled_saver(pool: AsyncConnectionPool[Any]) -> AsyncPostgresSaver:
    """`AsyncPostgresSaver` on the pool, with its calls no longer one at a time.

    The saver serialises every call through one `asyncio.Lock`, which a single shared connection
    needs and a pool does not (each call takes a connection of its own): a process then reads
    and writes one checkpoint at a time — a worker's concurrent runs wait for each other's
    checkpoints, a server's run creations for each other's state reads (langgraph issue #7259,
    fix proposed in PR #7269). Half the pool may serve checkpoint calls at once; the rest stays
    for the app tables the same pool serves."""
    saver = AsyncPostgresSaver(pool)
    saver.lock = asyncio.Semaphore(max(1, pool.max_size // 2))  # type: ignore[assignment]
    return saver


async def check_unless_recently_used(conn: Any) -> None:
    """The pool's check on each checkout: ping the connection (a round trip) unless it was
    handed out less than `RECENTLY_USED_S` ago. The pool discards a connection that broke while
    in use when it comes back, so a recently used one is known to work; a ping on every checkout
    would double the round trips of a busy server (two per statement, each a context switch to
    Postgres), while idle connections — the ones a restarted or distant database kills — are
    still checked before use."""
    now = time.monotonic()
    last = _handed_out.get(conn)
    _handed_out[conn] = now
    if last is None or now - last > RECENTLY_USED_S:
        await AsyncConnectionPool.check_connection(conn)


def make_pool(dsn: str, max_size: int, *, prepare: bool = True) -> AsyncConnectionPool[Any]:
    """The pool of the checkpointer and the app tables. `prepare`: statements are prepared on
    first use (`prepare_threshold=0`, LangGraph's default for its savers), else never."""
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        open=False,
        kwargs={
            "autocommit": True,
            "row_factory": dict_row,
            "prepare_threshold": 0 if prepare else None,
        },
        check=check_unless_recently_used,
    )


async def settle_checkpointer(checkpointer: BaseCheckpointSaver[Any]) -> None:
    """After a run's task was cancelled: AsyncSqliteSaver executes a write, then commits; a task
    cancelled in between leaves its connection in an open write transaction that locks the
    SQLite file for every other connection (the app tables) until that connection's next
    commit. Commit it now (its statements completed: the rows are whole). Postgres savers use
    autocommit connections: nothing to do."""
    if isinstance(checkpointer, AsyncSqliteSaver):
        async with checkpointer.lock:
            await checkpointer.conn.commit()


@asynccontextmanager
async def open_storage(
    settings: Settings | None = None, *, migrate: bool = False
) -> AsyncIterator[Storage]:
    """Open checkpointer + app DB. SQLite migrates itself; Postgres needs `mkt db migrate`
    (or `migrate=True`) and says so when it has not been run."""
    s = settings or get_settings()
    if s.database_url is None:
        path = s.sqlite_path
        db, conn = await open_sqlite_db(path)
        try:
            async with AsyncSqliteSaver.from_conn_string(str(path)) as sqlite_saver:
                await sqlite_saver.setup()
                await db.migrate()
                yield Storage(sqlite_saver, db, f"sqlite {path}")
        finally:
            await conn.close()
        return
    dsn = s.database_url.get_secret_value()
    pool = make_pool(dsn, s.db_pool_max_size, prepare=s.db_prepared_statements)
    await pool.open(wait=True, timeout=15)
    try:
        saver: BaseCheckpointSaver[Any] = pooled_saver(pool)
        db = postgres_db(pool)
        if migrate:
            await saver.setup()  # type: ignore[attr-defined]
            await db.migrate()
        elif not await db.is_migrated():
            raise StorageNotMigratedError(redact_dsn(dsn))
        yield Storage(saver, db, redact_dsn(dsn))
    finally:
        await pool.close()


async def migrate(settings: Settings | None = None) -> str:
    async with open_storage(settings, migrate=True) as storage:
        return storage.description


# ---------------------------------------------------------------------------------------------
# The app DB that graph nodes use (the outbox). The CLI and server install theirs; a graph run
# elsewhere (e.g. `langgraph dev`) opens the one configured by settings on first use.
# ---------------------------------------------------------------------------------------------
_active_db: AppDB | None = None
_fallback: Any = None


def set_active_db(db: AppDB | None) -> None:
    global _active_db
    _active_db = db


_open_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None


def _opening_lock() -> asyncio.Lock:
    """One lock per event loop, so parallel first calls (two `enqueue` nodes) open one DB."""
    global _open_lock
    loop = asyncio.get_running_loop()
    if _open_lock is None or _open_lock[0] is not loop:
        _open_lock = (loop, asyncio.Lock())
    return _open_lock[1]


async def active_db() -> AppDB:
    if _active_db is not None:
        return _active_db
    async with _opening_lock():
        if _active_db is not None:
            return _active_db
        return await _open_active_db()


async def _open_active_db() -> AppDB:
    global _active_db, _fallback
    s = get_settings()
    if s.database_url is None:
        db, conn = await open_sqlite_db(s.sqlite_path)
        await db.migrate()
        _fallback = conn
    else:
        pool = make_pool(
            s.database_url.get_secret_value(),
            s.db_pool_max_size,
            prepare=s.db_prepared_statements,
        )
        await pool.open(wait=True, timeout=15)
        db = postgres_db(pool)
        if not await db.is_migrated():
            raise StorageNotMigratedError(redact_dsn(s.database_url.get_secret_value()))
        _fallback = pool
    _active_db = db
    return db
