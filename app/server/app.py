"""`create_app()`: the FastAPI application (LangGraph Server API + chat endpoint) and its lifespan:
open storage and the model, check auth against the bind address, load the graphs from
langgraph.json, start the run executor (recovering runs left by a killed server), and on shutdown
stop taking runs and give active ones a grace period."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.bootstrap import open_runner
from app.errors import AppError
from app.server.auth import InsecureBindError, startup_check
from app.server.executor import Executor
from app.server.registry import Registry
from app.server.routes import assistants, chat, keys, meta, runs, threads
from app.server.routes.meta import app_version
from app.server.security import install_security
from app.server.services import Services
from app.settings import Settings, get_settings

log = logging.getLogger("mkt.server")


def _say(line: str) -> None:
    print(f"mkt serve: {line}", flush=True)


def create_app(settings: Settings | None = None, *, host: str = "127.0.0.1") -> FastAPI:
    s = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the knowledge base opens at start-up: a held embedded store (another `mkt` process) or
        # an unreachable QDRANT_URL stops the server here with the fix named
        async with open_runner(s, eager_knowledge_base=True) as runner:
            app.state.db = runner.storage.db
            try:
                _say(await startup_check(runner.storage.db, host))
            except InsecureBindError as exc:
                _say(f"refusing to start: {exc}")
                raise
            await asyncio.to_thread(runner.factory.ensure_ready)
            registry = Registry.load(runner.storage.checkpointer, s.langgraph_config)
            executor = Executor(runner, registry, s)
            recovered = await executor.start()
            app.state.services = Services(runner, registry, executor, s)
            _say(f"model {runner.factory.info().describe()} · storage {runner.storage.description}")
            _say(f"graphs {', '.join(sorted(registry.graphs))}")
            if recovered:
                _say(f"resuming {recovered} run(s) left by a stopped server")
            try:
                yield
            finally:
                app.state.services = None
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
