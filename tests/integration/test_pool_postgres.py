"""The pool the checkpointer and the app tables share, under cancellation and concurrency:

- a statement whose caller is cancelled (a client left an SSE stream mid-read) runs to its end
  and gives its connection back whole: no connection is closed and reopened for it, even under
  anyio's cancel scopes, which cancel again at every await; a caller that leaves while still
  waiting for a connection runs nothing;
- the checkpointer's calls no longer wait for each other: one held by a row lock does not stop
  another thread's read (the stock `AsyncPostgresSaver` runs one call at a time per process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import psycopg
import pytest
from langgraph.checkpoint.base import empty_checkpoint

from app.db import AppDB, postgres_db
from app.storage import make_pool, pooled_saver

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[Any]:
    pool = make_pool(pg_dsn, 4)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_cancelled_statement_gives_its_connection_back_whole(pool: Any) -> None:
    db: AppDB = postgres_db(pool)
    before = pool.get_stats()
    started = time.monotonic()
    async with anyio.create_task_group() as tg:  # as sse-starlette runs a response's stream
        tg.start_soon(db._b.fetchall, "SELECT pg_sleep(0.3)")
        await asyncio.sleep(0.05)  # the statement is in flight
        tg.cancel_scope.cancel()
    assert time.monotonic() - started < 0.25  # the caller did not wait for the statement
    await asyncio.sleep(0.4)  # it finishes in the background; its connection goes back
    after = pool.get_stats()
    assert after.get("returns_bad", 0) == before.get("returns_bad", 0), after
    assert after.get("connections_num", 0) == before.get("connections_num", 0), after
    assert (await db._b.fetchall("SELECT 1 AS one")) == [{"one": 1}]


async def test_a_caller_that_leaves_while_waiting_for_a_connection_leaves_the_queue(
    pg_dsn: str,
) -> None:
    """Only the statement itself is shielded: callers cancelled while the pool had no connection
    for them run nothing later (a dry pool does not fill with statements nobody waits for)."""
    pool = make_pool(pg_dsn, 1)
    await pool.open(wait=True)
    try:
        db = postgres_db(pool)
        await db._b.execute("CREATE TABLE left_queue (n INTEGER)")
        async with pool.connection():  # the only connection is taken
            waiting = [
                asyncio.create_task(db._b.execute("INSERT INTO left_queue VALUES (?)", (i,)))
                for i in range(20)
            ]
            await asyncio.sleep(0.1)
            for task in waiting:
                task.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)
        async with asyncio.timeout(2):  # served at once: nothing queued ahead of it
            rows = await db._b.fetchall("SELECT count(*) AS n FROM left_queue")
        assert rows == [{"n": 0}]
    finally:
        await pool.close()


async def test_checkpointer_calls_do_not_wait_for_each_other(pool: Any, pg_dsn: str) -> None:
    saver = pooled_saver(pool)
    await saver.setup()
    configs = {}
    for thread in ("held", "free"):
        config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        configs[thread] = await saver.aput(config, empty_checkpoint(), {}, {})
    held = configs["held"]["configurable"]
    async with await psycopg.AsyncConnection.connect(pg_dsn) as locker:
        async with locker.transaction():
            await locker.execute(
                "SELECT 1 FROM checkpoints WHERE thread_id = %s AND checkpoint_id = %s FOR UPDATE",
                ("held", held["checkpoint_id"]),
            )
            # this write waits for the row lock until the transaction ends
            checkpoint = empty_checkpoint()
            checkpoint["id"] = held["checkpoint_id"]
            blocked = asyncio.create_task(
                saver.aput(
                    {"configurable": {"thread_id": "held", "checkpoint_ns": ""}},
                    checkpoint,
                    {},
                    {},
                )
            )
            await asyncio.sleep(0.2)
            assert not blocked.done()
            # ... while another thread's checkpoint is read at once
            async with asyncio.timeout(5):
                got = await saver.aget_tuple(configs["free"])
            assert got is not None and got.config["configurable"]["thread_id"] == "free"
            assert not blocked.done()
        async with asyncio.timeout(5):
            await blocked
