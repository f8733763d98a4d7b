"""Worker processes and cross-process wake-ups, without Postgres (SQLite, subprocesses):

- `RunSignals`: a bump wakes only that run's watchers; unwatched runs keep no state; while the
  database delivers notifications, local writes do not wake twice;
- the listener's fan-out of notifications to those signals and to the executor;
- a cancel heard before its run's claim returned still stops the run;
- `mkt worker` executes a queued run from another process and stops cleanly on SIGTERM;
- `WorkerPool` (`mkt serve --workers N`): waits for ready, restarts a killed worker, reports a
  worker that cannot start with its output, stops its workers with SIGTERM.

The Postgres side (LISTEN/NOTIFY, cross-process streams, kill -9 of a worker) is covered by
`tests/integration/test_queue_postgres.py` and `test_server_workers.py`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from app.db import CANCEL_CHANNEL, QUEUE_CHANNEL, RUN_CHANNEL, open_sqlite_db
from app.leases import lease_until
from app.server.events import PUSHED_KEPT, RunSignals, follow
from app.server.executor import Executor
from app.server.notify import PgListener
from app.server.registry import Registry
from app.server.supervisor import WorkerPool, WorkerStartError
from app.server.worker import _watch_parent, listener_handlers
from app.settings import Settings
from tests.helpers import queue_run


# --- RunSignals --------------------------------------------------------------------------------
async def test_a_bump_wakes_only_that_runs_watchers_and_unwatched_runs_keep_no_state() -> None:
    signals = RunSignals(poll_s=5.0)
    signals.bump("nobody-watches")
    assert signals.watched == 0
    with signals.watch("a") as a, signals.watch("b") as b:
        seen_a, seen_b = a.version, b.version
        wait_a = asyncio.create_task(a.wait_past(seen_a))
        wait_b = asyncio.create_task(b.wait_past(seen_b))
        await asyncio.sleep(0.01)
        signals.bump("a")
        await asyncio.wait_for(wait_a, 1.0)  # woken at once, not after the 5 s poll
        assert not wait_b.done()
        wait_b.cancel()
        assert signals.watched == 2
    assert signals.watched == 0  # state goes with the last watcher


async def test_a_wait_cancelled_as_it_is_woken_ends_cancelled() -> None:
    """Regression: on Python 3.11 `asyncio.wait_for` returns normally when it is cancelled just as
    the wait ends, so a stream whose client left at that moment went on waiting."""
    signals = RunSignals(poll_s=5.0)
    with signals.watch("a") as a:
        waiting = asyncio.create_task(a.wait_past(a.version))
        await asyncio.sleep(0.01)
        signals.bump("a")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting


async def test_cancel_and_wait_ends_the_task_but_keeps_the_callers_own_cancellation() -> None:
    """`cancel_and_wait` (lease heartbeats, the notification listener): the task's cancellation
    is expected and dropped; if the caller is itself cancelled while the task winds down, the
    caller stays cancelled (`with suppress(CancelledError): await task` dropped that too)."""
    from app.tasks import cancel_and_wait

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # cleanup
            raise

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0.01)
    await cancel_and_wait(task)  # returns: the task's own cancellation
    assert task.cancelled()

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0.01)
    caller = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)  # the task is in its cleanup
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert task.done()


async def test_the_server_stops_when_a_run_wakes_its_executor_as_it_stops(
    settings: Settings,
) -> None:
    """Regression: a wake-up (a run created or ended) arriving as the executor stopped made its
    claim loop lose the cancellation (`asyncio.wait_for` on Python 3.11): shutdown hung."""
    from app.server.app import create_app

    app = create_app(settings)
    async with asyncio.timeout(30):
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0.05)
            app.state.services.executor.wake()


async def test_while_the_database_notifies_local_writes_do_not_wake_twice() -> None:
    signals = RunSignals(poll_s=0.5, safety_poll_s=5.0)
    with signals.watch("r") as watch:
        signals.wrote("r")  # no listener: the writer wakes its readers itself
        assert watch.version == 1 and signals.poll_interval() == 0.5
        signals.via_db = True  # a listener is connected: the notification will wake them
        signals.wrote("r")
        assert watch.version == 1 and signals.poll_interval() == 5.0
        signals.bump_all()  # after a gap in notifications every watcher reads again
        assert watch.version == 2


class _EventTable:
    """The read side of the event log in memory (`events_and_status`), counting reads."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.status = "running"
        self.reads = 0

    def store(self, *events: tuple[int, str, str]) -> str:
        """Store events; returns the JSON a notification carries for them."""
        prev = self.rows[-1]["id"] if self.rows else 0
        self.rows += [{"id": i, "event": e, "data": d} for i, e, d in events]
        return json.dumps({"r": "r", "p": prev, "e": [list(ev) for ev in events]})

    async def events_and_status(
        self, run_id: str, after_id: int, limit: int = 500
    ) -> tuple[list[dict[str, Any]], str]:
        self.reads += 1
        return [r for r in self.rows if r["id"] > after_id][:limit], self.status


