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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from app.settings import Settings, get_settings
from tools.knowledge import set_knowledge_base

if TYPE_CHECKING:  # qdrant-client takes a second or two to import: only when a KB is opened
    from tools.qdrant_kb import QdrantKnowledgeBase


@asynccontextmanager
async def open_knowledge_base(
    settings: Settings | None = None, *, eager: bool = False
) -> AsyncIterator[QdrantKnowledgeBase]:
    """Create the Qdrant knowledge base, install it for the graphs (`tools.knowledge`), and close
    it (releasing the local folder lock) on exit."""
    from tools.qdrant_kb import QdrantKnowledgeBase

    kb = QdrantKnowledgeBase(settings or get_settings())
    if eager:
        await asyncio.to_thread(kb.open)
    previous = set_knowledge_base(kb)
    try:
        yield kb
    finally:
        set_knowledge_base(previous)
        await kb.aclose()
