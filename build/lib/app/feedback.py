"""Rating a thread's outputs (`mkt feedback`, and the HTTP server's feedback route).

A rating applies to every output of the thread: the current version of each artifact in the
thread's state and every version already remembered from its approvals. 4-5 marks them successful
(shown as examples to the writing agents next time), 1-2 rejects them (never shown again), 3 keeps
what the approvals said. An output ignored at approval stays rejected whatever the rating.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.errors import AppError, ThreadNotFoundError
from app.runner import Runner
from tools.knowledge import DEFAULT_TENANT, OutputStatus, PastOutput
from tools.qdrant_kb import QdrantKnowledgeBase, output_point_id

ARTIFACT_STATUS: dict[str, OutputStatus] = {
    "scheduled": "approved",
    "approved": "approved",
    "rejected": "rejected",
    "draft": "unreviewed",
}


class FeedbackError(AppError):
    status = 422


def check_rating(rating: int) -> int:
    if not 1 <= rating <= 5:
        raise FeedbackError(f"the rating must be 1 to 5 (got {rating})")
    return rating


def thread_outputs(
    thread_id: str,
    values: dict[str, Any],
    brand: str,
    remembered: list[PastOutput],
    tenant: str = DEFAULT_TENANT,
) -> list[PastOutput]:
    """The thread's outputs: remembered ones plus current artifact versions not yet stored."""
    by_id = {o.id: o for o in remembered}
    topic = str(((values.get("plan") or {}).get("topic")) or "")
    for art in (values.get("artifacts") or {}).values():
        pid = output_point_id(tenant, thread_id, art["id"], art["version"])
        if pid in by_id:
            continue
        by_id[pid] = PastOutput(
            id=pid,
            text=art["body"],
            title=art["title"],
            agent=art["agent"],
            kind=art["kind"],
            platform=art["platform"],
            brand=brand,
            topic=topic,
            hashtags=list(art.get("hashtags") or []),
            status=ARTIFACT_STATUS.get(art["status"], "unreviewed"),
            thread_id=thread_id,
            artifact_id=art["id"],
            version=art["version"],
            tenant=tenant,
        )
    return sorted(by_id.values(), key=lambda o: (o.artifact_id, o.version))


async def rate_thread(
    runner: Runner,
    kb: QdrantKnowledgeBase,
    thread_id: str,
    rating: int,
    comment: str | None = None,
    *,
    tenant: str = DEFAULT_TENANT,
) -> list[PastOutput]:
    check_rating(rating)
    if comment is not None and len(comment) > 2000:
        raise FeedbackError("the comment is longer than 2,000 characters")
    view = await runner.view(thread_id)
    if not view.exists:
        raise ThreadNotFoundError(thread_id)
    brand = (await runner.context_for(thread_id, None)).brand_name
    remembered = await asyncio.to_thread(kb.thread_outputs, thread_id, tenant)
    outputs = thread_outputs(thread_id, view.values, brand, remembered, tenant)
    if not outputs:
        raise FeedbackError(f"thread {thread_id} has no outputs to rate yet")
    return await asyncio.to_thread(kb.rate_sync, outputs, rating, comment)
