"""Knowledge-base interface used by the graphs.

`KnowledgeBase.search` serves the research agent (company documents and successful past outputs);
`LearningKnowledgeBase` adds the learning loop: recording approval decisions and ratings in
`past_outputs`, and retrieving successful past outputs as examples for the writing agents. The Qdrant
implementation (`tools.qdrant_kb.QdrantKnowledgeBase`) is installed at process start-up by
`app.knowledge.open_knowledge_base` (through `app.bootstrap.open_runner`); until one is installed,
`EmptyKnowledgeBase` finds nothing and remembers nothing (and says so).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from app.errors import AppError

DEFAULT_TENANT = "default"
OutputStatus = Literal["approved", "edited", "rejected", "unreviewed"]


class KnowledgeBaseError(AppError):
    """The knowledge base cannot serve the request; the message names the fix."""

    status = 503


class KnowledgeBaseLockedError(KnowledgeBaseError):
    """The embedded store's folder is locked by another process."""

    status = 409

    @classmethod
    def at(cls, path: Any) -> KnowledgeBaseLockedError:
        return cls(
            f"the knowledge base in {path} is open in another process (embedded Qdrant allows "
            "one process at a time): stop that process (e.g. `mkt serve` or another `mkt` "
            "command), or run a Qdrant server and set QDRANT_URL for all of them"
        )


class EmbeddingMismatchError(KnowledgeBaseError):
    """A collection was built with another embedding model or dimension."""

    status = 409


class KBHit(BaseModel):
    id: str
    title: str
    text: str
    source: str  # file path or URL (documents); "thread <id> · <artifact> v<n>" (past outputs)
    score: float
    collection: str = "documents"
    section: str = ""


class PastOutput(BaseModel):
    """One output as remembered in `past_outputs`."""

    id: str = ""  # the Qdrant point id (uuid5 of tenant/thread/artifact/version)
    text: str
    title: str = ""
    agent: str
    kind: str  # blog | email | landing_page | post
    platform: str | None = None
    brand: str
    topic: str = ""
    hashtags: list[str] = Field(default_factory=list)
    status: OutputStatus
    rating: int | None = Field(None, ge=1, le=5)
    comment: str | None = None
    successful: bool = False
    thread_id: str
    artifact_id: str
    version: int = 1
    tenant: str = DEFAULT_TENANT
    created_at: str = ""
    updated_at: str = ""
    score: float = 0.0  # similarity, on retrieval


def is_successful(status: str, rating: int | None) -> bool:
    """The learning rule: a rating of 4-5 makes an output successful, 1-2 rejects it; without a
    decisive rating an approved or edited output is successful. An output rejected at approval
    stays rejected."""
    if status == "rejected":
        return False
    if rating is not None and rating <= 2:
        return False
    if rating is not None and rating >= 4:
        return True
    return status in ("approved", "edited")


@runtime_checkable
class KnowledgeBase(Protocol):
    name: str

    async def search(
        self, query: str, *, k: int = 5, brand: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> list[KBHit]: ...


@runtime_checkable
class LearningKnowledgeBase(KnowledgeBase, Protocol):
    async def record_output(self, output: PastOutput) -> str: ...

    async def examples(
        self,
        query: str,
        *,
        brand: str,
        kind: str,
        platform: str | None = None,
        k: int = 3,
        tenant: str = DEFAULT_TENANT,
        exclude: tuple[str, str] | None = None,
    ) -> list[PastOutput]: ...


class EmptyKnowledgeBase:
    """No knowledge base in this process (e.g. a graph run from Studio without the app)."""

    name = "empty"

    async def search(
        self, query: str, *, k: int = 5, brand: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> list[KBHit]:
        return []

    async def record_output(self, output: PastOutput) -> str:
        return ""

    async def examples(self, query: str, **kwargs: Any) -> list[PastOutput]:
        return []


_kb: KnowledgeBase = EmptyKnowledgeBase()


def get_knowledge_base() -> KnowledgeBase:
    return _kb


def set_knowledge_base(kb: KnowledgeBase) -> KnowledgeBase:
    global _kb
    previous, _kb = _kb, kb
    return previous


def tenant_of(config: Any) -> str:
    """The tenant a run belongs to: `configurable.tenant`, set by the HTTP server from the caller's
    API key (never from client input); the CLI is the default tenant."""
    configurable = (config or {}).get("configurable") or {}
    tenant = configurable.get("tenant")
    return str(tenant) if tenant else DEFAULT_TENANT
