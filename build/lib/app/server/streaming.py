"""SSE responses: a view of the run's persisted event log (see `events.follow`), never the run
itself. Heartbeat comments keep idle streams open; a client that stops reading is dropped after
the send timeout; no compression. `Content-Location` names the run and `Location` its join stream
(the SDK reads the run id from the first and reconnects to the second with `Last-Event-ID`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

from app.server import metrics
from app.server.events import follow
from app.server.services import Services

_background: set[asyncio.Task[Any]] = set()


def run_headers(thread_id: str, run_id: str, *, join: str = "stream") -> dict[str, str]:
    base = f"/threads/{thread_id}/runs/{run_id}"
    return {"Location": f"{base}/{join}", "Content-Location": base}


def stream_run(
    svc: Services,
    run: dict[str, Any],
    *,
    after: int = 0,
    modes: set[str] | None = None,
    cancel_on_disconnect: bool = False,
) -> EventSourceResponse:
    run_id, thread_id = run["run_id"], run["thread_id"]

    async def events() -> AsyncIterator[ServerSentEvent]:
        metrics.stream_opened()
        complete = False
        try:
            cursor = after
            for ev in run.get("first_events") or () if after == 0 else ():
                yield ServerSentEvent(data=ev.data, event=ev.event, id=str(ev.id))
                cursor = ev.id  # a new run: its first event is known, no need to read it back
            async for ev in follow(svc.db, svc.executor.signals, run_id, after=cursor, modes=modes):
                yield ServerSentEvent(data=ev.data, event=ev.event, id=str(ev.id))
            complete = True
        finally:
            metrics.stream_closed()
            # outside this (possibly cancelled) generator:
            if cancel_on_disconnect and not complete:  # the client went away
                _in_background(_cancel(svc, run))
            if complete and run.get("erase_thread"):  # a stateless run delivered: its thread goes
                _in_background(svc.executor.erase_thread(thread_id))

    headers = {
        **run_headers(thread_id, run_id),
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
    }
    return EventSourceResponse(
        events(),
        headers=headers,
        ping=max(1, int(svc.settings.sse_heartbeat_s)),
        send_timeout=svc.settings.sse_send_timeout_s,
    )


def _in_background(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _cancel(svc: Services, run: dict[str, Any]) -> None:
    current = await svc.db.get_run(run["run_id"])
    if current is not None and current["status"] in ("pending", "running"):
        await svc.executor.cancel(current, "interrupt")
