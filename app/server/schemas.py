"""Request bodies of the LangGraph Server API as `langgraph-sdk` sends them. Unknown fields are
rejected (422 names them); fields the SDK may send but this server does not implement are accepted
only at their neutral value, with an error saying so otherwise."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

StreamModeName = Literal[
    "values",
    "updates",
    "messages",
    "messages-tuple",
    "custom",
    "debug",
    "tasks",
    "checkpoints",
    "events",
]
ThreadStatus = Literal["idle", "busy", "interrupted", "error"]
RunStatus = Literal["pending", "running", "error", "success", "timeout", "interrupted"]
MultitaskStrategy = Literal["reject", "interrupt", "rollback", "enqueue"]
# past any real listing and within a database integer (a larger one was an overflow, a 500)
MAX_OFFSET = 1_000_000_000
THREAD_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_thread_id(value: str) -> str:
    if not THREAD_ID_RE.match(value):
        raise ValueError(
            "a thread id is 1-128 characters: letters, digits, '.', '_', ':' or '-' (a UUID works)"
        )
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("an id cannot contain a NUL character")
    return value


# an id looked up in the database as text (Postgres refuses a NUL character in text)
Ident = Annotated[str, AfterValidator(_no_nul)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CommandBody(Body):
    resume: Any = None
    update: dict[str, Any] | list[Any] | None = None
    goto: str | list[str] | dict[str, Any] | list[dict[str, Any]] | None = None


class ConfigBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    tags: list[str] | None = None
    recursion_limit: int | None = Field(None, ge=1, le=10_000)
    configurable: dict[str, Any] | None = None


class CheckpointBody(Body):
    """A checkpoint as the SDK names one. Other keys are refused: they would reach LangGraph's
    config (`__pregel_checkpointer` and the like)."""

    checkpoint_id: Ident | None = None
    checkpoint_ns: Ident | None = ""
    thread_id: Ident | None = None
    checkpoint_map: dict[str, Any] | None = None


class RunCreate(Body):
    assistant_id: str = Field(..., min_length=1, max_length=200)
    input: dict[str, Any] | list[Any] | str | int | float | bool | None = None
    command: CommandBody | None = None
    stream_mode: StreamModeName | list[StreamModeName] = "values"
    stream_subgraphs: bool = False
    stream_resumable: bool = False  # every run's stream is persisted and resumable
    config: ConfigBody | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: CheckpointBody | None = None
    checkpoint_id: Ident | None = None
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    multitask_strategy: MultitaskStrategy = "enqueue"
    on_disconnect: Literal["cancel", "continue"] = "continue"
    if_not_exists: Literal["create", "reject"] = "reject"
    on_completion: Literal["delete", "keep"] | None = None
    durability: Literal["sync", "async", "exit"] | None = None
    checkpoint_during: bool | None = None
    # accepted so SDK defaults pass; refused when they ask for something not implemented
    webhook: str | None = None
    feedback_keys: list[str] | None = None
    after_seconds: float | None = None
    langsmith_tracer: dict[str, Any] | None = None
    strict_resume: bool | None = None

    @field_validator("stream_mode")
    @classmethod
    def _modes(cls, value: str | list[str]) -> list[str]:
        modes = [value] if isinstance(value, str) else list(value)
        if "events" in modes:
            raise ValueError(
                "stream_mode 'events' is not supported by this server; use values, updates, "
                "messages-tuple, custom, debug, tasks or checkpoints"
            )
        return list(dict.fromkeys(modes)) or ["values"]

    @model_validator(mode="after")
    def _unsupported(self) -> RunCreate:
        if self.webhook:
            raise ValueError("webhook: not supported by this server (poll or stream the run)")
        if self.feedback_keys:
            raise ValueError("feedback_keys: not supported by this server")
        if self.after_seconds:
            raise ValueError("after_seconds: scheduled runs are not supported by this server")
        if self.input is not None and self.command is not None:
            raise ValueError("send either input or command, not both")
        return self

    def modes(self) -> list[str]:
        return list(self.stream_mode) if isinstance(self.stream_mode, list) else [self.stream_mode]


class ThreadCreate(Body):
    thread_id: str | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] = "raise"
    graph_id: str | None = None
    supersteps: list[Any] | None = None
    ttl: dict[str, Any] | None = None

    @field_validator("thread_id")
    @classmethod
    def _tid(cls, value: str | None) -> str | None:
        return None if value is None else check_thread_id(value)

    @model_validator(mode="after")
    def _unsupported(self) -> ThreadCreate:
        if self.supersteps:
            raise ValueError("supersteps: not supported; create the thread, then update its state")
        if self.ttl:
            raise ValueError("ttl: not supported; old event logs are pruned by retention instead")
        return self


class ThreadPatch(Body):
    metadata: dict[str, Any] = Field(default_factory=dict)
    ttl: dict[str, Any] | None = None


# the fields `select` may name (langgraph-api's lists)
ThreadField = Literal[
    "thread_id",
    "created_at",
    "updated_at",
    "state_updated_at",
    "metadata",
    "config",
    "status",
    "values",
    "interrupts",
]
RunField = Literal[
    "run_id",
    "thread_id",
    "assistant_id",
    "created_at",
    "updated_at",
    "status",
    "metadata",
    "kwargs",
    "multitask_strategy",
    "langsmith_session_name",  # never set here: selecting it selects nothing
]


class ThreadSearch(Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    ids: list[Ident] | None = None
    status: ThreadStatus | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    # `state_updated_at` sorts as `updated_at` (a thread's row moves with every run's end)
    sort_by: (
        Literal["thread_id", "status", "created_at", "updated_at", "state_updated_at"] | None
    ) = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[ThreadField] | None = None
    extract: dict[str, str] | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> ThreadSearch:
        if self.values:
            raise ValueError("values: searching by state values is not supported; use metadata")
        if self.extract:
            raise ValueError("extract: not supported by this server")
        return self


class ThreadCount(Body):
    metadata: dict[str, Any] | None = None
    values: dict[str, Any] | None = None
    status: ThreadStatus | None = None


class StateUpdate(Body):
    values: dict[str, Any] | list[Any] | None = None
    as_node: str | None = None
    checkpoint: CheckpointBody | None = None
    checkpoint_id: Ident | None = None


class StateAtCheckpoint(Body):
    checkpoint: CheckpointBody
    subgraphs: bool = False
    select: list[str] | None = None


HISTORY_FILTER_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


class HistoryQuery(Body):
    limit: int = Field(10, ge=1, le=1000)
    before: Ident | CheckpointBody | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: CheckpointBody | None = None
    select: list[str] | None = None

    @field_validator("metadata")
    @classmethod
    def _filter_keys(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # what the SQLite checkpointer can filter on (it refuses other keys); the same on Postgres
        if value and not all(HISTORY_FILTER_KEY_RE.match(key) for key in value):
            raise ValueError(
                "a metadata filter key is 1-200 characters: letters, digits, '_', '.' or '-'"
            )
        return value


class AssistantSearch(Body):
    metadata: dict[str, Any] | None = None
    graph_id: str | None = None
    name: str | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    sort_by: str | None = None
    sort_order: Literal["asc", "desc"] | None = None
    select: list[str] | None = None


class AssistantVersions(Body):
    metadata: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)


class AssistantVersion(Body):
    version: int


class AssistantCount(Body):
    metadata: dict[str, Any] | None = None
    graph_id: str | None = None
    name: str | None = None


class ChatMessage(Body):
    message: str = Field(..., description="What the team should do.", max_length=20_000)
    thread_id: str | None = Field(None, description="Continue this thread (omit for a new one).")
    context: dict[str, Any] | None = Field(
        None, description="Run context: brand_name, brand_voice, platforms, timezone, ..."
    )

    @field_validator("thread_id")
    @classmethod
    def _tid(cls, value: str | None) -> str | None:
        return None if value is None else check_thread_id(value)


class ChatApproval(Body):
    answer: dict[str, Any] | list[Any] = Field(
        ...,
        description='The reviewer\'s answer: {"type": "accept"}, {"type": "edit", "args": {...}}, '
        '{"type": "respond", "args": "feedback"} or {"type": "ignore"}.',
    )
    interrupt_id: Annotated[str, Field(max_length=200), AfterValidator(_no_nul)] | None = Field(
        None,
        description="The `interrupt_id` of the `approval` event answered. Recommended: a repeated "
        "or retried answer is then refused (409) instead of answering the next approval unseen.",
    )
    context: dict[str, Any] | None = None

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_shape(cls, value: Any) -> Any:
        if not isinstance(value, dict | list):  # (pydantic would name both union branches)
            raise ValueError(
                'an answer is an object such as {"type": "accept"} (or a list of one), '
                f"not {type(value).__name__}"
            )
        return value
