"""Dataset rows (JSONL in `evals/datasets/`), validated with pydantic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evals.types import HarnessError

DATASET_DIR = Path(__file__).with_name("datasets")
Decision = Literal["accept", "edit", "respond", "ignore"]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    critical: bool = False
    notes: str = ""


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request: str
    decisions: list[Decision] = Field(default_factory=list)  # approvals in order; then accept
    feedback: str = "Make it shorter and less formal."


class RoutingCase(_Row):
    request: str
    history: list[str] = Field(default_factory=list)  # earlier turns on the same thread
    context: dict[str, Any] = Field(default_factory=dict)
    action: Literal["execute", "clarify", "decline"]
    agents: list[str] = Field(default_factory=list)  # expected set of sub-agents
    first: list[str] = Field(default_factory=list)  # expected agents of the first wave


class TrajectoryCase(_Row):
    turns: list[Turn]
    context: dict[str, Any] = Field(default_factory=dict)
    match: Literal["strict", "unordered", "subset", "superset"] = "strict"
    reference: list[list[str]]  # groups of tokens; order inside a group never matters
    forbidden: list[str] = Field(default_factory=list)  # agents or tool names
    outbox: int | None = None  # expected outbox rows at the end


class ContentCase(_Row):
    request: str
    platform: str | None = None  # social platform, or None for long-form
    kind: Literal["blog", "email", "landing_page"] | None = None
    must_include: list[str] = Field(default_factory=list)
    must_not_include: list[str] = Field(default_factory=list)
    brand: dict[str, Any] = Field(default_factory=dict)  # brand_name, brand_voice, audience


class RetrievalDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    title: str
    text: str
    source: str
    kind: Literal["document", "past_output"] = "document"
    brand: str | None = None


class RetrievalCase(_Row):
    query: str
    relevant: list[str]
    brand: str | None = None


T = TypeVar("T", bound=BaseModel)


def load_jsonl(path: Path, model: type[T]) -> list[T]:
    rows: list[T] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise HarnessError(f"cannot read dataset {path}: {exc}") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            rows.append(model.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise HarnessError(f"{path.name}:{n}: {exc}") from exc
    ids = [getattr(r, "id", None) for r in rows]
    dupes = sorted({i for i in ids if i is not None and ids.count(i) > 1})
    if dupes:
        raise HarnessError(f"{path.name}: duplicate ids {dupes}")
    return rows


def dataset(name: str, model: type[T], directory: Path | None = None) -> list[T]:
    return load_jsonl((directory or DATASET_DIR) / f"{name}.jsonl", model)