async def test_pushed_events_that_follow_on_the_cursor_are_taken_without_a_read() -> None:
    table, signals = _EventTable(), RunSignals(poll_s=30.0)
    table.store((1, "metadata", "{}"))
    got: list[tuple[int, str]] = []

    async def read_all() -> None:
        async for ev in follow(table, signals, "r"):  # type: ignore[arg-type]
            got.append((ev.id, ev.event))

    async def until(n: int) -> None:
        for _ in range(200):
            if len(got) >= n:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{len(got)} events, expected {n}")

    reader = asyncio.create_task(read_all())
    await until(1)
    assert table.reads == 1
    signals.notified("r " + table.store((5, "updates", "{}"), (9, "updates", "{}")))
    await until(3)
    assert table.reads == 1  # ids of other runs lie between: `p` says what follows on what
    signals.notified("other-run " + table.store((10, "updates", "{}")))  # nobody watches it
    table.rows.pop()

    table.store((12, "updates", "{}"))  # stored, but its notification was lost ...
    signals.notified("r " + table.store((14, "updates", "{}")))  # ... the next one shows a gap
    await until(5)
    assert got[3:] == [(12, "updates"), (14, "updates")] and table.reads == 2

    signals.notified("r {not json")  # unreadable: read the table instead
    await asyncio.sleep(0.02)
    assert table.reads == 3 and len(got) == 5
    signals.notified("r")  # a bare id (too large to push, a status change): read
    await asyncio.sleep(0.02)
    assert table.reads == 4

    end = json.loads(table.store((20, "end", '{"status":"success"}')))
    table.status = "success"
    signals.notified("r " + json.dumps({**end, "s": "success"}))
    await asyncio.wait_for(reader, 1.0)  # the pushed end and final status end the stream
    assert got[-1] == (20, "end") and table.reads == 4
    assert [i for i, _ in got] == [r["id"] for r in table.rows]  # each once, in order


async def test_without_notifications_a_reader_polls_the_table() -> None:
    """SQLite, or a listener reconnecting: another process's writes wake nobody; the reader
    reads again each time the poll interval passes."""
    table, signals = _EventTable(), RunSignals(poll_s=0.02)
    reader = asyncio.create_task(_ids(follow(table, signals, "r")))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    table.store((3, "updates", "{}"), (4, "end", "{}"))  # written elsewhere, nobody told
    table.status = "success"
    assert await asyncio.wait_for(reader, 1.0) == [3, 4]
    assert table.reads >= 2


async def _ids(stream: Any) -> list[int]:
    return [ev.id async for ev in stream]


async def test_a_reader_that_falls_behind_the_kept_pushes_reads_the_table() -> None:
    table, signals = _EventTable(), RunSignals(poll_s=30.0)
    table.store((1, "metadata", "{}"))
    stream = follow(table, signals, "r")  # type: ignore[arg-type]
    assert (await anext(stream)).id == 1  # read; then the reader stops reading for a while
    for i in range(2, PUSHED_KEPT + 4):  # more batches than are kept: the oldest are dropped
        signals.notified("r " + table.store((i, "updates", "{}")))
    table.status = "success"
    rest = [ev.id async for ev in stream]
    assert rest == list(range(2, PUSHED_KEPT + 4)) and table.reads == 2  # read from the gap on


