"""A chat endpoint for clients without the LangGraph SDK: post a message, read an SSE stream of
plain events (`run`, `plan`, `agent_start`, `agent_done`, `token`, `approval`, `final`, `error`,
`end`); answer an approval with the companion call, which streams the continuation the same way;
reconnect to a dropped stream with `GET /chat/{thread_id}/stream` and `Last-Event-ID`. It is a view
over the same runs and event log as the SDK routes (see README, "Chat endpoint")."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from langchain_core.messages import AIMessage
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.errors import PendingApprovalError
from app.runner import progress_events
from app.server import metrics
from app.server.auth import Principal, require
from app.server.events import follow, parse_last_event_id
from app.server.schemas import ChatApproval, ChatMessage, CommandBody, RunCreate
from app.server.services import (
    Services,
    Svc,
    ThreadBusy,
    create_run,
    graph_of,
    owned_run,
    owned_thread,
)
from app.server.streaming import run_headers

router = APIRouter(tags=["chat"])
Editor = Annotated[Principal, Depends(require("editor"))]
Viewer = Annotated[Principal, Depends(require("viewer"))]
CHAT_MODES: list[Any] = ["tasks", "messages-tuple", "updates"]


def _chat_events(event: str, data: Any) -> list[dict[str, Any]]:
    if event in ("metadata", "end"):  # the chat stream sends its own `end` with the final text
        return []
    if event == "error":
        return [{"type": "error", **data}]
    if event == "updates":
        if isinstance(data, dict) and data.get("__interrupt__"):
            intr = data["__interrupt__"][0]
            value = intr["value"]
            request = value[0] if isinstance(value, list) and value else value
            return [{"type": "approval", "interrupt_id": intr["id"], "request": request}]
        return []
    return progress_events(event, data)


def _answer_text(data: Any) -> str | None:
    """The answer an `updates` event of the supervisor's `answer` node carries (None for others):
    the run's own answer, whatever later runs add to the thread."""
    update = data.get("answer") if isinstance(data, dict) else None
    messages = update.get("messages") if isinstance(update, dict) else None
    if not isinstance(messages, list):
        return None
    texts = [m.get("content") for m in messages if isinstance(m, dict) and m.get("type") == "ai"]
    return str(texts[-1]) if texts else None


def chat_stream_url(thread_id: str, run_id: str) -> str:
    return f"/chat/{thread_id}/stream?run_id={run_id}"


def _stream(svc: Services, run: dict[str, Any], after: int = 0) -> EventSourceResponse:
    """The run's chat events with an id past `after` (`Last-Event-ID`), live until it ends,
    then its `final` text (when it succeeded) and `end`."""
    run_id, thread_id = run["run_id"], run["thread_id"]

    async def events() -> AsyncIterator[ServerSentEvent]:
        metrics.stream_opened()
        try:
            yield ServerSentEvent(
                data=json.dumps({"type": "run", "thread_id": thread_id, "run_id": run_id}),
                event="run",
            )
            answer: str | None = None
            # from the first event: the answer may be before `after` (sent, `final` was not)
            async for ev in follow(svc.db, svc.executor.signals, run_id):
                data = json.loads(ev.data)
                if ev.event == "updates":
                    answer = _answer_text(data) or answer
                if ev.id <= after:
                    continue
                for out in _chat_events(ev.event, data):
                    yield ServerSentEvent(data=json.dumps(out), event=out["type"], id=str(ev.id))
            final = await svc.db.get_run(run_id)
            status = final["status"] if final else "deleted"
            if status == "success" and answer is not None:
                yield ServerSentEvent(
                    data=json.dumps({"type": "final", "text": answer}), event="final"
                )
            elif status == "success":  # its events were pruned (EVENT_RETENTION_HOURS)
                row = await svc.db.get_thread(thread_id)
                snap = await graph_of(svc, row or {}).aget_state(
                    {"configurable": {"thread_id": thread_id}}
                )
                messages = snap.values.get("messages") or []
                text = (
                    str(messages[-1].content)
                    if messages and isinstance(messages[-1], AIMessage)
                    else ""
                )
                yield ServerSentEvent(
                    data=json.dumps({"type": "final", "text": text}), event="final"
                )
            yield ServerSentEvent(
                data=json.dumps({"type": "end", "status": status, "thread_id": thread_id}),
                event="end",
            )
        finally:
            metrics.stream_closed()

    return EventSourceResponse(
        events(),
        headers={
            **run_headers(thread_id, run_id),
            "Location": chat_stream_url(thread_id, run_id),  # where a dropped chat reconnects
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        },
        ping=max(1, int(svc.settings.sse_heartbeat_s)),
        send_timeout=svc.settings.sse_send_timeout_s,
    )


