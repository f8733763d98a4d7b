"""Response shapes of the LangGraph Server API (what `langgraph_sdk.schema` types describe)."""

from __future__ import annotations

from typing import Any

from langgraph.types import StateSnapshot

from app.redact import redact
from app.server.serde import jsonable

# the CLI marks a thread whose run stopped mid-way `unfinished`; on the wire that is `idle`
WIRE_THREAD_STATUS = {"unfinished": "idle"}
WIRE_RUN_STATUS = {"cancelled": "interrupted"}


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
