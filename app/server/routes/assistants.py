"""Assistants: one default assistant per graph in langgraph.json (read-only)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, HTTPException, Response
from langgraph.pregel import Pregel
from pydantic import create_model
from pydantic.errors import PydanticSchemaGenerationError, PydanticUserError

from app.db import metadata_contains
from app.server.auth import Principal, require
from app.server.schemas import (
    AssistantCount,
    AssistantSearch,
    AssistantVersion,
    AssistantVersions,
)
from app.server.serde import jsonable
from app.server.services import Services, Svc, not_found
from app.server.views import page_headers

router = APIRouter(tags=["assistants"])
log = logging.getLogger("mkt.server")
Viewer = Annotated[Principal, Depends(require("viewer"))]


def _graph_id(svc: Services, assistant_id: str) -> str:
    graph_id = svc.registry.resolve(assistant_id)
    if graph_id is None:
        raise not_found("assistant", assistant_id)
    return graph_id


def _matches(
    a: dict[str, Any], metadata: dict[str, Any] | None, graph_id: str | None, name: str | None
) -> bool:
    if graph_id and a["graph_id"] != graph_id:
        return False
    if name and name.lower() not in a["name"].lower():
        return False
    return metadata_contains(a["metadata"], metadata or {})


READ_ONLY = (
    "assistants are read-only on this server: one default assistant per graph in langgraph.json "
    "(pass a run's settings as its `context`)"
)


@router.post("/assistants", include_in_schema=False, status_code=422)
@router.patch("/assistants/{assistant_id}", include_in_schema=False, status_code=422)
@router.delete("/assistants/{assistant_id}", include_in_schema=False, status_code=422)
async def refuse_write(principal: Viewer) -> None:
    """Studio's "new assistant" and the SDK's assistants.create/update/delete: a 422 saying why
    (they were a 404 "Not Found" and 405s)."""
    raise HTTPException(422, READ_ONLY)


@router.post("/assistants/search", summary="Search assistants (Studio filters created_by=system)")
async def search(
    body: AssistantSearch, svc: Svc, principal: Viewer, response: Response
) -> list[dict[str, Any]]:
    found = [
        a for a in svc.registry.assistants() if _matches(a, body.metadata, body.graph_id, body.name)
    ]
    sort_by = body.sort_by
    if sort_by in ("name", "graph_id", "assistant_id"):
        found.sort(key=lambda a: str(a[sort_by]), reverse=body.sort_order == "desc")
    page = found[body.offset : body.offset + body.limit]
    page_headers(response, body.offset, len(page), more=len(found) > body.offset + body.limit)
    if body.select:
        page = [{k: v for k, v in a.items() if k in body.select} for a in page]
    return page


@router.post("/assistants/count", summary="Count assistants")
async def count(body: AssistantCount, svc: Svc, principal: Viewer) -> int:
    return sum(
        _matches(a, body.metadata, body.graph_id, body.name) for a in svc.registry.assistants()
    )


@router.get("/assistants/{assistant_id}", summary="Get an assistant (id or graph name)")
async def get(assistant_id: str, svc: Svc, principal: Viewer) -> dict[str, Any]:
    return svc.registry.assistant(_graph_id(svc, assistant_id))


@router.post("/assistants/{assistant_id}/versions", summary="An assistant's versions (one)")
async def versions(
    assistant_id: str, body: AssistantVersions, svc: Svc, principal: Viewer
) -> list[dict[str, Any]]:
    """A default assistant has one version, 1 (what Studio's assistant view lists)."""
    a = svc.registry.assistant(_graph_id(svc, assistant_id))
    version = {k: v for k, v in a.items() if k != "updated_at"}
    return (
        [version][body.offset : body.offset + body.limit]
        if _matches(a, body.metadata, None, None)
        else []
    )


@router.post("/assistants/{assistant_id}/latest", summary="Make a version the latest (1 only)")
async def set_latest(
    assistant_id: str, body: AssistantVersion, svc: Svc, principal: Viewer
) -> dict[str, Any]:
    graph_id = _graph_id(svc, assistant_id)
    if body.version != 1:
        raise HTTPException(404, f"assistant {assistant_id!r} has no version {body.version}")
    return svc.registry.assistant(graph_id)


def _xray(value: str | None) -> bool | int:
    if value in (None, "", "false", "False", "0"):
        return False
    if value in ("true", "True"):
        return True
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise HTTPException(422, "xray: use true, false or a positive depth")


@router.get("/assistants/{assistant_id}/graph", summary="The graph's drawable structure")
async def graph(
    assistant_id: str, svc: Svc, principal: Viewer, xray: str | None = None
) -> dict[str, Any]:
    g = svc.registry.graph(_graph_id(svc, assistant_id))
    drawable = await g.aget_graph(xray=_xray(xray))
    out = drawable.to_json()
    for node in out.get("nodes", []):
        data = node.get("data")
        if isinstance(data, dict):
            data.pop("id", None)
    return jsonable(out)


def _state_schema(g: Pregel) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for key in g.stream_channels_list:
        update_type = getattr(g.channels[key], "UpdateType", Any)
        try:
            create_model(key, value=(update_type, None)).model_json_schema()
            fields[key] = (update_type, None)
        except Exception:  # noqa: BLE001 - a type pydantic cannot describe is shown as Any
            fields[key] = (Any, None)
    return create_model(g.get_name("State"), **fields).model_json_schema()


def _schema(make: Callable[[], dict[str, Any] | None], what: str) -> dict[str, Any] | None:
    try:
        return make()
    except (PydanticUserError, PydanticSchemaGenerationError, TypeError, ValueError) as exc:
        log.warning("no %s schema: %s", what, exc)  # shown as null, never a 500
        return None


def schemas_of(g: Pregel, graph_id: str) -> dict[str, Any]:
    return jsonable(
        {
            "graph_id": graph_id,
            "input_schema": _schema(g.get_input_jsonschema, "input"),
            "output_schema": _schema(g.get_output_jsonschema, "output"),
            "state_schema": _schema(lambda: _state_schema(g), "state"),
            "config_schema": None,
            "context_schema": _schema(g.get_context_jsonschema, "context"),
        }
    )


@router.get("/assistants/{assistant_id}/schemas", summary="Input, output, state, context schemas")
async def schemas(assistant_id: str, svc: Svc, principal: Viewer) -> dict[str, Any]:
    graph_id = _graph_id(svc, assistant_id)
    return schemas_of(svc.registry.graph(graph_id), graph_id)


@router.get("/assistants/{assistant_id}/subgraphs", summary="Schemas of the graph's subgraphs")
@router.get("/assistants/{assistant_id}/subgraphs/{namespace}", include_in_schema=False)
async def subgraphs(
    assistant_id: str,
    svc: Svc,
    principal: Viewer,
    namespace: str | None = None,
    recurse: bool = False,
) -> dict[str, Any]:
    graph_id = _graph_id(svc, assistant_id)
    g = svc.registry.graph(graph_id)
    return {
        ns: schemas_of(cast(Pregel, sub), graph_id)
        async for ns, sub in g.aget_subgraphs(namespace=namespace, recurse=recurse)
    }
