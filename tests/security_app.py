"""A small FastAPI app with the real security pieces (auth dependencies, install_security, the
/keys router, /metrics) around stand-in routes, for tests that must not wait for the full server."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import psycopg
from fastapi import Depends, FastAPI, Query, Request, Response
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field

from app.db import AppDB, open_sqlite_db
from app.errors import ThreadNotFoundError
from app.server import metrics
from app.server.auth import Principal, require
from app.server.routes.keys import router as keys_router
from app.server.security import install_security
from app.settings import Settings

log = logging.getLogger("tests.security_app")


class RunCreate(BaseModel):
    assistant_id: str = Field(min_length=1)
    input: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


def build_app(settings: Settings, db: AppDB | None = None, db_path: Path | None = None) -> FastAPI:
    """With `db`, the app uses it; with `db_path`, a lifespan opens (and closes) SQLite there."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if db_path is None:
            yield
            return
        opened, conn = await open_sqlite_db(db_path)
        await opened.migrate()
        app.state.db = opened
        try:
            yield
        finally:
            await conn.close()

    app = FastAPI(title="security test app", lifespan=lifespan)
    if db is not None:
        app.state.db = db
    app.state.settings = settings
    install_security(app, settings)
    app.include_router(keys_router)

    @app.get("/ok")
    async def ok() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_route(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/whoami")
    async def whoami(principal: Annotated[Principal, Depends(require("viewer"))]) -> dict[str, Any]:
        return {"tenant": principal.tenant, "role": principal.role, "key_id": principal.key_id}

    @app.get("/threads")
    async def list_threads(
        principal: Annotated[Principal, Depends(require("viewer"))],
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> list[dict[str, Any]]:
        return [{"thread_id": f"t{i}", "tenant": principal.tenant} for i in range(limit)]

    @app.post("/threads/{thread_id}/runs")
    async def create_run(
        thread_id: str,
        body: RunCreate,
        request: Request,
        principal: Annotated[Principal, Depends(require("editor"))],
    ) -> dict[str, Any]:
        # what a careless route might log: the logging filter must mask the key
        log.info("run requested with headers %s", dict(request.headers))
        if thread_id == "missing":
            raise ThreadNotFoundError(thread_id)
        if thread_id == "boom":
            raise RuntimeError("database password is hunter2 at /srv/secret/path")
        if thread_id == "pool-dry":
            raise PoolTimeout("couldn't get a connection after 30.00 sec")
        if thread_id == "locked":
            raise sqlite3.OperationalError("database is locked")
        if thread_id == "no-table":
            raise sqlite3.OperationalError("no such table: runs")
        if thread_id == "shutdown":
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator")
        if thread_id == "nul-text":  # what psycopg raises for a NUL in a text parameter
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        if thread_id == "too-big":
            raise psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum")
        return {"thread_id": thread_id, "assistant_id": body.assistant_id, "by": principal.key_id}

    return app
