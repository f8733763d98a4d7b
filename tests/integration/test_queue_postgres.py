"""The run queue on Postgres: notifications, one-statement enqueue and claim, and the event log's
ordering guarantee with several writers:

- every change a reader or worker waits for is announced by LISTEN/NOTIFY (payload = run id),
  from the statement that makes it, and the listener fans it out in this process;
- the listener survives losing its connection: readers poll meanwhile, and on reconnect every
  watcher re-reads;
- `enqueue` is one statement (run, first events, saved context); concurrent claims by several
  workers (one statement, `SKIP LOCKED`) never run a thread twice and take each run once;
- ids are BIGSERIAL, so writes of different runs commit out of id order; cursors are per run, so
  a live reader still misses nothing; and one run's events stay in commit order across a
  takeover, because the takeover waits for the old owner's write in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from app.db import (
    CANCEL_CHANNEL,
    QUEUE_CHANNEL,
    RUN_CHANNEL,
    AppDB,
    LeaseLostError,
    _PostgresBackend,
    postgres_db,
    utcnow,
)
from app.leases import lease_until
from app.server.events import RunSignals, follow
from app.server.notify import PgListener
from app.settings import Settings
from app.storage import make_pool, open_storage, pooled_saver
from tests.helpers import check_cancel_of_a_released_run, queue_run

pytestmark = pytest.mark.integration


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[tuple[AppDB, Any]]:
    pool = make_pool(pg_dsn, 6)
    await pool.open(wait=True)
    db = postgres_db(pool)
    await db.migrate()
    try:
        yield db, pool
    finally:
        await pool.close()


async def _until(check: Any, within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def count_reads(db: AppDB) -> tuple[list[int], Any]:
    """Every read of a run's events from the table from now on, as the id read after (a read
    the notifications spared leaves no entry); returns (reads, the uncounted read)."""
    reads: list[int] = []
    real_read = db.events_and_status

    async def counted(run_id: str, after_id: int, limit: int = 500) -> Any:
        reads.append(after_id)
        return await real_read(run_id, after_id, limit)

    db.events_and_status = counted  # type: ignore[method-assign]
    return reads, real_read


def read_into(
    got: list[tuple[int, str, str]], db: AppDB, signals: RunSignals, run_id: str
) -> asyncio.Task[None]:
    """A live reader of the run's stream (`follow`), its events appended to `got`."""

    async def read_all() -> None:
        async for ev in follow(db, signals, run_id):
            got.append((ev.id, ev.event, ev.data))

    return asyncio.create_task(read_all())


async def test_changes_are_announced_and_fanned_out_once_committed(
    pg: tuple[AppDB, Any], pg_dsn: str
) -> None:
    db, _ = pg
    signals = RunSignals(poll_s=30.0)  # a reader only wakes early if notified
    heard: list[tuple[str, str]] = []
    reconnects: list[int] = []

    def record(channel: str) -> Any:
        return lambda payload: heard.append((channel, payload))

    def on_run(payload: str) -> None:  # "<run id>", or "<run id> <events as JSON>"
        heard.append((RUN_CHANNEL, payload.partition(" ")[0]))
        signals.notified(payload)

    listener = PgListener(
        pg_dsn,
        {
            RUN_CHANNEL: on_run,
            CANCEL_CHANNEL: record(CANCEL_CHANNEL),
            QUEUE_CHANNEL: record(QUEUE_CHANNEL),
        },
        signals,
        on_reconnect=lambda: reconnects.append(1),
    )
    await listener.start()
    try:
        assert signals.via_db
        await queue_run(db, "t", "r", new_thread=True)
        await _until(lambda: (QUEUE_CHANNEL, "r") in heard)  # workers wake for a new run

        await db.claim_runs("w1", lease_until(30), 1)
        reader = asyncio.create_task(_collect(db, signals, "r"))
        await asyncio.sleep(0.1)
        first = await db.append_events("r", [("values", '{"n":1}')], owner="w1")
        await _until(lambda: (RUN_CHANNEL, "r") in heard)

        await db.request_cancel("r", "interrupt")  # running: its worker is told
        await _until(lambda: (CANCEL_CHANNEL, "r") in heard)

        heard.clear()
        await db.finish_run("r", "interrupted", {}, owner="w1", thread_status="idle")
        await _until(lambda: {(RUN_CHANNEL, "r"), (QUEUE_CHANNEL, "r")} <= set(heard))
        # the reader got every event and the end of the run without waiting for its 30 s poll
        assert await asyncio.wait_for(reader, 5) == first

        # the listener's connection is killed: it reconnects, watchers re-read, and it hears on
        assert listener._conn is not None
        backend = listener._conn.info.backend_pid
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        await _until(lambda: bool(reconnects), within_s=15)
        await _until(lambda: signals.via_db, within_s=15)
        heard.clear()
        await queue_run(db, "t2", "r2", new_thread=True)
        await _until(lambda: (QUEUE_CHANNEL, "r2") in heard)
    finally:
        await listener.stop()
    assert not signals.via_db


