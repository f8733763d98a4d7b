"""Response shapes of the LangGraph Server API (what `langgraph_sdk.schema` types describe)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fastapi import Response
from langgraph.types import StateSnapshot

from app.redact import redact
from app.server.serde import jsonable

# the CLI marks a thread whose run stopped mid-way `unfinished`; on the wire that is `idle`
WIRE_THREAD_STATUS = {"unfinished": "idle"}
WIRE_RUN_STATUS = {"cancelled": "interrupted"}


def page_headers(response: Response, offset: int, returned: int, more: bool) -> None:
    """The pagination headers langgraph-api sends with a search: `X-Pagination-Next` (the offset
    of the next page, only when there is one; the SDK's `response_format="object"` reads it) and
    `X-Pagination-Total` (as langgraph-api counts it: the items up to this page, plus one when
    more follow)."""
    if more:
        response.headers["X-Pagination-Next"] = str(offset + returned)
    response.headers["X-Pagination-Total"] = str(offset + returned + (1 if more else 0))


def checkpoint_of(config: Any) -> dict[str, Any] | None:
    conf = (config or {}).get("configurable") or {}
    if not conf.get("thread_id") or not conf.get("checkpoint_id"):
        return None
    out = {
        "thread_id": conf["thread_id"],
        "checkpoint_ns": conf.get("checkpoint_ns") or "",
        "checkpoint_id": conf["checkpoint_id"],
    }
    if conf.get("checkpoint_map"):
        out["checkpoint_map"] = conf["checkpoint_map"]
    return out


def debug_event(chunk: Any) -> Any:
    """A `debug` stream chunk as langgraph-api sends it: a checkpoint's payload also names its
    checkpoint and parent as `checkpoint`/`parent_checkpoint` objects (what Studio's debug view
    reads), and a task with a subgraph state names that state's checkpoint as `checkpoint`."""
    payload = chunk.get("payload") if isinstance(chunk, dict) else None
    if not isinstance(payload, dict) or chunk.get("type") != "checkpoint":
        return chunk
    tasks = []
    for task in payload.get("tasks") or ():
        state = task.get("state") if isinstance(task, dict) else None
        if isinstance(state, dict) and state.get("configurable"):
            task = {k: v for k, v in task.items() if k != "state"}
            task["checkpoint"] = state["configurable"]
        tasks.append(task)
    return {
        **chunk,
        "payload": {
            **payload,
            "checkpoint": checkpoint_of(payload.get("config")),
            "parent_checkpoint": checkpoint_of(payload.get("parent_config")),
            "tasks": tasks,
        },
    }


def interrupt_json(i: Any) -> dict[str, Any]:
    return {"id": i.id, "value": i.value}


def state_json(snap: StateSnapshot) -> dict[str, Any]:
    tasks = []
    for t in snap.tasks:
        sub = t.state
        tasks.append(
            {
                "id": t.id,
                "name": t.name,
                "path": list(t.path),
                "error": redact(repr(t.error)) if t.error else None,
                "interrupts": [interrupt_json(i) for i in t.interrupts],
                "checkpoint": (sub.get("configurable") if isinstance(sub, dict) else None),
                "state": state_json(sub) if isinstance(sub, StateSnapshot) else None,
                "result": getattr(t, "result", None),
            }
        )
    checkpoint = checkpoint_of(snap.config)
    parent = checkpoint_of(snap.parent_config)
    return jsonable(
        {
            "values": snap.values,
            "next": list(snap.next),
            "tasks": tasks,
            "metadata": snap.metadata or {},
            "created_at": snap.created_at,
            "checkpoint": checkpoint,
            "parent_checkpoint": parent,
            "interrupts": [interrupt_json(i) for i in snap.interrupts],
            "checkpoint_id": checkpoint["checkpoint_id"] if checkpoint else None,
            "parent_checkpoint_id": parent["checkpoint_id"] if parent else None,
        }
    )


def thread_json(row: dict[str, Any], snap: StateSnapshot | None) -> dict[str, Any]:
    interrupts: dict[str, list[dict[str, Any]]] = {}
    if snap is not None:
        for t in snap.tasks:
            if t.interrupts:
                interrupts[t.id] = [interrupt_json(i) for i in t.interrupts]
    return jsonable(
        {
            "thread_id": row["thread_id"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "metadata": row["metadata"],
            # when the state last changed: its newest checkpoint (the thread's creation before)
            "state_updated_at": (snap.created_at if snap is not None else None)
            or row["created_at"],
            "status": WIRE_THREAD_STATUS.get(row["status"], row["status"]),
            "values": (snap.values if snap is not None else None) or {},
            "interrupts": interrupts,
            "config": {},
        }
    )


_INTERNAL_KWARGS = (
    "resolved_context",
    "created_from",
    "usage_base",
    "checked_at",
    "released",
)  # the server's own, not the client's


def selected(item: dict[str, Any], select: Collection[str] | None) -> dict[str, Any]:
    """The fields a search's `select` names (all of them without one)."""
    return {k: v for k, v in item.items() if k in select} if select else item


def run_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": row["run_id"],
        "thread_id": row["thread_id"],
        "assistant_id": row["assistant_id"] or row["graph_id"],
        "created_at": row["started_at"],
        "updated_at": row.get("updated_at") or row.get("ended_at") or row["started_at"],
        "status": WIRE_RUN_STATUS.get(row["status"], row["status"]),
        "metadata": row.get("metadata") or {},
        "multitask_strategy": row.get("multitask_strategy") or "reject",
        "kwargs": {k: v for k, v in (row.get("kwargs") or {}).items() if k not in _INTERNAL_KWARGS},
        "attempt": row.get("attempt", 0),
        "error": row.get("error"),
    }
