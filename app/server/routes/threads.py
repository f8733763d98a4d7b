"""Threads: create, get, search, count, patch, delete; state (now, at a checkpoint, update with
`as_node`) and history. Every read and write is scoped to the caller's tenant."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import InvalidUpdateError

from app.server.auth import Principal, require
from app.server.executor import thread_status_of
from app.server.schemas import (
    CheckpointBody,
    HistoryQuery,
    StateAtCheckpoint,
    StateUpdate,
    ThreadCount,
    ThreadCreate,
    ThreadPatch,
    ThreadSearch,
)
from app.server.services import Services, Svc, graph_of, owned_thread
from app.server.views import checkpoint_of, page_headers, selected, state_json, thread_json

router = APIRouter(tags=["threads"])
Viewer = Annotated[Principal, Depends(require("viewer"))]
Editor = Annotated[Principal, Depends(require("editor"))]


def _config(thread_id: str, checkpoint: CheckpointBody | None = None) -> RunnableConfig:
    conf: dict[str, Any] = {"thread_id": thread_id}
    if checkpoint is not None:
        extra = checkpoint.model_dump(exclude_none=True)
        extra.pop("thread_id", None)
        conf.update(extra)
    return {"configurable": conf}


# the fields of a thread that come from its state (the others are its row's)
_STATE_FIELDS = {"values", "interrupts", "state_updated_at"}


async def _thread_out(
    svc: Services, row: dict[str, Any], select: Collection[str] | None = None
) -> dict[str, Any]:
    if select and not _STATE_FIELDS & set(select):  # the state is not read
        return selected(thread_json(row, None), select)
    snap = await graph_of(svc, row).aget_state(_config(row["thread_id"]))
    return selected(thread_json(row, snap), select)


@router.post("/threads", summary="Create a thread")
async def create_thread(body: ThreadCreate, svc: Svc, principal: Editor) -> dict[str, Any]:
    thread_id = body.thread_id or str(uuid.uuid4())
    metadata = dict(body.metadata or {})
    graph_id = body.graph_id or metadata.get("graph_id") or "supervisor"
    if not isinstance(graph_id, str) or graph_id not in svc.registry.graphs:
        raise HTTPException(  # the rejected id is not echoed (README: Errors)
            422, f"graph_id: not a graph of this server; known: {sorted(svc.registry.graphs)}"
        )
    row, created = await svc.db.create_thread(
        thread_id, tenant=principal.tenant, metadata=metadata, graph_id=graph_id
    )
    if not created:
        if body.if_exists == "do_nothing" and row["tenant"] == principal.tenant:
            return await _thread_out(svc, row)
        raise HTTPException(
            409, f"thread {thread_id} already exists (send if_exists='do_nothing' to reuse it)"
        )
    return thread_json(row, None)  # new: no state yet


@router.post("/threads/search", summary="Search threads (metadata, status, ids)")
async def search_threads(
    body: ThreadSearch, svc: Svc, principal: Viewer, response: Response
) -> list[dict[str, Any]]:
    rows = await svc.db.search_threads(
        principal.tenant,
        status=body.status,
        metadata=body.metadata,
        ids=body.ids,
        limit=body.limit + 1,  # one more: is there a next page
        offset=body.offset,
        sort_by="updated_at"
        if body.sort_by == "state_updated_at"
        else body.sort_by or "created_at",
        descending=(body.sort_order or "desc") == "desc",
    )
    page_headers(response, body.offset, min(len(rows), body.limit), more=len(rows) > body.limit)
    return [await _thread_out(svc, row, body.select) for row in rows[: body.limit]]


@router.post("/threads/count", summary="Count threads")
async def count_threads(body: ThreadCount, svc: Svc, principal: Viewer) -> int:
    if body.values:
        raise HTTPException(422, "values: counting by state values is not supported; use metadata")
    rows = await svc.db.search_threads(
        principal.tenant, status=body.status, metadata=body.metadata, limit=1_000_000
    )
    return len(rows)


@router.get("/threads/{thread_id}", summary="Get a thread")
async def get_thread(thread_id: str, svc: Svc, principal: Viewer) -> dict[str, Any]:
    return await _thread_out(svc, await owned_thread(svc, principal, thread_id))


@router.patch("/threads/{thread_id}", summary="Merge metadata into a thread")
async def patch_thread(
    thread_id: str, body: ThreadPatch, svc: Svc, principal: Editor
) -> dict[str, Any]:
    await owned_thread(svc, principal, thread_id)
    if body.ttl:
        raise HTTPException(422, "ttl: not supported; old event logs are pruned by retention")
    await svc.db.update_thread(thread_id, metadata=body.metadata)
    return await _thread_out(svc, await owned_thread(svc, principal, thread_id))


@router.delete("/threads/{thread_id}", status_code=204, summary="Delete a thread")
async def delete_thread(thread_id: str, svc: Svc, principal: Editor) -> Response:
    await owned_thread(svc, principal, thread_id)
    for run in await svc.db.active_runs(thread_id):
        await svc.executor.cancel(run, "interrupt")
        await svc.executor.wait_until_done(run["run_id"], within_s=30)
    await svc.executor.erase_thread(thread_id)
    return Response(status_code=204)


STATELESS_KEYS = ("stateless", "on_completion")  # set on the thread of a stateless run


async def copy_checkpoints(
    checkpointer: BaseCheckpointSaver[Any], source: str, target: str
) -> None:
    """Every checkpoint of `source` (all namespaces: subgraphs too) and the writes pending on it,
    under `target`, oldest first so each one's parent is there before it."""
    found = [t async for t in checkpointer.alist({"configurable": {"thread_id": source}})]
    for t in sorted(found, key=lambda t: t.config["configurable"]["checkpoint_id"]):
        parent = (t.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        conf = {"thread_id": target, "checkpoint_ns": t.config["configurable"]["checkpoint_ns"]}
        saved = await checkpointer.aput(
            {"configurable": {**conf, "checkpoint_id": parent}},
            t.checkpoint,
            t.metadata,
            t.checkpoint["channel_versions"],
        )
        by_task: dict[str, list[tuple[str, Any]]] = {}
        for task_id, channel, value in t.pending_writes or ():
            by_task.setdefault(task_id, []).append((channel, value))
        for task_id, writes in by_task.items():
            await checkpointer.aput_writes(saved, writes, task_id)


@router.post("/threads/{thread_id}/copy", summary="Copy a thread: its state and history")
async def copy_thread(thread_id: str, svc: Svc, principal: Editor) -> dict[str, Any]:
    """A new thread with the source's checkpoints (its state, history and any pending approval),
    metadata and saved run context; its runs and their events are not copied."""
    row = await owned_thread(svc, principal, thread_id)
    new_id = str(uuid.uuid4())
    await copy_checkpoints(svc.registry.checkpointer, thread_id, new_id)
    graph = graph_of(svc, row)
    snap = await graph.aget_state(_config(new_id))
    copied, _ = await svc.db.create_thread(
        new_id,
        tenant=principal.tenant,
        # not a stateless run's thread (those are deleted once old), whatever the source was
        metadata={k: v for k, v in row["metadata"].items() if k not in STATELESS_KEYS},
        graph_id=row["graph_id"] or "supervisor",
        status=thread_status_of(snap) if snap.config else "idle",
    )
    if row.get("context"):
        await svc.db.update_thread(new_id, context=row["context"])
    return thread_json(copied, snap)


# --- state ------------------------------------------------------------------------------------
@router.get("/threads/{thread_id}/state", summary="The thread's current state")
async def get_state(
    thread_id: str, svc: Svc, principal: Viewer, subgraphs: bool = False
) -> dict[str, Any]:
    row = await owned_thread(svc, principal, thread_id)
    snap = await graph_of(svc, row).aget_state(_config(thread_id), subgraphs=subgraphs)
    return state_json(snap)


@router.get("/threads/{thread_id}/state/{checkpoint_id}", summary="State at a checkpoint")
async def get_state_at(
    thread_id: str, checkpoint_id: str, svc: Svc, principal: Viewer, subgraphs: bool = False
) -> dict[str, Any]:
    row = await owned_thread(svc, principal, thread_id)
    return await _state_at(svc, row, CheckpointBody(checkpoint_id=checkpoint_id), subgraphs)


@router.post("/threads/{thread_id}/state/checkpoint", summary="State at a checkpoint (body)")
async def post_state_at(
    thread_id: str, body: StateAtCheckpoint, svc: Svc, principal: Viewer
) -> dict[str, Any]:
    row = await owned_thread(svc, principal, thread_id)
    return await _state_at(svc, row, body.checkpoint, body.subgraphs)


async def _state_at(
    svc: Services, row: dict[str, Any], checkpoint: CheckpointBody, subgraphs: bool
) -> dict[str, Any]:
    graph = graph_of(svc, row)
    config = _config(row["thread_id"], checkpoint)
    await _check_found(svc, checkpoint, config)
    return state_json(await graph.aget_state(config, subgraphs=subgraphs))


async def _check_found(
    svc: Services, checkpoint: CheckpointBody | None, config: RunnableConfig
) -> None:
    """404 for a checkpoint id the thread does not have (a read of it would give an empty
    state, an update a head whose parent does not exist)."""
    if (
        checkpoint is not None
        and checkpoint.checkpoint_id
        and await svc.registry.checkpointer.aget_tuple(config) is None
    ):
        raise HTTPException(
            404, f"checkpoint {checkpoint.checkpoint_id!r} not found on this thread"
        )


@router.post("/threads/{thread_id}/state", summary="Update the thread's state (as a node)")
async def update_state(
    thread_id: str, body: StateUpdate, svc: Svc, principal: Editor
) -> dict[str, Any]:
    row = await owned_thread(svc, principal, thread_id)
    if await svc.db.active_runs(thread_id):
        raise HTTPException(409, f"thread {thread_id} has a run in progress: update it afterwards")
    graph = graph_of(svc, row)
    checkpoint = body.checkpoint or (
        CheckpointBody(checkpoint_id=body.checkpoint_id) if body.checkpoint_id else None
    )
    if body.as_node is not None and body.as_node not in (
        *graph.nodes,
        "__start__",
        "__copy__",
        "__input__",
    ):
        raise HTTPException(  # the rejected name is not echoed (README: Errors)
            422, f"as_node: not a node of this thread's graph; nodes: {sorted(graph.nodes)}"
        )
    config = _config(thread_id, checkpoint)
    await _check_found(svc, checkpoint, config)
    try:
        config = await graph.aupdate_state(config, body.values, as_node=body.as_node)
    except (ValueError, KeyError, TypeError, InvalidUpdateError) as exc:  # an invalid update
        raise HTTPException(  # LangGraph's message quotes the values: not echoed
            422,
            f"values: the graph rejected the update ({type(exc).__name__}); send an object "
            "whose keys are fields of the thread's state",
        ) from exc
    snap = await graph.aget_state(_config(thread_id))
    # a run that started meanwhile owns the status (busy, then what it ends with)
    await svc.db.settle_thread_status(thread_id, thread_status_of(snap))
    head = checkpoint_of(config)
    # `configurable` and `checkpoint_id`: what langgraph-api still sends for older clients
    return {
        "checkpoint": head,
        "configurable": head,
        "checkpoint_id": head["checkpoint_id"] if head else None,
    }


# --- history ----------------------------------------------------------------------------------
async def _history(svc: Services, row: dict[str, Any], q: HistoryQuery) -> list[dict[str, Any]]:
    graph = graph_of(svc, row)
    before = q.before
    if isinstance(before, str):
        before = CheckpointBody(checkpoint_id=before)
    out = []
    async for snap in graph.aget_state_history(
        _config(row["thread_id"], q.checkpoint),
        filter=q.metadata or None,
        before=_config(row["thread_id"], before) if before else None,
        limit=q.limit,
    ):
        out.append(state_json(snap))
    return out


@router.post("/threads/{thread_id}/history", summary="Past states, newest first")
async def post_history(
    thread_id: str, body: HistoryQuery, svc: Svc, principal: Viewer
) -> list[dict[str, Any]]:
    return await _history(svc, await owned_thread(svc, principal, thread_id), body)


@router.get("/threads/{thread_id}/history", summary="Past states, newest first")
async def get_history(
    thread_id: str,
    svc: Svc,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    before: str | None = None,
) -> list[dict[str, Any]]:
    row = await owned_thread(svc, principal, thread_id)
    return await _history(svc, row, HistoryQuery(limit=limit, before=before))
