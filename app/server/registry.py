"""The served graphs, read from `langgraph.json` (the one list `langgraph dev` also serves), and
their default assistants: one per graph, with the id langgraph-api gives it (`uuid5` of the graph
id in langgraph-api's namespace), metadata `{"created_by": "system"}`; a graph name is accepted
wherever an assistant id is."""

from __future__ import annotations

import importlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.pregel import Pregel

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "langgraph.json"


class GraphConfigError(RuntimeError):
    """langgraph.json is missing or names a graph that cannot be loaded."""


# langgraph-api's namespace for the default assistants' ids (`langgraph_api.graph`): a graph's
# assistant has the same id here as on `langgraph dev`
NAMESPACE_GRAPH = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")


def assistant_id_for(graph_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE_GRAPH, graph_id))


def legacy_assistant_id_for(graph_id: str) -> str:
    """The id this server gave a graph's assistant before it took langgraph-api's (still
    accepted: clients and stored runs may name it)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, graph_id))


def read_graph_specs(path: Path | None = None) -> dict[str, str]:
    """graph id -> "./path/module.py:attr" from langgraph.json."""
    path = path or DEFAULT_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise GraphConfigError(f"cannot read {path}: {exc}") from exc
    graphs = data.get("graphs") if isinstance(data, dict) else None
    if not isinstance(graphs, dict) or not graphs:
        raise GraphConfigError(f'{path} has no "graphs" object')
    return {str(k): str(v) for k, v in graphs.items()}


def load_graph(spec: str, base: Path) -> Pregel:
    """Import "./graphs/supervisor.py:graph" as module `graphs.supervisor`, attribute `graph`."""
    file_part, _, attr = spec.partition(":")
    if not attr:
        raise GraphConfigError(f"graph spec {spec!r} needs ':attribute'")
    rel = (base / file_part).resolve().relative_to(base.resolve())
    module_name = ".".join(rel.with_suffix("").parts)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GraphConfigError(f"cannot import {module_name} for {spec!r}: {exc}") from exc
    graph = getattr(module, attr, None)
    if not isinstance(graph, Pregel):
        raise GraphConfigError(f"{spec!r} is not a compiled LangGraph graph")
    return graph


@dataclass
class Registry:
    graphs: dict[str, Pregel]
    checkpointer: BaseCheckpointSaver[Any]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    _bound: dict[str, Pregel] = field(default_factory=dict)

    @classmethod
    def load(cls, checkpointer: BaseCheckpointSaver[Any], path: Path | None = None) -> Registry:
        path = path or DEFAULT_CONFIG
        specs = read_graph_specs(path)
        graphs = {gid: load_graph(spec, path.parent) for gid, spec in specs.items()}
        return cls(graphs, checkpointer)

    def graph(self, graph_id: str) -> Pregel:
        """The graph with the app's checkpointer attached (the module-level graph has none)."""
        if graph_id not in self._bound:
            self._bound[graph_id] = self.graphs[graph_id].copy(
                update={"checkpointer": self.checkpointer}
            )
        return self._bound[graph_id]

    def resolve(self, assistant_id: str) -> str | None:
        """Assistant id or graph name -> graph id (None when unknown)."""
        if assistant_id in self.graphs:
            return assistant_id
        for gid in self.graphs:
            if assistant_id in (assistant_id_for(gid), legacy_assistant_id_for(gid)):
                return gid
        return None

    def assistant(self, graph_id: str) -> dict[str, Any]:
        return {
            "assistant_id": assistant_id_for(graph_id),
            "graph_id": graph_id,
            "name": graph_id,
            "description": None,
            "config": {},
            "context": {},
            "metadata": {"created_by": "system"},
            "version": 1,
            "created_at": self.created_at,
            "updated_at": self.created_at,
        }

    def assistants(self) -> list[dict[str, Any]]:
        return [self.assistant(gid) for gid in self.graphs]