@asynccontextmanager
async def _chat_conflicts(thread_id: str) -> AsyncIterator[None]:
    """The 409s of run creation, told in the chat endpoint's own terms (it has no
    `multitask_strategy`; the approval is answered over HTTP, not with `mkt chat`)."""
    try:
        yield
    except ThreadBusy:
        raise HTTPException(
            409,
            f"thread {thread_id} already has a run in progress: wait for its end (follow it "
            f"with GET /chat/{thread_id}/stream), then send again",
        ) from None
    except PendingApprovalError:
        raise HTTPException(
            409,
            f"thread {thread_id} is waiting for an approval: answer it first with POST "
            f"/chat/{thread_id}/approval (the request: GET /threads/{thread_id}/state, "
            "`interrupts`)",
        ) from None


async def _chat_run(
    svc: Services,
    principal: Principal,
    thread_id: str,
    context: dict[str, Any] | None,
    *,
    interrupt_id: str | None = None,
    **request: Any,
) -> EventSourceResponse:
    """A chat turn: a supervisor run (`request`: its input or command, and more fields of a
    run's body) that is refused while another runs, streamed as chat events."""
    body = RunCreate(
        assistant_id="supervisor",
        stream_mode=CHAT_MODES,
        context=context,
        multitask_strategy="reject",
        **request,
    )
    run = await create_run(svc, principal, thread_id, body, interrupt_id=interrupt_id)
    return _stream(svc, run)


@router.post("/chat", summary="Send a message; SSE of tokens, progress and approval requests")
async def chat(body: ChatMessage, svc: Svc, principal: Editor) -> EventSourceResponse:
    thread_id = body.thread_id or str(uuid.uuid4())
    async with _chat_conflicts(thread_id):
        return await _chat_run(
            svc,
            principal,
            thread_id,
            body.context,
            input={"messages": [{"role": "user", "content": body.message}]},
            if_not_exists="create",
        )


@router.post(
    "/chat/{thread_id}/approval",
    summary="Answer the thread's pending approval; SSE of the continuation",
)
async def approve(
    thread_id: str, body: ChatApproval, svc: Svc, principal: Editor
) -> EventSourceResponse:
    await owned_thread(svc, principal, thread_id)
    async with _chat_conflicts(thread_id):
        # a run in progress may be about to ask: say so, not "nothing to resume"
        if await svc.db.active_runs(thread_id):
            raise ThreadBusy(thread_id)
        return await _chat_run(
            svc,
            principal,
            thread_id,
            body.context,
            interrupt_id=body.interrupt_id,
            command=CommandBody(resume=body.answer),
        )


@router.get(
    "/chat/{thread_id}/stream",
    summary="Reconnect to a chat stream: replay after Last-Event-ID, then live",
)
async def rejoin(
    thread_id: str,
    svc: Svc,
    principal: Viewer,
    run_id: Annotated[
        str | None, Query(description="The run (default: the thread's latest).")
    ] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """The chat stream of the thread's latest run (or `run_id`): the events after
    `Last-Event-ID` (all without it), live until the run ends, then `final` and `end` — what a
    dropped `POST /chat` or approval stream had still to send."""
    if run_id is not None:
        run = await owned_run(svc, principal, thread_id, run_id)
    else:
        await owned_thread(svc, principal, thread_id)
        runs = await svc.db.list_runs(thread_id, limit=1, newest_first=True)
        if not runs:
            raise HTTPException(404, f"thread {thread_id!r} has no run to stream")
        run = runs[0]
    return _stream(svc, run, after=parse_last_event_id(last_event_id))
