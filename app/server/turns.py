"""What a run asks of its thread's state — a new request, or the answer to a pending approval —
checked when the run is created, and again when a queued run starts on a thread that another
run changed in the meantime (`app.server.executor`)."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

from app.errors import NotInterruptedError, StaleApprovalError
from app.runner import Runner, ThreadView
from graphs.context import MarketingContext


def request_text(value: Any) -> str | None:
    """The newest human message's text in a `{"messages": [...]}` input (None when the input
    carries no messages)."""
    if not isinstance(value, dict) or "messages" not in value:
        return None
    messages = value["messages"]
    if isinstance(messages, dict | str):
        messages = [messages]
    if not isinstance(messages, list):
        raise HTTPException(422, "input.messages must be a list of messages")
    for msg in reversed(messages):
        if isinstance(msg, str):
            return msg
        if isinstance(msg, dict) and (
            msg.get("role") in ("user", "human") or msg.get("type") == "human"
        ):
            content = msg.get("content")
            if isinstance(content, list):
                return " ".join(
                    str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content
                )
            return "" if content is None else str(content)
    return None


def check_turn(
    view: ThreadView,
    input: Any,
    command: dict[str, Any] | None,
    ctx: MarketingContext | None,
) -> None:
    """A resume needs a pending interrupt (and, on the marketing graphs, an answer that fits the
    approval; with `interrupt_id`, as the chat endpoint sends it, that very approval); a new
    request may not skip a pending approval. Raises `app.errors.AppError`."""
    if command is not None and "resume" in command:
        if not view.exists:
            raise NotInterruptedError(view.thread_id)
        expected = command.get("interrupt_id")
        if expected is not None and view.interrupts and view.interrupts[0]["id"] != expected:
            raise StaleApprovalError(view.thread_id, expected, view.interrupts[0]["id"])
        if ctx is not None:
            Runner.check_resume(view, command["resume"], ctx)
        elif view.status != "interrupted":
            raise NotInterruptedError(view.thread_id)
    elif input is not None:
        text = request_text(input)
        if text is not None:
            Runner.check_request_text(text)
            Runner.check_new_turn(view)
