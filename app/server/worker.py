"""`mkt worker`: a process that only executes runs — the run executor (`app.server.executor`:
claim loop, heartbeats, sweep, graceful shutdown) and its notification listener, no HTTP.

`mkt serve --workers N` starts N of these and restarts them when they die
(`app.server.supervisor`); more can run on other machines against the same Postgres database,
since the queue, leases and notifications all live there. `open_executor` is also how `mkt serve`
runs its own executor (in-process with `--workers 0`, or request-side only): one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

from app.bootstrap import open_runner
from app.db import CANCEL_CHANNEL, QUEUE_CHANNEL, RUN_CHANNEL
from app.runner import Runner
from app.server import metrics
from app.server.executor import Executor
from app.server.heap import freeze_startup_heap
from app.server.notify import Handler, PgListener
from app.server.registry import Registry
from app.settings import Settings

READY = "ready:"  # the supervisor waits for a worker's line containing this


@contextlib.asynccontextmanager
async def open_executor(
    runner: Runner,
    registry: Registry,
    settings: Settings,
    *,
    execute: bool = True,
    serve: bool = True,
) -> AsyncIterator[Executor]:
    """An executor with this process's Postgres listener (none on SQLite), started; the caller
    stops it (`executor.stop(grace)`) before leaving, else it is stopped without grace. With
    `execute=False` it claims nothing: it serves the request side (queue, cancel, streams).
    With `serve=False` (a worker process: no streams, no waiting requests) it does not listen
    for runs' events, which every append announces with its events."""
    executor = Executor(runner, registry, settings, execute=execute)
    listener: PgListener | None = None
    if settings.database_url is not None:
        handlers = listener_handlers(executor, execute=execute, serve=serve)

        def on_reconnect() -> None:
            executor.signals.bump_all()
            executor.wake()

        listener = PgListener(
            settings.database_url.get_secret_value(),
            handlers,
            executor.signals,
            on_reconnect=on_reconnect,
        )
        await listener.start()  # before the executor: no notification is missed from here on
    try:
        executor.recovered = await executor.start()
        yield executor
    finally:
        if executor.accepting or executor.active:
            await executor.stop(0)
        if listener is not None:
            await listener.stop()


def listener_handlers(executor: Executor, *, execute: bool, serve: bool) -> dict[str, Handler]:
    """The notification channels a process listens on: runs' events and ends where streams and
    waiting requests are served; cancels and the queue where runs are executed."""
    handlers: dict[str, Handler] = {}
    if serve:
        handlers[RUN_CHANNEL] = executor.signals.notified
    if execute:
        handlers[CANCEL_CHANNEL] = executor.cancel_notice
        handlers[QUEUE_CHANNEL] = lambda _: executor.wake()
    return handlers


def _say(line: str) -> None:
    with contextlib.suppress(OSError):  # the server that reads our output may be gone
        print(f"mkt worker[{os.getpid()}]: {line}", flush=True)


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    while True:  # no event exists for "my parent died": look once a second
        await asyncio.sleep(1.0)
        if os.getppid() != parent_pid:
            break
    _say("the server that started this worker is gone: stopping")
    stop.set()


async def run_worker(
    settings: Settings,
    *,
    parent_pid: int | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> int:
    """The `mkt worker` process: execute runs until SIGTERM/SIGINT (or, when started by a
    server, until that server is gone); then stop claiming, give active runs
    `SHUTDOWN_GRACE_S` to finish and release the rest to the queue. A second signal exits at
    once (its runs resume from their last checkpoint elsewhere). With `metrics_port` it serves
    its Prometheus series at `http://metrics_host:metrics_port/metrics`."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            _say("second signal: exiting now; unfinished runs resume from their last checkpoint")
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    scrape = ""
    if metrics_port is not None:  # first: a taken port fails the start at once
        bound = metrics.serve_http(metrics_port, metrics_host)
        scrape = f" · metrics at http://{metrics_host}:{bound}/metrics"
    # the knowledge base opens now, so a held embedded store fails the start, not a run; a
    # worker of a server that was killed may still hold it while it finishes its runs (within
    # its grace period, then it exits): wait for that one
    async with open_runner(
        settings,
        eager_knowledge_base=True,
        knowledge_base_wait_s=settings.shutdown_grace_s + 10 if parent_pid else 0.0,
        say=_say,
    ) as runner:
        info = await asyncio.to_thread(runner.factory.ensure_ready)
        registry = Registry.load(runner.storage.checkpointer, settings.langgraph_config)
        async with open_executor(runner, registry, settings, serve=False) as executor:
            resumed = (
                f" · resuming {executor.recovered} run(s) of stopped workers"
                if executor.recovered
                else ""
            )
            _say(
                f"{READY} up to {settings.worker_concurrency} runs at once · model "
                f"{info.describe()} · storage {runner.storage.description}{scrape}{resumed}"
            )
            freeze_startup_heap()  # no full-heap GC pauses from here on (app.server.heap)
            executor.after_first_run = freeze_startup_heap  # and what the first run loads
            watcher = asyncio.create_task(_watch_parent(parent_pid, stop)) if parent_pid else None
            await stop.wait()
            if watcher is not None:
                watcher.cancel()
            _say(f"stopping: {executor.active} active run(s) get {settings.shutdown_grace_s:g} s")
            stats = await executor.stop(settings.shutdown_grace_s)
            released = (
                f", {stats['released']} released to resume from their last checkpoint"
                if stats["released"]
                else ""
            )
            _say(f"stopped ({stats['finished']} finished{released})")
    return 0
