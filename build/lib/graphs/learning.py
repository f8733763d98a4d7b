"""The learning loop as the graphs see it: approval decisions go into `past_outputs`; the writing
agents get the most similar successful past outputs of the same brand and platform/kind as examples
(as data, never as instructions). Knowledge-base failures never fail a step: they become notes."""

from __future__ import annotations

import logging
from typing import Any

from langgraph.config import get_config
from langgraph.runtime import Runtime

from graphs.context import MarketingContext
from graphs.state import Artifact
from prompts import data_block
from tools.knowledge import (
    KnowledgeBaseError,
    LearningKnowledgeBase,
    OutputStatus,
    PastOutput,
    get_knowledge_base,
    tenant_of,
)

log = logging.getLogger(__name__)
NO_EXAMPLES = "(no approved examples for this brand and format yet)"


def run_tenant() -> str:
    try:
        return tenant_of(get_config())
    except RuntimeError:  # called outside a runnable context
        return tenant_of(None)


def thread_of(runtime: Runtime[Any] | None) -> str:
    info = getattr(runtime, "execution_info", None)
    return (info.thread_id if info else None) or "standalone"


def _learning_kb() -> LearningKnowledgeBase | None:
    kb = get_knowledge_base()
    return kb if isinstance(kb, LearningKnowledgeBase) and kb.name != "empty" else None


async def remember(
    item: Artifact, status: OutputStatus, *, ctx: MarketingContext, thread_id: str, topic: str
) -> str | None:
    """Record one approval decision in `past_outputs` (idempotent: one point per thread, artifact
    and version). Returns a note when it could not be recorded."""
    kb = _learning_kb()
    if kb is None:
        return None
    output = PastOutput(
        text=item["body"],
        title=item["title"],
        agent=item["agent"],
        kind=item["kind"],
        platform=item["platform"],
        brand=ctx.brand_name,
        topic=topic,
        hashtags=list(item.get("hashtags") or []),
        status=status,
        thread_id=thread_id,
        artifact_id=item["id"],
        version=item["version"],
        tenant=run_tenant(),
    )
    try:
        await kb.record_output(output)
    except KnowledgeBaseError as exc:
        return f"not remembered in the knowledge base ({item['id']}): {exc}"
    return None


def _example_text(n: int, ex: PastOutput) -> str:
    where = f"{ex.kind} for {ex.platform}" if ex.platform else ex.kind
    verdict = ex.status + (f", rated {ex.rating}/5" if ex.rating else "")
    tags = " ".join(f"#{h}" for h in ex.hashtags)
    body = "\n".join(x for x in (ex.title, ex.text, tags) if x)
    return f"[example {n}: {where}, {verdict}]\n{body}"


async def examples_block(
    runtime: Runtime[MarketingContext],
    ctx: MarketingContext,
    *,
    query: str,
    kind: str,
    platform: str | None,
    artifact_id: str,
    k: int,
) -> str:
    """The prompt block with the examples; the piece being written is never its own example."""
    kb = _learning_kb()
    if kb is None or k <= 0:
        return data_block("approved examples", NO_EXAMPLES)
    try:
        found = await kb.examples(
            query,
            brand=ctx.brand_name,
            kind=kind,
            platform=platform,
            k=k,
            tenant=run_tenant(),
            exclude=(thread_of(runtime), artifact_id),
        )
    except KnowledgeBaseError as exc:
        log.warning("no examples from the knowledge base: %s", exc)
        return data_block("approved examples", NO_EXAMPLES)
    if not found:
        return data_block("approved examples", NO_EXAMPLES)
    text = "\n\n".join(_example_text(n, ex) for n, ex in enumerate(found, start=1))
    return data_block("approved examples", text)
