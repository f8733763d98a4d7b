"""The run queue and event log in the app database (SQLite here; the server integration tests run
the same code on Postgres): versioned migration of an existing database, one running run per thread
enforced by the database, leases and takeover of a dead process's run, replay without gap or
duplicate."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.db import SCHEMA_VERSION, AppDB, ThreadBusyError, open_sqlite_db, utcnow
from app.leases import (
    HOST,
    ThreadBusyAppError,
    _pid_alive,
    is_stale,
    keep_lease,
    lease_until,
    new_owner,
    owner_is_dead,
    start_run_with_lease,
)
from app.server.events import RunSignals, follow, parse_last_event_id
from tests.helpers import queue_run

V1_DDL = [
    "CREATE TABLE app_schema (version INTEGER NOT NULL)",
    "INSERT INTO app_schema VALUES (1)",
    """CREATE TABLE threads (thread_id TEXT PRIMARY KEY, title TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'idle', context TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    """CREATE TABLE runs (run_id TEXT PRIMARY KEY, thread_id TEXT NOT NULL, status TEXT NOT NULL,
        provider TEXT NOT NULL DEFAULT '', usage TEXT NOT NULL DEFAULT '{}', error TEXT,
        started_at TEXT NOT NULL, ended_at TEXT)""",
    "INSERT INTO threads VALUES ('old', 'Old thread', 'busy', '{}', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00')",
    "INSERT INTO runs (run_id, thread_id, status, started_at) VALUES ('r-old', 'old', 'running', '2026-01-01T00:00:00+00:00')",
]


@pytest.fixture
async def db(tmp_path: Path) -> AppDB:
    db_, conn = await open_sqlite_db(tmp_path / "app.sqlite")
    await db_.migrate()
    yield db_
    await conn.close()


async def _thread(db: AppDB, tid: str) -> None:
    await db.create_thread(tid, tenant="default", metadata={}, graph_id="supervisor")


async def test_a_version_1_database_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "v1.sqlite"
    with sqlite3.connect(path) as conn:
        for stmt in V1_DDL:
            conn.execute(stmt)
    db, conn = await open_sqlite_db(path)
    try:
        assert await db.migrate() == SCHEMA_VERSION
        assert await db.migrate() == SCHEMA_VERSION  # idempotent
        old = await db.get_thread("old")
        assert old is not None and old["tenant"] == "default" and old["metadata"] == {}
        run = await db.get_run("r-old")
        assert run is not None and run["status"] == "error"  # no lease: its process is gone
        await queue_run(db, "old", "r-new")
        assert [r["run_id"] for r in await db.claim_runs("w1", lease_until(30), 5)] == ["r-new"]
    finally:
        await conn.close()


async def test_the_database_keeps_one_running_run_per_thread(db: AppDB) -> None:
    await _thread(db, "t")
    await _thread(db, "u")
    for rid in ("a", "b"):
        await queue_run(db, "t", rid)
    await queue_run(db, "u", "c")
    claimed = await db.claim_runs("w1", lease_until(30), 10)
    assert sorted(r["run_id"] for r in claimed) == ["a", "c"]  # oldest per thread only
    assert await db.claim_runs("w2", lease_until(30), 10) == []
    with pytest.raises(ThreadBusyError):  # the partial unique index, not application code
        await db.start_run_now("x", "t", "p", "w3", lease_until(30))
    with pytest.raises(ThreadBusyError):
        await queue_run(db, "t", "d", strategy="reject")
    assert await db.get_run("d") is None
    assert await db.finish_run("a", "success", {}, owner="someone-else") is False
    assert await db.finish_run("a", "success", {}, owner="w1") is True
    assert [r["run_id"] for r in await db.claim_runs("w2", lease_until(30), 10)] == ["b"]


async def test_concurrent_claims_never_run_a_thread_twice(db: AppDB) -> None:
    await _thread(db, "t")
    for n in range(5):
        await queue_run(db, "t", f"r{n}")
    results = await asyncio.gather(*(db.claim_runs(f"w{n}", lease_until(30), 5) for n in range(6)))
    assert sum(len(r) for r in results) == 1


