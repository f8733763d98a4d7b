"""Publishing sub-agent: one human approval per item (`interrupt()`, agent-inbox shape), then each
accepted or edited item is written to the durable outbox exactly once.

The approval node has no side effects (it re-runs from the top on every resume); the outbox write
lives in its own node and is idempotent by key, so a retry, a resume or a crash after the write but
before the checkpoint cannot write an item twice. The same node records each decision in the
knowledge base's `past_outputs` (accepted -> approved, edited -> the edited text as edited, ignored
-> rejected) under a point id derived from (tenant, thread, artifact, version): recorded once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from app.db import utcnow
from app.faults import crash_point
from app.storage import active_db
from graphs.context import MarketingContext, context_of
from graphs.learning import remember
from graphs.schemas import (
    ActionRequest,
    EditResponse,
    HumanInterrupt,
    HumanInterruptConfig,
    InvalidResumeError,
    RespondResponse,
    parse_human_response,
)
from graphs.state import AgentInput, Artifact, PublishingOutput, ScheduledItem, StepResult
from tools.platforms import check_post, get_rules


class PublishingState(AgentInput, PublishingOutput, total=False):
    decisions: list[dict[str, Any]]


def channel(item: Artifact) -> str:
    """Where an item goes: the social platform, or the long-form kind (blog/email/landing_page)."""
    return item["platform"] or item["kind"]


def parse_when(value: str, tz: str) -> datetime:
    """ISO-8601 time; a time without offset is read in the run's time zone."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidResumeError(f"scheduled_at {value!r} is not an ISO-8601 time") from exc
    return when if when.tzinfo else when.replace(tzinfo=ZoneInfo(tz))


def pending_platform(request: dict[str, Any]) -> str | None:
    """The platform of a pending approval request (None for long-form items)."""
    action = request["action_request"]
    return str(action["args"]["channel"]) if action["action"] == "publish_post" else None


def approval_request(item: Artifact, publish_at: str | None, error: str | None) -> dict[str, Any]:
    where = channel(item)
    when = publish_at or "as soon as approved"
    lines = [
        f"**Approve {item['title']}** (`{item['id']}` v{item['version']}) for **{where}**, "
        f"scheduled **{when}**.",
    ]
    if item["platform"]:
        check = check_post(item["body"], item["platform"])
        lines.append(f"Length {check.length}/{check.max_chars}, {check.hashtags} hashtags.")
    elif item.get("score") is not None:
        lines.append(f"Quality score {item['score']:.2f}.")
    lines += ["", item["body"]]
    if error:
        lines = [f"⚠ Your last answer could not be used: {error}", "", *lines]
    req = HumanInterrupt(
        action_request=ActionRequest(
            action=f"publish_{'post' if item['platform'] else item['kind']}",
            args={
                "artifact_id": item["id"],
                "version": item["version"],
                "channel": where,
                "title": item["title"],
                "body": item["body"],
                "hashtags": list(item.get("hashtags") or []),
                "scheduled_at": publish_at,
            },
        ),
        config=HumanInterruptConfig(
            allow_accept=True, allow_edit=True, allow_respond=True, allow_ignore=True
        ),
        description="\n".join(lines),
    )
    return req.model_dump()


def check_edit(edit: EditResponse, platform: str | None, tz: str) -> None:
    """An edit must still fit its platform and carry a readable time."""
    body = edit.item["body"]
    if platform:
        result = check_post(body, platform)
        if not result.ok:
            raise InvalidResumeError(
                f"edited {platform} post breaks the platform rules: " + "; ".join(result.problems)
            )
    if edit.item.get("scheduled_at"):
        parse_when(str(edit.item["scheduled_at"]), tz)


def approve(state: PublishingState, runtime: Runtime[MarketingContext]) -> dict[str, Any]:
    """Ask once per item; a malformed answer re-asks the same item with the error shown."""
    ctx = context_of(runtime)
    decisions: list[dict[str, Any]] = []
    for item in state.get("items") or []:
        error: str | None = None
        while True:
            raw = interrupt([approval_request(item, state.get("publish_at"), error)])
            try:
                response = parse_human_response(raw)
                if isinstance(response, EditResponse):
                    check_edit(response, item["platform"], ctx.timezone)
                break
            except InvalidResumeError as exc:
                error = str(exc)
        decision: dict[str, Any] = {"artifact_id": item["id"], "type": response.type}
        if isinstance(response, EditResponse):
            decision["args"] = response.item
        elif isinstance(response, RespondResponse):
            decision["feedback"] = response.args
        decisions.append(decision)
    return {"decisions": decisions}


