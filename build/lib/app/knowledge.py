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
                    say(
                        "the knowledge base is open in another process (a worker of a stopped "
                        f"server finishing its runs?): waiting up to {wait_s:g} s for it"
                    )
                    told = True
                await asyncio.sleep(0.5)
    previous = set_knowledge_base(kb)
    try:
        yield kb
    finally:
        set_knowledge_base(previous)
        await kb.aclose()