async def test_an_executors_claim_marks_its_runs_started(tmp_path: Path) -> None:
    from app.settings import Settings
    from app.storage import open_storage
    from tests.helpers import check_claim_marks_runs_started

    settings = Settings(model_provider="scripted", data_dir=tmp_path / "d")
    async with open_storage(settings, migrate=True) as storage:
        await check_claim_marks_runs_started(storage)


async def test_stateless_threads_due_for_deletion_are_found_by_an_index(db: AppDB) -> None:
    from tests.helpers import check_stateless_threads_are_found_by_their_index

    await check_stateless_threads_are_found_by_their_index(db)


async def test_a_claim_that_cannot_mark_its_run_started_leaves_it_queued(db: AppDB) -> None:
    """Claiming and marking started are one transaction: when marking fails (here: no
    checkpointer tables in this bare database) the run is still pending, not `running` under an
    owner that will never execute it."""
    await _thread(db, "t")
    await queue_run(db, "t", "r")
    with pytest.raises(sqlite3.OperationalError, match="checkpoints"):
        await db.claim_runs("w1", lease_until(30), 5, start=True)
    run = await db.get_run("r")
    assert run is not None and run["status"] == "pending" and run["lease_owner"] is None
    assert run["attempt"] == 0
    assert [r["run_id"] for r in await db.claim_runs("w1", lease_until(30), 5)] == ["r"]


