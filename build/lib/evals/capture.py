"""Records the tools called during one case (a callback handler installed through a context
variable, so concurrent cases never see each other's calls)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tracers.context import register_configure_hook


class ToolRecorder(BaseCallbackHandler):
    """Collects the names of tools that were started."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_tool_start(
        self, serialized: dict[str, Any] | None, input_str: str, **kwargs: Any
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "?"
        self.calls.append(str(name))


_recorder: ContextVar[ToolRecorder | None] = ContextVar("evals_tool_recorder", default=None)
register_configure_hook(_recorder, inheritable=True)


def start_recording() -> ToolRecorder:
    """Record tool calls made from the current task (and the tasks it starts) from now on."""
    recorder = ToolRecorder()
    _recorder.set(recorder)
    return recorder
