"""State types shared by the supervisor and the sub-agent graphs.

State holds plain JSON-able dicts (TypedDicts), so checkpoints read back the same through any
checkpointer, the HTTP API and Studio. Model outputs are validated with the pydantic models in
`graphs.schemas` and stored via `model_dump()`.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict  # pydantic (API schemas) needs it on Python < 3.12

AgentName = Literal["research", "content", "social", "publishing"]
ArtifactKind = Literal["blog", "email", "landing_page", "post"]
LONG_FORM_KINDS: tuple[str, ...] = ("blog", "email", "landing_page")

RESET = "__reset__"


class Source(TypedDict):
    id: str  # "S1", "S2", ... cited as [S1]
    title: str
    url: str
    snippet: str
    origin: Literal["knowledge_base", "web", "url"]


class KeyPoint(TypedDict):
    point: str
    source_ids: list[str]


class Brief(TypedDict):
    topic: str
    summary: str
    key_points: list[KeyPoint]
    sources: list[Source]
    notes: list[str]  # e.g. "web search unavailable: TAVILY_API_KEY is not set"


class Artifact(TypedDict):
    id: str  # stable across revisions: "blog", "post-x", "post-linkedin"
    kind: ArtifactKind
    platform: str | None
    title: str
    body: str
    hashtags: list[str]
    version: int
    agent: AgentName
    step_id: str
    score: float | None
    status: Literal["draft", "approved", "scheduled", "rejected"]


class StepResult(TypedDict):
    step_id: str
    agent: AgentName
    status: Literal["done", "failed", "needs_revision"]
    summary: str
    artifact_ids: list[str]
    error: NotRequired[str]
    revisions: NotRequired[list[dict[str, str]]]  # publishing: [{"artifact_id", "feedback"}]


class ScheduledItem(TypedDict):
    outbox_id: int
    idempotency_key: str
    artifact_id: str
    version: int
    platform: str
    scheduled_at: str  # ISO 8601 with offset
    status: str


class AgentUsage(TypedDict):
    calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    models: list[str]


# ---------------------------------------------------------------------------------------------
# reducers
# ---------------------------------------------------------------------------------------------


def merge_by_key(left: dict[str, Any] | None, right: dict[str, Any] | None) -> dict[str, Any]:
    """Merge dicts by key (later wins). `{RESET: True}` in an update clears the channel first."""
    if right is None:
        return dict(left or {})
    if right.get(RESET):
        return {k: v for k, v in right.items() if k != RESET}
    merged = dict(left or {})
    merged.update(right)
    return merged


def merge_artifacts(
    left: dict[str, Artifact] | None, right: dict[str, Artifact] | None
) -> dict[str, Artifact]:
    """Keep the newest version of each artifact; an older version never overwrites a newer one."""
    merged: dict[str, Artifact] = dict(left or {})
    for key, art in (right or {}).items():
        current = merged.get(key)
        if current is None or art["version"] >= current["version"]:
            merged[key] = art
    return merged


def add_usage(
    left: dict[str, AgentUsage] | None, right: dict[str, AgentUsage] | None
) -> dict[str, AgentUsage]:
    merged: dict[str, AgentUsage] = {k: dict(v) for k, v in (left or {}).items()}  # type: ignore[misc]
    for agent, u in (right or {}).items():
        cur = merged.get(agent)
        if cur is None:
            merged[agent] = dict(u)  # type: ignore[assignment]
            continue
        cur["calls"] += u["calls"]
        cur["input_tokens"] += u["input_tokens"]
        cur["output_tokens"] += u["output_tokens"]
        cur["cost_usd"] = round(cur["cost_usd"] + u["cost_usd"], 8)
        cur["models"] = sorted(set(cur["models"]) | set(u["models"]))
    return merged


def merge_scheduled(
    left: list[ScheduledItem] | None, right: list[ScheduledItem] | None
) -> list[ScheduledItem]:
    """Outbox items recorded in state, one per idempotency key (a re-run adds nothing)."""
    by_key = {item["idempotency_key"]: item for item in (left or [])}
    for item in right or []:
        by_key[item["idempotency_key"]] = item
    return list(by_key.values())


def step_failed(step_id: str, agent: AgentName, summary: str, error: str) -> dict[str, Any]:
    """A sub-agent's output for a step that produced nothing usable."""
    return {
        "results": {
            step_id: StepResult(
                step_id=step_id,
                agent=agent,
                status="failed",
                summary=summary,
                artifact_ids=[],
                error=error,
            )
        },
        "trace": [f"{agent}:{step_id}"],
    }


# ---------------------------------------------------------------------------------------------
# graph states
# ---------------------------------------------------------------------------------------------


class SupervisorInput(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


class SupervisorState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    turn: int
    request: str  # the user request this turn works on
    plan: dict[str, Any] | None  # graphs.schemas.Plan.model_dump()
    results: Annotated[dict[str, StepResult], merge_by_key]  # this turn's step results
    artifacts: Annotated[dict[str, Artifact], merge_artifacts]  # persists across turns
    brief: Brief | None
    scheduled: Annotated[list[ScheduledItem], merge_scheduled]
    usage: Annotated[dict[str, AgentUsage], add_usage]
    replans: int
    trace: Annotated[list[str], operator.add]  # "agent:step_id" in completion order


class AgentInput(TypedDict, total=False):
    """What the supervisor hands a sub-agent (a `Send` payload); also their standalone input."""

    task: str
    step_id: str
    request: str
    kind: str
    platform: str
    topic: str
    brief: Brief | None
    sources: list[Artifact]  # earlier artifacts to draw on (e.g. the blog for social posts)
    revise: Artifact | None  # the artifact to rewrite, for follow-ups and `respond` feedback
    feedback: str
    items: list[Artifact]  # publishing: what to ask approval for
    publish_at: str | None  # publishing: ISO time, or None for "as soon as approved"
    artifact_id: str  # content/social: the id (and version) the new draft gets
    version: int


class AgentOutput(TypedDict, total=False):
    """What every sub-agent hands back to the supervisor."""

    results: Annotated[dict[str, StepResult], merge_by_key]
    artifacts: Annotated[dict[str, Artifact], merge_artifacts]
    usage: Annotated[dict[str, AgentUsage], add_usage]
    trace: Annotated[list[str], operator.add]


class ResearchOutput(AgentOutput, total=False):
    brief: Brief | None


class PublishingOutput(AgentOutput, total=False):
    scheduled: Annotated[list[ScheduledItem], merge_scheduled]
