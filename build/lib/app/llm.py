"""How graph nodes call models: validated structured output with bounded repair, usage recorded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from pydantic import BaseModel, ValidationError

from app.models import aget_model_factory
from app.usage import usage_from_message
from graphs.state import AgentUsage, add_usage

T = TypeVar("T", bound=BaseModel)


class ModelOutputError(RuntimeError):
    """The model did not return a valid structured answer after the repair attempts."""

    def __init__(self, message: str, usage: dict[str, AgentUsage] | None = None) -> None:
        super().__init__(message)
        self.usage: dict[str, AgentUsage] = usage or {}  # tokens spent on the failed attempts


def _describe(error: object) -> str:
    """A one-line reason: pydantic messages without the URL boilerplate."""
    if error is None:
        return ""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in error.errors()
        )
    cause = getattr(error, "__cause__", None)
    if isinstance(cause, ValidationError):
        return _describe(cause)
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


async def ask_structured(
    agent: str,
    schema: type[T],
    messages: Sequence[BaseMessage],
    *,
    overrides: Mapping[str, str] | None = None,
    attempts: int = 2,
) -> tuple[T, dict[str, AgentUsage]]:
    """Ask for `schema` via function calling; on invalid output, show the error and retry."""
    factory = await aget_model_factory()
    runnable = factory.structured(agent, schema, overrides)
    default_model = factory.model_name(agent, overrides)
    usage: dict[str, AgentUsage] = {}
    convo = list(messages)
    error: object = None
    for _ in range(max(1, attempts)):
        out: dict[str, Any] = await runnable.ainvoke(
            convo, config={"tags": [f"agent:{agent}", "structured"]}
        )
        raw = out.get("raw")
        usage = add_usage(
            usage,
            usage_from_message(agent, raw if isinstance(raw, AIMessage) else None, default_model),
        )
        parsed = out.get("parsed")
        if isinstance(parsed, schema):
            return parsed, usage
        error = _describe(out.get("parsing_error")) or "no tool call returned"
        convo = [
            *messages,
            HumanMessage(
                f"Your previous answer was not a valid {schema.__name__} call: {str(error)[:600]}. "
                f"Call the {schema.__name__} tool again with valid arguments."
            ),
        ]
    raise ModelOutputError(
        f"{agent}: no valid {schema.__name__} from the model: {str(error)[:300]}", usage
    )


async def ask_text(
    agent: str,
    messages: Sequence[BaseMessage],
    *,
    overrides: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
) -> tuple[AIMessage, dict[str, AgentUsage]]:
    factory = await aget_model_factory()
    model = factory.chat(agent, overrides)
    msg = await model.ainvoke(list(messages), config={"tags": [f"agent:{agent}", *tags]})
    if not isinstance(msg, AIMessage):
        raise ModelOutputError(f"{agent}: expected an AIMessage, got {type(msg).__name__}")
    return msg, usage_from_message(agent, msg, factory.model_name(agent, overrides))