# --- fan-out ---------------------------------------------------------------------------------
async def test_the_listener_fans_notifications_out_to_signals_and_the_executor() -> None:
    signals = RunSignals()
    heard: list[tuple[str, str]] = []

    def broken(_: str) -> None:
        raise RuntimeError("a faulty handler")

    listener = PgListener(
        "postgresql://unused",
        {
            RUN_CHANNEL: signals.bump,
            CANCEL_CHANNEL: lambda rid: heard.append(("cancel", rid)),
            QUEUE_CHANNEL: lambda rid: heard.append(("queue", rid)),
            "mkt_broken": broken,
        },
        signals,
    )
    with signals.watch("r1") as w1, signals.watch("r2") as w2:
        listener.dispatch(RUN_CHANNEL, "r1")
        listener.dispatch(CANCEL_CHANNEL, "r2")
        listener.dispatch(QUEUE_CHANNEL, "r3")
        listener.dispatch("mkt_broken", "r1")  # logged; the listener lives on
        listener.dispatch("some_other_channel", "r1")  # ignored
        listener.dispatch(RUN_CHANNEL, "r1")
        assert (w1.version, w2.version) == (2, 0)
    assert heard == [("cancel", "r2"), ("queue", "r3")]


BLOG_RUN = {"input": {"messages": [{"role": "user", "content": "Write a blog post"}]}}


@pytest.fixture
async def executor(runner: Any, settings: Settings) -> Any:
    registry = Registry.load(runner.storage.checkpointer, settings.langgraph_config)
    ex = Executor(runner, registry, settings.model_copy(update={"scripted_latency_ms": 200.0}))
    ex.accepting = True  # claims only when told to (no loops)
    yield ex
    await ex.stop(0)


