"""Health, server info (version, provider, storage) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import langgraph.version
from fastapi import APIRouter, Request, Response

from app.db import DB_ERRORS
from app.server import metrics
from app.server.services import Svc

router = APIRouter(tags=["meta"])
log = logging.getLogger("mkt.server")
SCRAPE_DB_S = 1.0  # how long a scrape waits for the database's gauge
_SCRAPE_ERRORS: tuple[type[Exception], ...] = (TimeoutError, *DB_ERRORS)


def app_version() -> str:
    try:
        return version("mkt-agents")
    except PackageNotFoundError:
        return "0+unknown"


@router.get("/ok", summary="Liveness")
async def ok() -> dict[str, bool]:
    return {"ok": True}


@router.get("/info", summary="Version, model provider, storage, graphs")
async def info(svc: Svc) -> dict[str, Any]:
    model = svc.runner.factory.info()
    return {
        "version": app_version(),
        "langgraph_py_version": langgraph.version.__version__,
        "provider": model.provider,
        "model": model.describe(),
        "storage": svc.runner.storage.description,
        "graphs": sorted(svc.registry.graphs),
        "flags": {"assistants": True, "crons": False, "langsmith": False},
        "host": {"kind": "self-hosted", "project_id": None, "revision_id": None},
    }


@router.get("/metrics", summary="Prometheus metrics")
async def prometheus(request: Request) -> Response:
    # the database is read for one gauge; a scrape never waits long for it nor fails with it
    # (metrics matter most when the database is in trouble), and works while the server starts
    svc = getattr(request.app.state, "services", None)
    if svc is not None:
        try:
            async with asyncio.timeout(SCRAPE_DB_S):
                usage = await svc.db.notification_queue_usage()
        except _SCRAPE_ERRORS as exc:
            log.warning("metrics: notification queue usage not read: %s", exc or "timeout")
        else:
            if usage is not None:
                metrics.notification_queue_read(usage)
    body, content_type = metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
