"""Structured-output schemas (what models must return) and the human-approval wire shapes."""

from __future__ import annotations

import re
from graphlib import CycleError, TopologicalSorter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from graphs.state import AgentName


class PlanStep(BaseModel):
    """One delegated step."""

    id: str = Field(description="Short unique slug, e.g. 'research', 'blog', 'post-x', 'publish'.")
    agent: AgentName = Field(description="research | content | social | publishing")
    task: str = Field(description="What the sub-agent must do, in one or two sentences.")
    depends_on: list[str] = Field(
        default_factory=list, description="Ids of steps whose results this step needs."
    )
    kind: Literal["blog", "email", "landing_page"] | None = Field(
        None, description="content steps: which long-form piece."
    )
    platform: str | None = Field(None, description="social steps: x | linkedin | instagram | ...")
    revise: str | None = Field(
        None, description="Id of an existing artifact to rewrite instead of writing a new one."
    )

    @model_validator(mode="after")
    def _agent_fields(self) -> PlanStep:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]{0,40}", self.id):
            raise ValueError(f"step id {self.id!r} must be a short lowercase slug")
        if self.agent == "social" and not self.platform:
            raise ValueError(f"social step {self.id!r} needs a platform")
        if self.agent == "content" and not self.kind and not self.revise:
            self.kind = "blog"
        return self


class Plan(BaseModel):
    """The supervisor's plan for one user turn."""

    action: Literal["execute", "clarify", "decline"] = Field(
        description="execute the steps; clarify = ask the user one question; decline = not a "
        "marketing request"
    )
    topic: str = Field("", description="Product or subject of the request, e.g. 'TerraRun shoe'.")
    steps: list[PlanStep] = Field(default_factory=list)
    question: str | None = Field(None, description="clarify: the single question to ask.")
    publish_at: str | None = Field(
        None, description="When to publish, as the user said it ('Tuesday 9am'), or null."
    )
    reasoning: str = Field("", description="One sentence on why this plan.")

    @model_validator(mode="after")
    def _consistent(self) -> Plan:
        if self.action == "execute" and not self.steps:
            raise ValueError("an execute plan needs at least one step")
        if self.action == "clarify" and not (self.question or "").strip():
            raise ValueError("a clarify plan needs a question")
        ids = [s.id for s in self.steps]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate step ids {dupes}")
        known = set(ids)
        for step in self.steps:
            missing = [d for d in step.depends_on if d not in known]
            if missing:
                raise ValueError(f"step {step.id!r} depends on unknown steps {missing}")
        try:
            tuple(TopologicalSorter({s.id: s.depends_on for s in self.steps}).static_order())
        except CycleError as exc:
            raise ValueError(f"plan has a dependency cycle: {exc.args[1]}") from exc
        return self


class BriefPoint(BaseModel):
    point: str
    source_ids: list[str] = Field(default_factory=list, description="e.g. ['S1', 'S3']")


class BriefDraft(BaseModel):
    """Research brief as written by the model; citations are checked against real sources."""

    summary: str = Field(description="3-6 sentences; cite sources inline like [S1].")
    key_points: list[BriefPoint] = Field(default_factory=list)


class LongFormDraft(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, description="The full text in Markdown.")


class SocialDraft(BaseModel):
    text: str = Field(min_length=1, description="The post text without hashtags.")
    hashtags: list[str] = Field(default_factory=list, description="Hashtags without '#'.")


# ---------------------------------------------------------------------------------------------
# Human approval (agent-inbox shapes)
# ---------------------------------------------------------------------------------------------


class ActionRequest(BaseModel):
    action: str
    args: dict[str, Any]


class HumanInterruptConfig(BaseModel):
    allow_accept: bool = True
    allow_edit: bool = True
    allow_respond: bool = True
    allow_ignore: bool = True


class HumanInterrupt(BaseModel):
    action_request: ActionRequest
    config: HumanInterruptConfig = Field(default_factory=HumanInterruptConfig)
    description: str


class AcceptResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["accept"]
    args: None = None


class IgnoreResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ignore"]
    args: None = None


class EditResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["edit"]
    args: dict[str, Any] | None = Field(
        None,
        description="The edited item: at least 'body' (text), optionally 'title', 'hashtags', "
        "'scheduled_at'; or an agent-inbox ActionRequest {'action', 'args': {...}}.",
    )

    @model_validator(mode="after")
    def _has_body(self) -> EditResponse:
        if self.args is None:
            raise ValueError("'edit' needs args: the edited item with at least a 'body'")
        item = self.args.get("args") if isinstance(self.args.get("args"), dict) else self.args
        body = item.get("body") if isinstance(item, dict) else None
        if not isinstance(body, str) or not body.strip():
            raise ValueError("'edit' needs args with a non-empty 'body' (the edited text)")
        self.args = dict(item) if isinstance(item, dict) else {}
        return self

    @property
    def item(self) -> dict[str, Any]:
        """The edited item (validated: has a non-empty 'body')."""
        return self.args or {}


class RespondResponse(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["respond"]
    args: str = Field(min_length=1, description="Feedback for the agent that wrote the item.")


HumanResponse = AcceptResponse | EditResponse | RespondResponse | IgnoreResponse
_RESPONSES: dict[str, type[BaseModel]] = {
    "accept": AcceptResponse,
    "edit": EditResponse,
    "respond": RespondResponse,
    "ignore": IgnoreResponse,
}


class InvalidResumeError(ValueError):
    """A resume value that is not one of accept / edit / respond / ignore (or a list of one)."""


def parse_human_response(value: Any) -> HumanResponse:
    """Validate a resume value: a response dict, or a list of exactly one (agent-inbox style)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise InvalidResumeError(
                f"expected one response (or a list of one), got a list of {len(value)}"
            )
        value = value[0]
    if not isinstance(value, dict):
        raise InvalidResumeError(
            'expected a response like {"type": "accept"}, {"type": "edit", "args": {...}}, '
            '{"type": "respond", "args": "feedback"} or {"type": "ignore"}; '
            f"got {type(value).__name__}"
        )
    model = _RESPONSES.get(str(value.get("type")))
    if model is None:
        raise InvalidResumeError(
            f"unknown response type {value.get('type')!r}; use accept, edit, respond or ignore"
        )
    try:
        return model.model_validate(value)  # type: ignore[return-value]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidResumeError(f"invalid {value['type']!r} response: {problems}") from exc