async def test_a_cancel_heard_before_the_claim_returned_still_stops_the_run(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel is requested just after this worker's claim committed, and its notification
    arrives before the claim's result: the worker remembers it and applies it once the run's task
    exists, instead of waiting for the next heartbeat."""
    db = executor.db
    await queue_run(db, "t", "r", new_thread=True, kwargs=BLOG_RUN)
    claim = db.claim_runs

    async def claim_then_cancelled(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        rows = await claim(*args, **kwargs)
        await db.request_cancel("r", "interrupt")  # another process cancels ...
        executor.cancel_notice("r")  # ... and its notification is heard here first
        return rows

    monkeypatch.setattr(db, "claim_runs", claim_then_cancelled)
    await executor.claim()
    assert executor.active == 1
    await asyncio.wait_for(executor.wait_until_done("r"), 10)
    run = await db.get_run("r")
    assert run is not None and run["status"] == "interrupted" and run["error"] == "cancelled"
    executor.cancel_notice("not-here")  # a run of another worker: only remembered, briefly
    assert "not-here" in executor._cancel_notices


async def test_a_cancel_between_the_claim_and_the_runs_task_stops_the_run_at_once(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite, in-process: a cancel whose request lands after this executor's claim of the run
    committed, but before the claim returned and the run's task exists, has no task to stop and
    no notification follows it. The executor remembers it and the claim applies it, instead of
    the run going on until its next heartbeat (`RUN_LEASE_S / 3`)."""
    db = executor.db
    await queue_run(db, "t", "r", new_thread=True, kwargs=BLOG_RUN)
    claim = db.claim_runs

    async def claim_then_cancelled(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        rows = await claim(*args, **kwargs)
        await executor.cancel(rows[0], "interrupt")  # a request of this process, meanwhile
        return rows

    monkeypatch.setattr(db, "claim_runs", claim_then_cancelled)
    await executor.claim()
    assert executor.active == 1
    await asyncio.wait_for(executor.wait_until_done("r"), 3)  # not the 10-s heartbeat
    run = await db.get_run("r")
    assert run is not None and run["status"] == "interrupted" and run["error"] == "cancelled"


async def test_a_claimed_run_whose_cancel_was_requested_earlier_is_stopped_at_once(
    executor: Executor,
) -> None:
    """A run flagged for cancel whose worker went away before stopping it is requeued with the
    flag; the executor that claims it applies the cancel at once (not at its first
    heartbeat)."""
    db = executor.db
    await queue_run(db, "t", "r", new_thread=True, kwargs=BLOG_RUN)
    await db.claim_runs("w-gone", lease_until(30), 1)
    await db.request_cancel("r", "interrupt")
    assert await db.requeue_run("r", "w-gone")
    await executor.claim()
    assert executor.active == 1
    await asyncio.wait_for(executor.wait_until_done("r"), 3)
    run = await db.get_run("r")
    assert run is not None and run["status"] == "interrupted" and run["attempt"] == 2


async def test_the_claim_loop_outlives_a_database_error(
    executor: Executor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim that fails (database locked, restarting, pool exhausted) is logged and retried;
    it does not end the loop that picks up runs."""
    db = executor.db
    await queue_run(db, "t", "r", new_thread=True, kwargs=BLOG_RUN)
    claim = db.claim_runs
    failures: list[str] = []

    async def flaky(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        if not failures:
            failures.append("x")
            raise sqlite3.OperationalError("database is locked")
        return await claim(*args, **kwargs)

    monkeypatch.setattr(db, "claim_runs", flaky)
    loop = asyncio.create_task(executor._claim_loop())
    try:
        executor.wake()
        await asyncio.wait_for(executor.wait_until_done("r"), 15)
    finally:
        loop.cancel()
    assert failures and (await db.get_run("r"))["status"] == "success"


def test_each_process_listens_only_to_the_channels_it_needs(executor: Executor) -> None:
    """A worker process serves no streams: it does not hear every run's events (each append
    announces them, up to 7.9 KB); a server without workers hears everything."""
    assert set(listener_handlers(executor, execute=True, serve=False)) == {
        CANCEL_CHANNEL,
        QUEUE_CHANNEL,
    }
    assert set(listener_handlers(executor, execute=False, serve=True)) == {RUN_CHANNEL}
    assert set(listener_handlers(executor, execute=True, serve=True)) == {
        RUN_CHANNEL,
        CANCEL_CHANNEL,
        QUEUE_CHANNEL,
    }


# --- mkt worker ------------------------------------------------------------------------------
def _worker_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "OPENAI_API_KEY")}
    env.update(
        MODEL_PROVIDER="scripted",
        DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
        LANGSMITH_TRACING="false",
        RUN_POLL_INTERVAL_S="0.1",
    )
    return env


async def _read_until(proc: asyncio.subprocess.Process, needle: str, within_s: float) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
        except TimeoutError:
            break
        if not line:
            break
        seen += line.decode()
        if needle in seen:
            return seen
    raise AssertionError(f"{needle!r} not seen; output:\n{seen}")


async def test_mkt_worker_executes_queued_runs_and_stops_cleanly_on_sigterm(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    db, conn = await open_sqlite_db(data / "mkt.sqlite")
    try:
        await db.migrate()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "worker",
            env=_worker_env(data),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            ready = await _read_until(proc, "ready:", 60)
            assert f"mkt worker[{proc.pid}]: ready: up to 8 runs at once" in ready
            await queue_run(
                db, "t", "r", new_thread=True, kwargs=BLOG_RUN
            )  # as `mkt serve` would, from another process
            for _ in range(300):
                run = await db.get_run("r")
                if run is not None and run["status"] not in ("pending", "running"):
                    break
                await asyncio.sleep(0.1)
            assert run is not None and run["status"] == "success", run
            assert run["attempt"] == 1 and run["lease_owner"] is None
            events = [e["event"] for e in await db.events_after("r", 0)]
            # stored by the worker: its default mode's events, then how the run ended
            assert events[-1] == "end" and set(events[:-1]) == {"values"}
            assert (await db.get_thread("t") or {})["status"] == "idle"
            proc.send_signal(signal.SIGTERM)
            out = await _read_until(proc, "stopped", 30)
            assert "stopping: 0 active run(s)" in out
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    finally:
        await conn.close()


async def test_a_worker_whose_server_is_gone_stops_by_itself() -> None:
    stop = asyncio.Event()
    await asyncio.wait_for(_watch_parent(os.getppid() + 10_000_000, stop), 5)
    assert stop.is_set()


# --- mkt serve --workers N: the supervisor ----------------------------------------------------
FAKE_WORKER = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: (print('stopped', flush=True), sys.exit(0)))\n"
    "print(f'mkt worker[{os.getpid()}]: ready: fake', flush=True)\n"
    "time.sleep(120)\n"
)


async def test_the_pool_restarts_a_killed_worker_and_stops_workers_with_sigterm(
    capsys: pytest.CaptureFixture[str],
) -> None:
    said: list[str] = []
    pool = WorkerPool(2, grace_s=1.0, command=[sys.executable, "-c", FAKE_WORKER], say=said.append)
    await pool.start()
    try:
        first = pool.pids
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        out = ""
        for _ in range(200):
            out += capsys.readouterr().out
            if out.count("ready:") == 3:  # the replacement is up (and handles SIGTERM)
                break
            await asyncio.sleep(0.05)
        assert len(pool.pids) == 2 and first[1] in pool.pids and first[0] not in pool.pids
        assert pool.restarts == 1
        assert f"worker {first[0]} was killed by SIGKILL; restarting it" in said[0]
    finally:
        await pool.stop()
    assert pool.pids == []
    assert capsys.readouterr().out.count("stopped") == 2  # each got SIGTERM and said so


async def test_a_worker_waiting_for_its_restart_does_not_hold_up_the_stop(tmp_path: Path) -> None:
    """A worker that died and waits out its restart back-off (up to 30 s while it keeps dying):
    `stop()` ends the wait at once instead of waiting for it, then for its grace period + 10 s."""
    started = tmp_path / "started"
    once = (  # the first worker gets ready and dies at once; a restarted one would stay up
        "import os, pathlib, sys, time\n"
        f"p = pathlib.Path({str(started)!r})\n"
        "first = not p.exists()\n"
        "p.touch()\n"
        "print(f'mkt worker[{os.getpid()}]: ready: fake', flush=True)\n"
        "sys.exit(3) if first else time.sleep(120)\n"
    )
    said: list[str] = []
    pool = WorkerPool(1, grace_s=60.0, command=[sys.executable, "-c", once], say=said.append)
    pool.RESTART_DELAY_S = 60.0  # the back-off outlasts the test
    await pool.start()
    for _ in range(200):
        if said:
            break
        await asyncio.sleep(0.05)
    assert "exited with code 3; restarting it in" in said[0], said
    await asyncio.wait_for(pool.stop(), 10)  # old: the back-off, then 60 + 10 s
    assert pool.pids == [] and pool.restarts == 1


async def test_a_worker_that_cannot_start_fails_the_start_with_its_output() -> None:
    pool = WorkerPool(
        1,
        grace_s=1.0,
        command=[sys.executable, "-c", "print('error: run `mkt db migrate` first'); exit(2)"],
        say=lambda _: None,
    )
    with pytest.raises(WorkerStartError, match=r"exited with code 2:\nerror: run `mkt db migrate`"):
        await pool.start()
    assert pool.pids == []


def test_worker_processes_default_to_one_per_cpu_but_one_on_postgres_and_none_on_sqlite(
    settings: Settings,
) -> None:
    from app.server.app import worker_count

    postgres = settings.model_copy(
        update={"database_url": SecretStr("postgresql://db/x"), "qdrant_url": "http://qdrant:6333"}
    )
    assert worker_count(settings, cpus=8) == 0  # SQLite: runs execute in the server process
    assert [worker_count(postgres, cpus=n) for n in (1, 2, 3, 8, 64)] == [1, 1, 2, 4, 4]
    assert worker_count(postgres.model_copy(update={"serve_workers": 3})) == 3  # SERVE_WORKERS
    assert worker_count(postgres.model_copy(update={"serve_workers": 3}), 0) == 0  # --workers
    # the embedded knowledge base (no QDRANT_URL) is open in one process: one worker by default
    embedded = postgres.model_copy(update={"qdrant_url": None})
    assert [worker_count(embedded, cpus=n) for n in (2, 8)] == [1, 1]


def test_several_workers_on_the_embedded_knowledge_base_are_refused_with_the_fix(
    settings: Settings,
) -> None:
    from typer.testing import CliRunner

    from app.cli import app
    from app.server.app import EmbeddedStoreError, check_workers_and_store, create_app

    check_workers_and_store(settings, 1)
    check_workers_and_store(settings.model_copy(update={"qdrant_url": "http://q:6333"}), 4)
    with pytest.raises(EmbeddedStoreError, match="QDRANT_URL"):
        check_workers_and_store(settings, 2)
    with pytest.raises(EmbeddedStoreError, match="--workers 1"):
        create_app(settings, workers=3)
    result = CliRunner().invoke(app, ["serve", "--workers", "2"])
    assert result.exit_code == 2
    assert "QDRANT_URL" in " ".join(result.output.split())
