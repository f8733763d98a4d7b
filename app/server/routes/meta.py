"""Health, server info (version, provider, storage) and Prometheus metrics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import langgraph.version
from fastapi import APIRouter, Request, Response

from app.server import metrics
from app.server.services import Svc

router = APIRouter(tags=["meta"])


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
async def prometheus(request: Request, svc: Svc) -> Response:
    usage = await svc.db.notification_queue_usage()
    if usage is not None:
        metrics.notification_queue_read(usage)
    body, content_type = metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