async def _collect(db: AppDB, signals: RunSignals, run_id: str, after: int = 0) -> list[int]:
    return [ev.id async for ev in follow(db, signals, run_id, after=after)]


async def test_ids_of_different_runs_commit_out_of_order_and_live_readers_miss_nothing(
    pg: tuple[AppDB, Any],
) -> None:
    db, pool = pg
    for tid, rid in (("ta", "a"), ("tb", "b")):
        await queue_run(db, tid, rid, new_thread=True)
    await db.claim_runs("w", lease_until(30), 2)
    signals = RunSignals(poll_s=0.05)
    reader_a = asyncio.create_task(_collect(db, signals, "a"))
    reader_b = asyncio.create_task(_collect(db, signals, "b"))
    async with pool.connection() as conn, conn.transaction():
        slow = AppDB(_PostgresBackend(pool, conn))  # run a's writer, its commit delayed
        (early,) = await slow.append_events("a", [("values", '{"a":1}')], owner="w")
        (late,) = await db.append_events("b", [("values", '{"b":1}')], owner="w")
        assert early < late  # a smaller id, not yet visible, while a larger one is
        await asyncio.sleep(0.2)  # b's reader has seen `late`; a's reader has seen nothing
    signals.bump("a")
    (more,) = await db.append_events("a", [("values", '{"a":2}')], owner="w")
    for rid in ("a", "b"):
        await db.finish_run(rid, "success", {}, owner="w")
        signals.bump(rid)
    assert await asyncio.wait_for(reader_a, 5) == [early, more]
    assert await asyncio.wait_for(reader_b, 5) == [late]


async def test_a_takeover_waits_for_the_old_owners_write_so_one_runs_events_stay_in_order(
    pg: tuple[AppDB, Any],
) -> None:
    db, pool = pg
    await queue_run(db, "t", "r", new_thread=True)
    await db.claim_runs("old", lease_until(30), 1)
    signals = RunSignals(poll_s=0.05)
    reader = asyncio.create_task(_collect(db, signals, "r"))
    async with pool.connection() as conn, conn.transaction():
        stalled = AppDB(_PostgresBackend(pool, conn))  # the old owner's write, not committed
        (old_id,) = await stalled.append_events("r", [("values", '{"by":"old"}')], owner="old")
        requeue = asyncio.create_task(db.requeue_run("r", "old"))  # its lease expired
        await asyncio.sleep(0.3)
        assert not requeue.done()  # waits for the write in flight (share lock on the run)
    assert await requeue
    (run,) = await db.claim_runs("new", lease_until(30), 1)
    assert run["attempt"] == 2
    with pytest.raises(LeaseLostError):  # the old owner can no longer write ...
        await db.append_events("r", [("values", '{"by":"old, late"}')], owner="old")
    (new_id,) = await db.append_events("r", [("values", '{"by":"new"}')], owner="new")
    assert old_id < new_id
    await db.finish_run("r", "success", {}, owner="new")
    signals.bump("r")
    live = await asyncio.wait_for(reader, 5)
    assert live == [old_id, new_id] == [e["id"] for e in await db.events_after("r", 0)]