async def test_the_heartbeat_outlives_a_database_hiccup(
    db: AppDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal that fails (database restarting, pool exhausted) is retried at the next beat
    instead of ending the heartbeat, which would let the lease lapse and another worker run the
    same run."""
    await _thread(db, "t")
    await queue_run(db, "t", "r")
    (run,) = await db.claim_runs("w1", lease_until(30), 1)
    real = db.renew_lease
    calls: list[str] = []

    async def flaky(*args: Any) -> Any:
        calls.append("renew")
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return await real(*args)

    monkeypatch.setattr(db, "renew_lease", flaky)
    lost: list[bool] = []
    async with keep_lease(db, "r", "w1", 0.15, lambda _: None, lambda: lost.append(True)):
        for _ in range(100):
            if len(calls) >= 4:
                break
            await asyncio.sleep(0.02)
    assert len(calls) >= 4 and not lost  # two failures, then renewals again
    row = await db.get_run("r")
    assert row is not None and row["lease_owner"] == "w1" and row["status"] == "running"
    assert row["lease_expires_at"] != run["lease_expires_at"]  # renewed after the failures


async def test_leases_heartbeat_cancel_and_requeue(db: AppDB) -> None:
    await _thread(db, "t")
    await queue_run(db, "t", "r")
    (run,) = await db.claim_runs("w1", lease_until(30), 1)
    assert run["attempt"] == 1 and not is_stale(run)
    assert await db.renew_lease("r", "w1", lease_until(30)) is None
    assert await db.renew_lease("r", "w2", lease_until(30)) is False  # not the owner
    await db.request_cancel("r", "interrupt")
    assert await db.renew_lease("r", "w1", lease_until(30)) == "interrupt"
    expired = {**run, "lease_expires_at": "2000-01-01T00:00:00+00:00"}
    assert is_stale(expired)
    assert await db.requeue_run("r", "w2") is False  # compare-and-set on the owner
    assert await db.requeue_run("r", "w1") is True
    (again,) = await db.claim_runs("w2", lease_until(30), 1)
    assert again["attempt"] == 2 and again["lease_owner"] == "w2"


async def test_a_graceful_release_is_counted_with_the_run(db: AppDB) -> None:
    from tests.helpers import check_graceful_releases_are_counted

    await check_graceful_releases_are_counted(db)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_process_on_this_host_is_recognised() -> None:
    pid = dead_pid()
    assert owner_is_dead(f"{HOST}:{pid}:abcd")
    assert not owner_is_dead(new_owner())  # ourselves
    assert not owner_is_dead(f"elsewhere:{pid}:abcd")  # another host: only the lease tells
    assert not owner_is_dead(None)
    assert os.getpid() != pid


INNER = """
import os, sys, time
from app.leases import new_owner
target = int(sys.argv[1])
while True:  # pids in a new namespace count up from 1: fork until ours is `target`
    child = os.fork()
    if child == 0:
        if os.getpid() == target:
            print(new_owner(), flush=True)
            time.sleep(60)
        os._exit(0)
    os.waitpid(child, 0)
    if child >= target:
        break
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_live_process_of_another_pid_namespace_on_this_host_is_not_taken_for_dead() -> None:
    """Containers with host networking share the host's name but not its pids: a worker in one
    must not judge a run's owner in another by a pid of its own namespace (it took live runs
    over at every sweep, back and forth, until their attempts ran out)."""
    target = next(p for p in range(30, 5000) if not _pid_alive(p))  # no such pid here
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    try:
        proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                sys.executable,
                "-c",
                INNER,
                str(target),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    except OSError as exc:
        pytest.skip(f"cannot start a process in a new pid namespace: {exc}")
    try:
        assert proc.stdout is not None
        owner = proc.stdout.readline().strip()
        if not owner:
            pytest.skip(f"no new pid namespace here: {proc.stderr.read() if proc.stderr else ''}")
        assert owner.split(":")[-2] == str(target)  # a pid that is dead in our namespace
        assert not owner_is_dead(owner)
    finally:
        proc.kill()
        proc.wait()


async def test_cli_run_takes_over_a_dead_process_but_not_a_live_one(db: AppDB) -> None:
    pid = await asyncio.to_thread(dead_pid)
    await db.touch_thread("t", status="busy")
    await db.start_run_now("dead", "t", "p", f"{HOST}:{pid}:x", lease_until(300))
    await start_run_with_lease(db, "mine", "t", "p", new_owner(), 30)
    dead = await db.get_run("dead")
    assert (
        dead is not None and dead["status"] == "error" and "continued by run mine" in dead["error"]
    )
    with pytest.raises(ThreadBusyAppError, match="in progress"):
        await start_run_with_lease(db, "other", "t", "p", new_owner(), 30)


async def test_follow_replays_after_a_cursor_and_continues_live(db: AppDB) -> None:
    await _thread(db, "t")
    await queue_run(db, "t", "r")
    await db.claim_runs("w1", lease_until(30), 1)
    signals = RunSignals(poll_s=0.05)
    first = await db.append_events("r", [("metadata", '{"run_id":"r"}'), ("values", '{"n":1}')])
    seen: list[int] = []

    async def reader(after: int) -> list[int]:
        return [ev.id async for ev in follow(db, signals, "r", after=after)]

    live = asyncio.create_task(reader(0))
    late = asyncio.create_task(reader(first[0]))
    more = []
    for n in range(2, 6):
        await asyncio.sleep(0.01)
        more += await db.append_events("r", [("values", f'{{"n":{n}}}')])
        signals.bump("r")
    await db.finish_run("r", "success", {}, owner="w1")
    signals.bump("r")
    seen = await asyncio.wait_for(live, 5)
    assert seen == first + more
    assert await asyncio.wait_for(late, 5) == first[1:] + more
    assert [ev.id async for ev in follow(db, signals, "r", after=more[-1])] == []
    # joining a finished run ends after its stored events, without waiting for a wake-up
    patient = RunSignals(poll_s=30.0)
    tail = [ev.id async for ev in follow(db, patient, "r", after=more[-2])]
    assert tail == more[-1:]
    assert parse_last_event_id(" 12 ") == 12 and parse_last_event_id("abc") == 0


async def test_event_retention_prunes_only_finished_old_runs(db: AppDB) -> None:
    await _thread(db, "t")
    await queue_run(db, "t", "r")
    await db.claim_runs("w1", lease_until(30), 1)
    await db.append_events("r", [("values", "{}")])
    assert await db.prune_events(utcnow()) == 0  # still running
    await db.finish_run("r", "success", {}, owner="w1")
    from datetime import timedelta

    assert await db.prune_events(utcnow() - timedelta(hours=1)) == 0
    assert await db.prune_events(utcnow() + timedelta(seconds=1)) == 1
