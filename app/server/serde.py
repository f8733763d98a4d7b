"""JSON for the wire and the event log: LangChain messages, pydantic models, LangGraph
`Interrupt`/`Send`/`Command`, dataclasses, datetimes. One line per value (SSE `data:` lines)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import date, datetime
from enum import Enum
from typing import Any
from uuid import UUID

from langgraph.types import Command, Interrupt, Send
from pydantic import BaseModel


def to_jsonable(obj: Any) -> Any:
    """`json.dumps` default: turn one non-JSON value into JSON-able data."""
    if isinstance(obj, Interrupt):
        return {"value": obj.value, "id": obj.id}
    if isinstance(obj, BaseModel):
        return obj.model_dump()
    if isinstance(obj, Send):
        return {"node": obj.node, "arg": obj.arg}
    if isinstance(obj, Command):
        return {
            k: v
            for k, v in (
                ("graph", obj.graph),
                ("update", obj.update),
                ("resume", obj.resume),
                ("goto", obj.goto),
            )
            if v not in (None, (), [])
        }
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, UUID):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, bytes):
        return obj.decode("utf-8", errors="replace")
    return repr(obj)  # an unknown object is described, never a reason to fail a stream


def dumps(obj: Any) -> str:
    """Compact JSON text that is always valid UTF-8: a lone surrogate (a `"\\ud800"` escape
    the client sent, a badly decoded byte) is written as its JSON escape instead of making the
    database driver fail to encode the text."""
    text = json.dumps(obj, default=to_jsonable, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(obj, default=to_jsonable, separators=(",", ":"))
    return text


def jsonable(obj: Any) -> Any:
    """A JSON-compatible copy (for FastAPI responses)."""
    return json.loads(dumps(obj))
