"""Knowledge-base search interface. The Qdrant implementation plugs in through
`set_knowledge_base()`; until one is configured, searches return nothing (and say so)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel


class KBHit(BaseModel):
    id: str
    title: str
    text: str
    source: str  # file path or URL
    score: float


@runtime_checkable
class KnowledgeBase(Protocol):
    name: str

    async def search(self, query: str, *, k: int = 5, brand: str | None = None) -> list[KBHit]: ...


class EmptyKnowledgeBase:
    """No documents ingested yet."""

    name = "empty"

    async def search(self, query: str, *, k: int = 5, brand: str | None = None) -> list[KBHit]:
        return []


_kb: KnowledgeBase = EmptyKnowledgeBase()


def get_knowledge_base() -> KnowledgeBase:
    return _kb


def set_knowledge_base(kb: KnowledgeBase) -> KnowledgeBase:
    global _kb
    previous, _kb = _kb, kb
    return previous