async def enqueue(state: PublishingState, runtime: Runtime[MarketingContext]) -> dict[str, Any]:
    ctx = context_of(runtime)
    step_id = state.get("step_id", "publish")
    info = runtime.execution_info
    thread_id = (info.thread_id if info else None) or "standalone"
    items = {i["id"]: i for i in state.get("items") or []}
    db = await active_db()
    artifacts: dict[str, Artifact] = {}
    scheduled: list[ScheduledItem] = []
    revisions: list[dict[str, str]] = []
    counts = {"accept": 0, "edit": 0, "respond": 0, "ignore": 0}
    notes: list[str] = []
    topic = state.get("topic", "")
    for d in state.get("decisions") or []:
        item = items[d["artifact_id"]]
        counts[d["type"]] += 1
        if d["type"] == "ignore":
            artifacts[item["id"]] = {**item, "status": "rejected"}
            note = await remember(item, "rejected", ctx=ctx, thread_id=thread_id, topic=topic)
            notes += [note] if note else []
            continue
        if d["type"] == "respond":
            revisions.append({"artifact_id": item["id"], "feedback": d["feedback"]})
            continue
        final: Artifact = dict(item)  # type: ignore[assignment]
        when_text = state.get("publish_at")
        if d["type"] == "edit":
            args = d["args"]
            final["body"] = args["body"]
            final["title"] = str(args.get("title") or item["title"])
            final["hashtags"] = list(args.get("hashtags") or item.get("hashtags") or [])
            final["version"] = item["version"] + 1
            when_text = args.get("scheduled_at") or when_text
        when = parse_when(when_text, ctx.timezone) if when_text else utcnow()
        row, _created = await db.enqueue(
            thread_id=thread_id,
            artifact_id=final["id"],
            version=final["version"],
            platform=channel(final),
            kind=final["kind"],
            title=final["title"],
            body=final["body"],
            scheduled_at=when,
        )
        crash_point("after_outbox_write")
        # the learning loop: what a person approved (or the edit they made) is remembered; the
        # point id is derived from (thread, artifact, version), so a re-run records it once
        note = await remember(
            final,
            "edited" if d["type"] == "edit" else "approved",
            ctx=ctx,
            thread_id=thread_id,
            topic=topic,
        )
        notes += [note] if note else []
        final["status"] = "scheduled"
        artifacts[final["id"]] = final
        scheduled.append(
            ScheduledItem(
                outbox_id=int(row["id"]),
                idempotency_key=row["idempotency_key"],
                artifact_id=final["id"],
                version=final["version"],
                platform=row["platform"],
                scheduled_at=row["scheduled_at"],
                status=row["status"],
            )
        )
    summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "nothing to approve"
    result = StepResult(
        step_id=step_id,
        agent="publishing",
        status="needs_revision" if revisions else "done",
        summary=f"approvals: {summary}; {len(scheduled)} item(s) in the outbox"
        + "".join(f"; {n}" for n in notes),
        artifact_ids=[a for a in artifacts],
    )
    if revisions:
        result["revisions"] = revisions
    return {
        "artifacts": artifacts,
        "scheduled": scheduled,
        "results": {step_id: result},
        "trace": [f"publishing:{step_id}"],
    }


builder = StateGraph(
    PublishingState,
    context_schema=MarketingContext,
    input_schema=AgentInput,
    output_schema=PublishingOutput,
)
builder.add_node("approve", approve)
builder.add_node("enqueue", enqueue)
builder.add_edge(START, "approve")
builder.add_edge("approve", "enqueue")
builder.add_edge("enqueue", END)

graph = builder.compile(name="publishing")

__all__ = ["approval_request", "channel", "get_rules", "graph", "parse_when"]