async def test_enqueue_is_one_statement_and_concurrent_claims_take_each_thread_once(
    pg: tuple[AppDB, Any],
) -> None:
    db, _ = pg
    for t in range(3):
        await db.create_thread(f"t{t}", tenant="default", metadata={}, graph_id="supervisor")
        for r in range(3):
            run, active = await db.enqueue_run(
                run_id=f"t{t}-r{r}",
                thread_id=f"t{t}",
                tenant="default",
                assistant_id="supervisor",
                graph_id="supervisor",
                kwargs={},
                metadata={},
                multitask_strategy="enqueue",
                events=[("metadata", f'{{"run":{r}}}'), ("values", "{}")],
                thread_context={"brand_name": f"B{r}"},
            )
            assert active == []  # enqueue looks at no other run
            stored = await db.events_after(run["run_id"], 0)
            assert run["event_ids"] == [e["id"] for e in stored]
            assert [e["event"] for e in stored] == ["metadata", "values"]
    assert (await db.get_thread("t1") or {})["context"] == {"brand_name": "B2"}
    claims = await asyncio.gather(*(db.claim_runs(f"w{n}", lease_until(30), 5) for n in range(6)))
    claimed = [r["run_id"] for c in claims for r in c]
    assert sorted(claimed) == ["t0-r0", "t1-r0", "t2-r0"]  # the oldest of each thread, once
    assert await db.claim_runs("w9", lease_until(30), 5) == []  # each thread has a running run
    owner = {r["run_id"]: r["lease_owner"] for c in claims for r in c}["t0-r0"]
    assert await db.finish_run("t0-r0", "success", {}, owner=owner)
    (nxt,) = await db.claim_runs("w9", lease_until(30), 5)
    assert nxt["run_id"] == "t0-r1"


@pytest.mark.parametrize("start", [False, True], ids=["claim", "claim-and-start"])
async def test_a_claim_takes_at_most_its_limit_from_a_long_queue(
    pg: tuple[AppDB, Any], start: bool
) -> None:
    """100 runs pending on 100 threads, a worker with room for 8 claims 8. (As `run_id IN
    (SELECT ... LIMIT 8 FOR UPDATE SKIP LOCKED)` the subquery ran again for every row, each time
    past the rows it had locked: on a new table the claim took all 100, so one worker ran the
    whole queue at once, over its WORKER_CONCURRENCY, and left nothing to other workers.)"""
    db, pool = pg
    if start:  # marking runs started reads the checkpointer's tables
        await pooled_saver(pool).setup()
    for i in range(100):
        await queue_run(db, f"t{i}", f"r{i:03}", new_thread=True)
    first = await db.claim_runs("w1", lease_until(30), 8, start=start)
    assert [r["run_id"] for r in first] == [f"r{i:03}" for i in range(8)]  # the oldest first
    (count,) = await db._b.fetchall("SELECT count(*) AS n FROM runs WHERE status = 'running'")
    assert count["n"] == 8
    second = await db.claim_runs("w2", lease_until(30), 8, start=start)
    assert [r["run_id"] for r in second] == [f"r{i:03}" for i in range(8, 16)]


async def test_the_publisher_claims_at_most_its_limit_of_due_posts(pg: tuple[AppDB, Any]) -> None:
    db, _ = pg
    due = utcnow()
    for i in range(30):
        await db.enqueue(
            thread_id="t",
            artifact_id=f"a{i}",
            version=1,
            platform="x",
            kind="post",
            title="",
            body=f"post {i}",
            scheduled_at=due,  # all due at the same instant: ties in the order
        )
    claimed = await db.claim_due(utcnow(), limit=5)
    assert len(claimed) == 5
    publishing = await db.list_outbox(status="publishing")
    assert sorted(r["id"] for r in publishing) == sorted(r["id"] for r in claimed)


async def test_two_publishers_claiming_at_once_never_get_the_same_post(
    pg: tuple[AppDB, Any], pg_dsn: str
) -> None:
    """Both claims wait on the same locked rows; the one that goes second must skip what the
    first took (each post is claimed once, so published once)."""
    db, _ = pg
    for i in range(3):
        await db.enqueue(
            thread_id="t",
            artifact_id=f"a{i}",
            version=1,
            platform="x",
            kind="post",
            title="",
            body=f"post {i}",
            scheduled_at=utcnow(),
        )
    async with await psycopg.AsyncConnection.connect(pg_dsn) as locker:
        async with locker.transaction():
            await locker.execute("SELECT id FROM outbox FOR UPDATE")  # both claims will wait
            first = asyncio.create_task(db.claim_due(utcnow(), limit=5))
            second = asyncio.create_task(db.claim_due(utcnow(), limit=5))
            await asyncio.sleep(0.3)
        claims = await asyncio.gather(first, second)
    ids = [r["id"] for claim in claims for r in claim]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 3, claims


