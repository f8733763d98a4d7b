"""Process start-up hook for the knowledge base, shared by the CLI, the evals and the HTTP server.

    async with open_knowledge_base(settings) as kb:   # installs it for the graphs
        ...

Opening is lazy by default: nothing touches Qdrant until the first search or write, so commands
that never need the knowledge base (`mkt threads`, `mkt outbox`) do not take the embedded store's
folder lock. `eager=True` connects at once, so a held lock or an unreachable server is reported at
start-up with its fix (`mkt chat` and the server do this). The embedded store (no QDRANT_URL)
serves one process at a time: run `mkt serve` *or* CLI commands that use the knowledge base, or
point all of them at one Qdrant server with QDRANT_URL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from app.settings import Settings, get_settings
from tools.knowledge import KnowledgeBaseLockedError, set_knowledge_base

if TYPE_CHECKING:  # qdrant-client takes a second or two to import: only when a KB is opened
    from tools.qdrant_kb import QdrantKnowledgeBase


def _waiting(wait_s: float) -> str:
    return (
        "the knowledge base is open in another process (a worker of a stopped server finishing "
        f"its runs?): waiting up to {wait_s:g} s for it"
    )


def wait_for_embedded_store(
    settings: Settings, wait_s: float, say: Callable[[str], None] | None = None
) -> bool:
    """Whether the embedded store (no QDRANT_URL) is free, or becomes free within `wait_s`
    (telling `say` once), probed on qdrant-client's folder lock without opening the store (which
    loads all of it before it takes the lock)."""
    import portalocker

    lock_file = settings.qdrant_path / ".lock"  # where qdrant-client's local mode locks
    if settings.qdrant_url or not lock_file.exists():
        return True
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        with lock_file.open("r+") as handle:
            try:
                portalocker.lock(
                    handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
                )
            except portalocker.exceptions.LockException:
                pass
            else:
                portalocker.unlock(handle)
                return True
        if time.monotonic() >= deadline:
            return False
        if say is not None and not told:
            say(_waiting(wait_s))
            told = True
        time.sleep(0.5)


@asynccontextmanager
async def open_knowledge_base(
    settings: Settings | None = None,
    *,
    eager: bool = False,
    wait_s: float = 0.0,
    say: Callable[[str], None] | None = None,
) -> AsyncIterator[QdrantKnowledgeBase]:
    """Create the Qdrant knowledge base, install it for the graphs (`tools.knowledge`), and close
    it (releasing the local folder lock) on exit. `eager` opens it now; while another process
    holds the embedded store it then retries for up to `wait_s` (a worker of a killed server
    finishing its runs lets go within its grace period), telling `say` once."""
    from tools.qdrant_kb import QdrantKnowledgeBase

    kb = QdrantKnowledgeBase(settings or get_settings())
    if eager:
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                await asyncio.to_thread(kb.open)
                break
            except KnowledgeBaseLockedError:
                if time.monotonic() >= deadline:
                    raise
                if say is not None and not told:
                    say(_waiting(wait_s))
                    told = True
                await asyncio.sleep(0.5)
    previous = set_knowledge_base(kb)
    try:
        yield kb
    finally:
        set_knowledge_base(previous)
        await kb.aclose()
