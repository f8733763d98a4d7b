"""Small helpers for driving the runner in tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from app.runner import Runner

CAMPAIGN = (
    "Research what runners say about carbon-plated trail shoes, write a launch blog post and "
    "LinkedIn + X posts for our TerraRun shoe, and schedule them for Tuesday 9am."
)
# one item, one approval
PUBLISH_REQUEST = "Write a LinkedIn post for our TerraRun shoe and publish it Tuesday 9am"

Decide = Callable[[dict[str, Any]], Any]


def accept_all(_request: dict[str, Any]) -> Any:
    return {"type": "accept"}


async def drain(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e async for e in events]


async def converse(
    runner: Runner,
    request: str,
    *,
    thread_id: str | None = None,
    decide: Decide = accept_all,
    context: dict[str, Any] | None = None,
    max_approvals: int = 20,
) -> tuple[str, list[dict[str, Any]]]:
    """Send a request and answer every approval with `decide(request)`; returns (thread, events)."""
    events = await drain(runner.send(thread_id, request, context))
    tid = next(e["thread_id"] for e in events if e["type"] == "run")
    for _ in range(max_approvals):
        view = await runner.view(tid)
        if view.status != "interrupted":
            return tid, events
        value = decide(view.interrupts[0]["value"][0])
        events += await drain(runner.resume(tid, value))
    raise AssertionError("too many approvals")
