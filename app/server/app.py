"""`create_app()`: the FastAPI application (LangGraph Server API + chat endpoint) and its lifespan:
open storage and the model, check auth against the bind address, load the graphs from
langgraph.json, start the run executor — in this process, or N supervised worker processes
(`--workers`, `app.server.supervisor`) — recovering runs left by a killed server, and on shutdown
stop taking runs and give active ones a grace period."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.bootstrap import open_runner
from app.errors import AppError
from app.server import metrics
from app.server.auth import InsecureBindError, startup_check
from app.server.heap import freeze_startup_heap
from app.server.registry import Registry
from app.server.routes import assistants, chat, keys, meta, runs, threads
from app.server.routes.meta import app_version
from app.server.security import install_security
from app.server.services import Services
from app.server.supervisor import WorkerPool, WorkerStartError
from app.server.worker import open_executor
from app.settings import Settings, get_settings

log = logging.getLogger("mkt.server")


def _say(line: str) -> None:
    print(f"mkt serve: {line}", flush=True)


MAX_DEFAULT_WORKERS = 4  # 5 processes x (pool + listener) stay well under Postgres' 100 connections


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_count(settings: Settings, workers: int | None = None, cpus: int | None = None) -> int:
    """Worker processes to start: `--workers`, else SERVE_WORKERS, else on Postgres one per CPU
    but one (left to this process and the database; at least 1, at most 4: bench/README.md has
    the measurements), and 0 on SQLite (runs execute in this process: one SQLite writer at a time
    gains little from more processes)."""
    if workers is not None:
        return workers
    if settings.serve_workers is not None:
        return settings.serve_workers
    if not settings.uses_postgres:
        return 0
    n = max(1, min(MAX_DEFAULT_WORKERS, (cpus or available_cpus()) - 1))
    # the embedded knowledge base can be open in one process only: one worker holds it
    return n if settings.qdrant_url else 1


class EmbeddedStoreError(RuntimeError):
    """More than one process would execute runs against the embedded (local) Qdrant store."""


def check_workers_and_store(settings: Settings, n_workers: int) -> None:
    if n_workers > 1 and not settings.qdrant_url:
        raise EmbeddedStoreError(
            f"{n_workers} worker processes cannot share the embedded knowledge base "
            f"({settings.data_dir / 'qdrant'} is open in one process at a time): use --workers 1 "
            "or set QDRANT_URL to a Qdrant server"
        )


@asynccontextmanager
async def shared_metrics(n_workers: int) -> AsyncIterator[Path | None]:
    """With worker processes, the server and its workers keep their Prometheus series in one
    directory (`app.server.metrics`): PROMETHEUS_MULTIPROC_DIR when set (emptied at start), else
    a temporary one removed at shutdown."""
    if not n_workers:
        yield None
        return
    given = os.environ.get(metrics.MULTIPROC_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="mkt-metrics-"))
    metrics.enable_multiprocess(path)
    try:
        yield path
    finally:
        metrics.disable_multiprocess()
        if not given:
            shutil.rmtree(path, ignore_errors=True)


def create_app(
    settings: Settings | None = None,
    *,
    host: str = "127.0.0.1",
    workers: int | None = None,
    freeze_heap: bool = False,
) -> FastAPI:
    """`freeze_heap`: once started, exempt the start-up heap from garbage collection
    (`app.server.heap`) — for a process that serves this app until it exits (`mkt serve`), not
    for one that creates apps over and over (tests)."""
    s = settings or get_settings()
    n_workers = worker_count(s, workers)
    check_workers_and_store(s, n_workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the process that executes runs opens the knowledge base at start-up (this one with
        # --workers 0, else each worker): a held embedded store (another `mkt` process) or an
        # unreachable QDRANT_URL stops it there with the fix named
        async with open_runner(
            s, knowledge_base=not n_workers, eager_knowledge_base=not n_workers
        ) as runner:
            app.state.db = runner.storage.db
            try:
                _say(await startup_check(runner.storage.db, host))
            except InsecureBindError as exc:
                _say(f"refusing to start: {exc}")
                raise
            if not n_workers:  # the model runs here
                await asyncio.to_thread(runner.factory.ensure_ready)
            registry = Registry.load(runner.storage.checkpointer, s.langgraph_config)
            async with (
                open_executor(runner, registry, s, execute=not n_workers) as executor,
                shared_metrics(n_workers),
            ):
                pool = (
                    WorkerPool(n_workers, grace_s=s.shutdown_grace_s, say=_say)
                    if n_workers
                    else None
                )
                if pool is not None:
                    try:
                        await pool.start()
                    except WorkerStartError as exc:
                        _say(f"refusing to start: {exc}")
                        raise
                app.state.services = Services(runner, registry, executor, s)
                app.state.workers = pool
                _say(
                    f"model {runner.factory.info().describe()} · storage {runner.storage.description}"
                )
                _say(f"graphs {', '.join(sorted(registry.graphs))}")
                _say(
                    f"runs execute in {n_workers} worker process(es), pids "
                    f"{', '.join(map(str, pool.pids))}"
                    if pool is not None
                    else "runs execute in this process"
                )
                if executor.recovered:
                    _say(f"resuming {executor.recovered} run(s) left by a stopped server")
                if freeze_heap:  # no full-heap GC pauses from here on
                    freeze_startup_heap()
                    if not n_workers:  # runs execute here: what the first one loads too
                        executor.after_first_run = freeze_startup_heap
                try:
                    yield
                finally:
                    app.state.services = None
                    executor.accepting = False
                    if pool is not None:
                        await pool.stop()
                    stats = await executor.stop(s.shutdown_grace_s)
                    if stats["released"]:
                        _say(
                            f"stopped: {stats['released']} run(s) released to resume from their "
                            "last checkpoint on the next start"
                        )

    app = FastAPI(
        title="mkt agents server",
        version=app_version(),
        summary="The LangGraph Server API (as langgraph-sdk speaks it) for the marketing agents, "
        "plus a plain SSE chat endpoint.",
        lifespan=lifespan,
    )

    @app.exception_handler(AppError)
    async def app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    for module in (meta, assistants, threads, runs, chat, keys):
        app.include_router(module.router)
    app.state.settings = s
    install_security(app, s)
    return app