async def test_appended_events_reach_a_live_reader_in_the_notification_without_a_read(
    pg: tuple[AppDB, Any], pg_dsn: str
) -> None:
    """An append's notification carries its events (when they fit) and the id of the run's event
    before them: a reader at that id takes them as stored, without reading the table; a batch too
    large for a notification, or the end of the run, still reaches it — by a read, or pushed with
    the final status."""
    db, _ = pg
    await queue_run(db, "t", "r", new_thread=True)
    await db.claim_runs("w", lease_until(30), 1)
    (first,) = await db.append_events("r", [("metadata", '{"run_id":"r"}')], owner="w")
    signals = RunSignals(poll_s=30.0)  # no polling: only notifications wake the reader
    reads, real_read = count_reads(db)
    listener = PgListener(pg_dsn, {RUN_CHANNEL: signals.notified}, signals)
    await listener.start()
    try:
        got: list[tuple[int, str, str]] = []
        reader = read_into(got, db, signals, "r")
        await _until(lambda: len(got) == 1)  # stored before the reader came: its first read
        assert len(reads) == 1 and got[0][0] == first

        two = [("updates", '{"n":1}'), ("updates", '{"n":2}')]
        small = await db.append_events("r", two, owner="w")
        await _until(lambda: len(got) == 3)
        assert len(reads) == 1  # pushed: not read back
        assert got[1:] == [(small[0], "updates", '{"n":1}'), (small[1], "updates", '{"n":2}')]

        big = '{"text":"' + "x" * 9000 + '"}'  # over a notification's 8000 bytes
        (big_id,) = await db.append_events("r", [("values", big)], owner="w")
        await _until(lambda: len(got) == 4)
        assert got[3] == (big_id, "values", big) and len(reads) == 2  # announced, then read

        (after_big,) = await db.append_events("r", [("updates", '{"n":3}')], owner="w")
        await db.finish_run("r", "success", {}, owner="w", thread_status="idle", end_event=True)
        await asyncio.wait_for(reader, 5)  # ended by the pushed `end`, with no read
        assert len(reads) == 2
        assert [e[0] for e in got[4:]] == [after_big, got[-1][0]]
        assert got[-1][1:] == ("end", '{"run_id":"r","status":"success"}')
        stored, status = await real_read("r", 0)
        assert got == [(e["id"], e["event"], e["data"]) for e in stored] and status == "success"
    finally:
        await listener.stop()


async def test_a_cancelled_pending_run_ends_with_end_pushed_to_its_live_readers(
    pg: tuple[AppDB, Any], pg_dsn: str
) -> None:
    """A queued run that is cancelled ends in that statement (`interrupted`) with its last event
    `end` `{"run_id", "status"}`, stored with the status and pushed to its live streams in the
    notification (no read), as `finish_run` pushes a finished run's; the workers are told the
    queue changed (a run queued behind it may start)."""
    db, _ = pg
    await queue_run(db, "t", "r", new_thread=True)
    signals = RunSignals(poll_s=30.0)  # no polling: only notifications wake the reader
    reads, real_read = count_reads(db)
    queue: list[str] = []
    listener = PgListener(
        pg_dsn, {RUN_CHANNEL: signals.notified, QUEUE_CHANNEL: queue.append}, signals
    )
    await listener.start()
    try:
        got: list[tuple[int, str, str]] = []
        reader = read_into(got, db, signals, "r")
        await _until(lambda: len(reads) == 1)  # nothing stored yet, the run pending
        row = await db.request_cancel("r", "interrupt")
        assert row is not None and row["status"] == "interrupted"
        await asyncio.wait_for(reader, 5)  # ended by the pushed `end`, with no read
        assert len(reads) == 1
        assert [e[1:] for e in got] == [("end", '{"run_id":"r","status":"interrupted"}')]
        stored, status = await real_read("r", 0)
        assert got == [(e["id"], e["event"], e["data"]) for e in stored]
        assert status == "interrupted"
        await _until(lambda: "r" in queue)
        assert row.get("ended")  # (what tells `Executor.cancel` this request ended it)
        again = await db.request_cancel("r", "interrupt")  # ended already: nothing more
        assert again is not None and not again.get("ended")
        assert len((await real_read("r", 0))[0]) == 1
    finally:
        await listener.stop()


