"""Runs: create (background), stream, wait, list, get, join, join stream, cancel; stateless
`/runs/stream` and `/runs/wait`."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sse_starlette import EventSourceResponse

from app.server.auth import Principal, require
from app.server.events import parse_last_event_id
from app.server.schemas import MAX_OFFSET, RunCreate, RunField
from app.server.services import Services, Svc, create_run, graph_of, owned_run, owned_thread
from app.server.streaming import run_headers, stream_run, wait_response
from app.server.views import run_json, selected, state_json

router = APIRouter(tags=["runs"])
Viewer = Annotated[Principal, Depends(require("viewer"))]
Editor = Annotated[Principal, Depends(require("editor"))]


def _modes_param(value: str | list[str] | None) -> set[str] | None:
    """`stream_mode` query: repeated values or one JSON array (as the SDK sends it)."""
    if not value:
        return None
    items = value if isinstance(value, list) else [value]
    modes: set[str] = set()
    for item in filter(None, (i.strip() for i in items)):  # the SDK sends `stream_mode=` for none
        if item.startswith("["):
            try:
                parsed = json.loads(item)
            except json.JSONDecodeError:
                raise HTTPException(422, f"stream_mode: not a JSON list: {item!r}") from None
            modes |= {str(m) for m in parsed}
        else:
            modes.add(item)
    return modes or None


async def _result(svc: Any, run: dict[str, Any]) -> dict[str, Any]:
    """What `wait`/`join` return: the thread's values, `__interrupt__` when it stopped for one,
    `__error__` when the run failed."""
    row = await svc.db.get_run(run["run_id"])
    if row is not None and row["status"] == "error":
        events = await svc.db.events_after(run["run_id"], 0, limit=100_000)
        errors = [json.loads(e["data"]) for e in events if e["event"] == "error"]
        return {"__error__": errors[-1] if errors else {"error": "Error", "message": row["error"]}}
    thread = await svc.db.get_thread(run["thread_id"])
    if thread is None:
        return {}
    snap = await graph_of(svc, thread).aget_state({"configurable": {"thread_id": run["thread_id"]}})
    state = state_json(snap)
    values = state["values"] if isinstance(state["values"], dict) else {"values": state["values"]}
    if state["interrupts"]:
        return {**values, "__interrupt__": state["interrupts"]}
    return values


@router.post("/threads/{thread_id}/runs", summary="Create a background run")
async def create_background(
    thread_id: str, body: RunCreate, svc: Svc, principal: Editor
) -> JSONResponse:
    run = await create_run(svc, principal, thread_id, body)
    return JSONResponse(run_json(run), headers=run_headers(thread_id, run["run_id"], join="join"))


@router.post("/runs", summary="Stateless background run on a new thread")
async def create_background_stateless(body: RunCreate, svc: Svc, principal: Editor) -> JSONResponse:
    """Its thread (`metadata.stateless`) is deleted once it is old, unless `on_completion` is
    `keep`: read the run and its result before then (`STATELESS_THREAD_GRACE_S`)."""
    run = await create_run(svc, principal, None, body)
    return JSONResponse(
        run_json(run), headers=run_headers(run["thread_id"], run["run_id"], join="join")
    )


@router.post("/runs/batch", summary="Stateless background runs, each on a new thread")
async def create_batch_stateless(
    body: Annotated[list[RunCreate], Body(min_length=1, max_length=100)],
    svc: Svc,
    principal: Editor,
) -> list[dict[str, Any]]:
    """Created in order: a run refused (its status and error) stops the batch there; an unknown
    assistant anywhere refuses it before any is created."""
    for one in body:
        if svc.registry.resolve(one.assistant_id) is None:
            raise HTTPException(404, f"assistant {one.assistant_id!r} not found")
    return [run_json(await create_run(svc, principal, None, one)) for one in body]


@router.post("/threads/{thread_id}/runs/stream", summary="Create a run and stream it (SSE)")
async def create_stream(
    thread_id: str, body: RunCreate, svc: Svc, principal: Editor
) -> EventSourceResponse:
    run = await create_run(svc, principal, thread_id, body)
    return stream_run(svc, run, cancel_on_disconnect=body.on_disconnect == "cancel")


@router.post("/runs/stream", summary="Stateless run on a new thread, streamed (SSE)")
async def create_stream_stateless(
    body: RunCreate, svc: Svc, principal: Editor
) -> EventSourceResponse:
    run = await create_run(svc, principal, None, body)
    return stream_run(svc, run, cancel_on_disconnect=body.on_disconnect == "cancel")


async def _wait(
    svc: Any, principal: Principal, thread_id: str | None, body: RunCreate
) -> StreamingResponse:
    """The run is created (or refused with its status code) before the answer starts; then the
    answer streams: headers at once, keep-alive whitespace, the result (`wait_response`)."""
    run = await create_run(svc, principal, thread_id, body)
    return wait_response(
        svc,
        run,
        lambda: _result(svc, run),
        cancel_on_disconnect=body.on_disconnect == "cancel",
        erase_thread=bool(run.get("erase_thread")),  # a stateless run delivered: its thread goes
    )


@router.post("/threads/{thread_id}/runs/wait", summary="Create a run and wait for its result")
async def create_wait(
    thread_id: str, body: RunCreate, svc: Svc, principal: Editor
) -> StreamingResponse:
    return await _wait(svc, principal, thread_id, body)


@router.post("/runs/wait", summary="Stateless run on a new thread; wait for its result")
async def create_wait_stateless(body: RunCreate, svc: Svc, principal: Editor) -> StreamingResponse:
    return await _wait(svc, principal, None, body)


@router.get("/threads/{thread_id}/runs", summary="List a thread's runs, newest first")
async def list_runs(
    thread_id: str,
    svc: Svc,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    status: Literal["pending", "running", "error", "success", "timeout", "interrupted"]
    | None = None,
    select: Annotated[list[RunField] | None, Query()] = None,
) -> list[dict[str, Any]]:
    await owned_thread(svc, principal, thread_id)
    rows = await svc.db.list_runs(
        thread_id, status=status, limit=limit, offset=offset, newest_first=True
    )
    return [selected(run_json(r), select) for r in rows]


@router.get("/threads/{thread_id}/runs/{run_id}", summary="Get a run")
async def get_run(thread_id: str, run_id: str, svc: Svc, principal: Viewer) -> dict[str, Any]:
    return run_json(await owned_run(svc, principal, thread_id, run_id))


@router.delete(
    "/threads/{thread_id}/runs/{run_id}", status_code=204, summary="Delete a finished run"
)
async def delete_run(thread_id: str, run_id: str, svc: Svc, principal: Editor) -> Response:
    run = await owned_run(svc, principal, thread_id, run_id)
    if run["status"] in ("pending", "running"):
        raise HTTPException(409, f"run {run_id} is {run['status']}: cancel it first")
    await svc.db.delete_run(run_id)
    return Response(status_code=204)


async def _joined_run(
    svc: Services, principal: Principal, thread_id: str, run_id: str, cancel_on_disconnect: bool
) -> dict[str, Any]:
    """The run a join follows; leaving with `cancel_on_disconnect` cancels it, so it needs the
    role that may cancel."""
    run = await owned_run(svc, principal, thread_id, run_id)
    if cancel_on_disconnect and not principal.allows("editor"):
        raise HTTPException(403, "cancel_on_disconnect needs the editor role")
    return run


@router.get("/threads/{thread_id}/runs/{run_id}/join", summary="Wait for a run; its result")
async def join_run(
    thread_id: str,
    run_id: str,
    svc: Svc,
    principal: Viewer,
    cancel_on_disconnect: bool = False,
) -> StreamingResponse:
    """Streamed as `wait` is (`wait_response`); an unknown run is a 404 before it starts. With
    `cancel_on_disconnect`, a client that goes away before the result cancels the run."""
    run = await _joined_run(svc, principal, thread_id, run_id, cancel_on_disconnect)
    return wait_response(
        svc, run, lambda: _result(svc, run), cancel_on_disconnect=cancel_on_disconnect
    )


@router.get("/threads/{thread_id}/runs/{run_id}/stream", summary="Join a run's stream (SSE)")
async def join_stream(
    thread_id: str,
    run_id: str,
    svc: Svc,
    principal: Viewer,
    stream_mode: Annotated[list[str] | None, Query()] = None,
    cancel_on_disconnect: bool = False,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Replays the stored events after `Last-Event-ID` (all of them without it), then follows
    the run live until it ends."""
    run = await _joined_run(svc, principal, thread_id, run_id, cancel_on_disconnect)
    return stream_run(
        svc,
        run,
        after=parse_last_event_id(last_event_id),
        modes=_modes_param(stream_mode),
        cancel_on_disconnect=cancel_on_disconnect,
    )


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", summary="Cancel a run")
async def cancel_run(
    thread_id: str,
    run_id: str,
    svc: Svc,
    principal: Editor,
    wait: bool = False,
    action: Literal["interrupt", "rollback"] = "interrupt",
) -> Response:
    """`interrupt` stops the run and keeps what it checkpointed; `rollback` also puts the thread
    back to where it was before the run and deletes the run."""
    run = await owned_run(svc, principal, thread_id, run_id)
    if run["status"] not in ("pending", "running"):
        raise HTTPException(409, f"run {run_id} already ended ({run['status']}): nothing to cancel")
    await svc.executor.cancel(run, action)
    if wait:
        await svc.executor.wait_until_done(run_id)
    return Response(
        status_code=202 if not wait else 204, headers=run_headers(thread_id, run_id, join="join")
    )
