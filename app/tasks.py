"""Small asyncio task helpers shared by the server's background loops."""

from __future__ import annotations

import asyncio
from typing import Any


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