@pytest.mark.parametrize("action", ["interrupt", "rollback"])
async def test_cancelling_a_run_released_to_the_queue_settles_its_thread(
    pg_dsn: str, settings: Settings, action: str
) -> None:
    s = settings.model_copy(update={"database_url": SecretStr(pg_dsn)})
    async with open_storage(s, migrate=True):
        pass
    await check_cancel_of_a_released_run(s, action)


async def test_while_the_notification_queue_is_filling_appends_announce_bare_run_ids(
    pg: tuple[AppDB, Any], pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `PUSH_MAX_QUEUE_USAGE` (a listener stuck with its connection open holds the queue)
    appends send the bare run id, not their events: a reader reads each batch from the table,
    still once each and in order. (The queue is 8 GB: the threshold is lowered to 0 here.)"""
    import app.db

    monkeypatch.setattr(app.db, "PUSH_MAX_QUEUE_USAGE", 0.0)
    db, _ = pg
    await queue_run(db, "t", "r", new_thread=True)
    await db.claim_runs("w", lease_until(30), 1)
    signals = RunSignals(poll_s=30.0)  # no polling: only notifications wake the reader
    payloads: list[str] = []
    reads: list[int] = []
    real_read = db.events_and_status

    async def counted(run_id: str, after_id: int, limit: int = 500) -> Any:
        reads.append(after_id)
        return await real_read(run_id, after_id, limit)

    def heard(payload: str) -> None:
        payloads.append(payload)
        signals.notified(payload)

    db.events_and_status = counted  # type: ignore[method-assign]
    listener = PgListener(pg_dsn, {RUN_CHANNEL: heard}, signals)
    await listener.start()
    try:
        got: list[int] = []

        async def read_all() -> None:
            async for ev in follow(db, signals, "r"):
                got.append(ev.id)

        reader = asyncio.create_task(read_all())
        await _until(lambda: len(reads) == 1)  # its first read: nothing stored yet
        ids: list[int] = []
        for n in range(1, 4):
            ids += await db.append_events("r", [("updates", f'{{"n":{n}}}')], owner="w")
            await _until(lambda n=n: len(got) == n)  # type: ignore[misc]
        await db.finish_run("r", "success", {}, owner="w", thread_status="idle", end_event=True)
        await asyncio.wait_for(reader, 5)
        assert payloads == ["r"] * 4  # three appends and the end: bare ids only
        assert len(reads) == 5  # the first read, then one per announcement
        stored, _ = await real_read("r", 0)
        assert got == [e["id"] for e in stored] and got[:3] == ids
    finally:
        await listener.stop()


async def test_an_executors_claim_marks_its_runs_started_in_the_same_statement(
    pg_dsn: str, tmp_path: Any
) -> None:
    from app.settings import Settings
    from app.storage import open_storage
    from tests.helpers import check_claim_marks_runs_started

    settings = Settings(model_provider="scripted", data_dir=tmp_path, database_url=pg_dsn)
    async with open_storage(settings, migrate=True) as storage:
        await check_claim_marks_runs_started(storage)


async def test_stateless_threads_due_for_deletion_are_found_by_an_index(
    pg_dsn: str, tmp_path: Any
) -> None:
    """The same on Postgres, where the query's literal `%` must reach psycopg as `%%`."""
    from app.settings import Settings
    from app.storage import open_storage
    from tests.helpers import check_stateless_threads_are_found_by_their_index

    settings = Settings(model_provider="scripted", data_dir=tmp_path, database_url=pg_dsn)
    async with open_storage(settings, migrate=True) as storage:
        await check_stateless_threads_are_found_by_their_index(storage.db)


async def test_a_graceful_release_is_counted_with_the_run(pg: tuple[AppDB, Any]) -> None:
    from tests.helpers import check_graceful_releases_are_counted

    await check_graceful_releases_are_counted(pg[0])
