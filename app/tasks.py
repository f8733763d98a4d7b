"""Small asyncio task helpers shared by the server's background loops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("mkt.server")


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel `task` and wait until it has ended. The task's own `CancelledError` is expected and
    dropped; a cancellation of the caller while it waits still propagates (the usual
    `with suppress(CancelledError): await task` would swallow it too)."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        me = asyncio.current_task()
        if me is not None and me.cancelling():
            raise


_unowned: set[asyncio.Task[Any]] = set()  # tasks whose caller left: kept alive until they end


async def to_the_end(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` in a task of its own that a cancellation of the caller does not stop: the
    caller is cancelled at once all the same, and the task runs to its end unobserved.

    For short database statements on a pooled connection: a statement cancelled mid-flight makes
    psycopg ask the server to cancel it, and a second cancellation while it does so (anyio's
    cancel scopes, as in an SSE response whose client left, cancel again at every await) makes it
    close the connection — a new one then costs the pool a connect and Postgres a backend."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            _unowned.add(task)
            task.add_done_callback(_forget)
        raise


def _forget(task: asyncio.Task[Any]) -> None:
    _unowned.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        # nobody waits for it: say what failed (an unretrieved exception would be logged by
        # asyncio at garbage collection, with no context)
        log.warning("a statement whose caller had left failed: %s: %s", type(exc).__name__, exc)
