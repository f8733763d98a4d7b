"""SSE responses: a view of the run's persisted event log (see `events.follow`), never the run
itself. Heartbeat comments keep idle streams open; a client that stops reading is dropped after
the send timeout; no compression. `Content-Location` names the run and `Location` its join stream
(the SDK reads the run id from the first and reconnects to the second with `Last-Event-ID`).

`wait`/`join` answers (`wait_response`) are streamed too: their headers go out at once (the SDK
reconnects to `Location`, the run's `/join`, when the body is cut), whitespace keeps an idle
connection open, and the result JSON follows when the run is over."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from fastapi.responses import JSONResponse, StreamingResponse
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.types import Send

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
    shutdown = anyio.Event()  # set when the server closes the stream as it shuts down

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
            # the client went away (not the server, shutting down: the run is left to the
            # shutdown, finished in its grace period or released to the next server)
            if cancel_on_disconnect and not complete and not shutdown.is_set():
                _in_background(svc.executor.cancel(run, "interrupt"))  # (reads it)
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
        shutdown_event=shutdown,
    )


class _ClosingStreamingResponse(StreamingResponse):
    """A streaming response that closes its body generator however the sending ends (a client
    gone while a chunk was being sent included): the generator's `finally` runs now, not
    whenever the garbage collector finalizes it."""

    def __init__(self, body: AsyncGenerator[bytes, None], **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self._body = body

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            await self._body.aclose()


def wait_response(
    svc: Services,
    run: dict[str, Any],
    result: Callable[[], Awaitable[Any]],
    *,
    cancel_on_disconnect: bool = False,
    erase_thread: bool = False,
) -> StreamingResponse:
    """A `wait`/`join` answer: status 200 and the run's headers (`Location`: its `/join`,
    `Content-Location`: the run) at once, a newline every `SSE_HEARTBEAT_S` while the run is
    pending or running (JSON parsers skip leading whitespace), then `result()` as JSON — the
    same bytes a `JSONResponse` of it has. A client that goes away before the result cancels
    the run with `cancel_on_disconnect` (a server that cuts the answer as it shuts down does
    not); with `erase_thread` the run's thread is erased once the result was sent (a stateless
    run delivered)."""
    run_id, thread_id = run["run_id"], run["thread_id"]
    every = max(1.0, svc.settings.sse_heartbeat_s)

    async def body() -> AsyncGenerator[bytes, None]:
        done = asyncio.ensure_future(svc.executor.wait_until_done(run_id))
        try:
            while not done.done():
                await asyncio.wait((done,), timeout=every)
                if not done.done():
                    yield b"\n"
            done.result()  # its error, if it failed: the body is cut, the SDK reconnects
            yield bytes(JSONResponse(await result()).body)  # as a JSONResponse has it
            if erase_thread:  # before the body's end: a client that read it finds it gone
                await svc.executor.erase_thread(thread_id)
        except (asyncio.CancelledError, GeneratorExit):  # the client went away ...
            # ... or the server, shutting down, cut the answer (uvicorn's graceful timeout): the
            # run is left to the shutdown, as in `stream_run`
            if cancel_on_disconnect and not AppStatus.should_exit:  # outside this generator
                _in_background(svc.executor.cancel(run, "interrupt"))  # (reads it)
            raise
        finally:
            done.cancel()

    headers = {
        **run_headers(thread_id, run_id, join="join"),
        "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",  # nginx: send the keep-alive newlines as they come
    }
    return _ClosingStreamingResponse(body(), media_type="application/json", headers=headers)


def _in_background(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
