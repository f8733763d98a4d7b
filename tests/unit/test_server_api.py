"""The HTTP server in-process (ASGI, SQLite, scripted model): validation and edge cases of the
LangGraph Server API routes: 404s, 409s, 422s that name the field, tenant isolation, roles,
the graph registry agreeing with langgraph.json, and one real run through the background worker."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.server import metrics
from app.server.app import create_app
from app.server.auth import Principal, current_principal
from app.server.registry import DEFAULT_CONFIG, Registry, assistant_id_for, read_graph_specs
from app.settings import AGENTS, Settings
from graphs.supervisor import AGENT_NODES
from tests.helpers import CAMPAIGN, PUBLISH_REQUEST, served


def as_principal(app: Any, tenant: str, role: str) -> None:
    async def principal() -> Principal:
        return Principal(tenant=tenant, role=role, key_id="k-" + tenant)  # type: ignore[arg-type]

    app.dependency_overrides[current_principal] = principal


def sse_events(text: str) -> list[dict[str, Any]]:
    """Parse an SSE body into [{event, data, id}] (comments skipped)."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "event" in fields:
            fields["data"] = json.loads(fields["data"]) if fields.get("data") else None
            out.append(fields)
    return out


def test_every_route_and_dependency_runs_on_the_event_loop(settings: Settings) -> None:
    """FastAPI runs a plain `def` endpoint or dependency in its thread pool: a thread hop on
    every request (it showed up as ~1/7 of a run creation's server CPU). All are `async def`."""
    from fastapi.routing import APIRoute

    def sync_calls(dependant: Any) -> list[str]:
        found = (
            []
            if dependant.call is None or inspect.iscoroutinefunction(dependant.call)
            else [getattr(dependant.call, "__qualname__", repr(dependant.call))]
        )
        for sub in dependant.dependencies:
            found += sync_calls(sub)
        return found

    def api_routes(routes: list[Any]) -> list[APIRoute]:
        found: list[APIRoute] = []
        for route in routes:
            if isinstance(route, APIRoute):
                found.append(route)
            elif hasattr(route, "original_router"):  # an included router (FastAPI >= 0.16x)
                found += api_routes(route.original_router.routes)
        return found

    routes = api_routes(create_app(settings).routes)
    assert len(routes) > 30
    assert {r.path: sync_calls(r.dependant) for r in routes if sync_calls(r.dependant)} == {}


async def test_metrics_are_served_when_the_database_is_slow_or_failing(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one gauge read from the database (Postgres's notification queue) is skipped when the
    read fails or takes over SCRAPE_DB_S; the rest of the exposition is served."""
    import psycopg

    from app.server.routes import meta

    client, app = api
    db = app.state.services.db

    async def failing() -> float:
        raise psycopg.OperationalError("the database system is starting up")

    async def slow() -> float:
        await asyncio.sleep(5)
        return 0.0

    monkeypatch.setattr(meta, "SCRAPE_DB_S", 0.05)
    for broken in (failing, slow):
        monkeypatch.setattr(db, "notification_queue_usage", broken)
        r = await client.get("/metrics")
        assert r.status_code == 200 and "mkt_runs_started_total" in r.text


# --- graphs: one source of truth ---------------------------------------------------------------
def test_registry_serves_exactly_the_graphs_in_langgraph_json() -> None:
    specs = read_graph_specs(DEFAULT_CONFIG)
    assert set(specs) == {"supervisor", *AGENT_NODES} == set(AGENTS)
    registry = Registry.load(checkpointer=None, path=DEFAULT_CONFIG)  # type: ignore[arg-type]
    from graphs import content, publishing, research, social, supervisor

    modules = {
        "supervisor": supervisor,
        "research": research,
        "content": content,
        "social": social,
        "publishing": publishing,
    }
    for gid, graph in registry.graphs.items():
        assert graph is modules[gid].graph  # the module-level graph langgraph dev serves
        assert registry.resolve(gid) == gid
        assert registry.resolve(assistant_id_for(gid)) == gid
    assert registry.resolve("nope") is None


def test_langgraph_json_errors_name_the_problem(tmp_path: Path) -> None:
    from app.server.registry import GraphConfigError

    bad = tmp_path / "langgraph.json"
    bad.write_text('{"graphs": {}}')
    with pytest.raises(GraphConfigError, match='no "graphs"'):
        read_graph_specs(bad)


# --- assistants ---------------------------------------------------------------------------------
async def test_assistants_search_get_and_studio_endpoints(api: Any) -> None:
    client, _ = api
    found = (
        await client.post(
            "/assistants/search", json={"metadata": {"created_by": "system"}, "limit": 100}
        )
    ).json()
    assert {a["graph_id"] for a in found} == set(AGENTS)
    sup = (await client.get("/assistants/supervisor")).json()
    assert sup["assistant_id"] == assistant_id_for("supervisor")
    assert (await client.get(f"/assistants/{sup['assistant_id']}")).json() == sup
    graph = (await client.get("/assistants/supervisor/graph", params={"xray": "true"})).json()
    names = {n["id"] for n in graph["nodes"]}
    assert {"plan", "dispatch", "answer"} <= names
    assert any(n.startswith("publishing") and n != "publishing" for n in names), names  # xray
    schemas = (await client.get("/assistants/supervisor/schemas")).json()
    assert "brand_name" in schemas["context_schema"]["properties"]
    assert "messages" in schemas["input_schema"]["properties"]
    subgraphs = (await client.get("/assistants/supervisor/subgraphs")).json()
    assert set(subgraphs) == set(AGENT_NODES)
    assert (await client.get("/assistants/nope")).status_code == 404
    assert (
        await client.get("/assistants/supervisor/graph", params={"xray": "-1"})
    ).status_code == 422
    info = (await client.get("/info")).json()
    assert info["provider"] == "scripted" and info["storage"].startswith("sqlite")
    assert (await client.get("/ok")).json() == {"ok": True}
    assert "/threads/{thread_id}/runs/stream" in (await client.get("/openapi.json")).json()["paths"]


# --- threads ------------------------------------------------------------------------------------
async def test_thread_create_if_exists_get_patch_search_delete(api: Any) -> None:
    client, _ = api
    t = (await client.post("/threads", json={"thread_id": "t-1", "metadata": {"team": "a"}})).json()
    assert t["thread_id"] == "t-1" and t["status"] == "idle" and t["metadata"] == {"team": "a"}
    dup = await client.post("/threads", json={"thread_id": "t-1"})
    assert dup.status_code == 409 and "if_exists" in dup.json()["detail"]
    same = await client.post("/threads", json={"thread_id": "t-1", "if_exists": "do_nothing"})
    assert same.status_code == 200 and same.json()["metadata"] == {"team": "a"}
    await client.post("/threads", json={"thread_id": "t-2", "metadata": {"team": "b"}})
    patched = (await client.patch("/threads/t-2", json={"metadata": {"x": 1}})).json()
    assert patched["metadata"] == {"team": "b", "x": 1}
    hits = (await client.post("/threads/search", json={"metadata": {"team": "b"}})).json()
    assert [h["thread_id"] for h in hits] == ["t-2"]
    page = (
        await client.post("/threads/search", json={"limit": 1, "offset": 1, "sort_order": "asc"})
    ).json()
    assert [h["thread_id"] for h in page] == ["t-2"]
    assert (await client.post("/threads/search", json={"status": "busy"})).json() == []
    assert (await client.post("/threads/count", json={})).json() == 2
    assert (await client.delete("/threads/t-2")).status_code == 204
    assert (await client.get("/threads/t-2")).status_code == 404
    state = (await client.get("/threads/t-1/state")).json()
    assert state["values"] == {} and state["next"] == [] and state["checkpoint"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"thread_id": "has space"}, "thread_id"),
        ({"if_exists": "overwrite"}, "if_exists"),
        ({"metadata": "x"}, "metadata"),
        ({"bogus": 1}, "bogus"),
    ],
)
async def test_thread_create_422_names_the_field(
    api: Any, body: dict[str, Any], field: str
) -> None:
    client, _ = api
    r = await client.post("/threads", json=body)
    assert r.status_code == 422
    assert field in json.dumps(r.json()["detail"])


async def test_unknown_ids_are_404_everywhere(api: Any) -> None:
    client, _ = api
    await client.post("/threads", json={"thread_id": "t-1"})
    for method, path in [
        ("GET", "/threads/nope"),
        ("GET", "/threads/nope/state"),
        ("POST", "/threads/nope/history"),
        ("GET", "/threads/nope/runs"),
        ("GET", "/threads/t-1/runs/nope"),
        ("GET", "/threads/t-1/runs/nope/join"),
        ("GET", "/threads/t-1/runs/nope/stream"),
        ("POST", "/threads/t-1/runs/nope/cancel"),
        ("GET", "/threads/t-1/state/1ef00000-0000-6000-8000-000000000000"),
    ]:
        r = await client.request(method, path, json={} if method == "POST" else None)
        assert r.status_code == 404, (method, path, r.text)
    r = await client.post("/threads/nope/runs", json={"assistant_id": "supervisor", "input": {}})
    assert r.status_code == 404
    r = await client.post("/threads/t-1/runs", json={"assistant_id": "nope", "input": {}})
    assert r.status_code == 404 and "assistant" in r.json()["detail"]


# --- runs: validation before anything is queued -------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"stream_mode": "bogus"}, 422, "stream_mode"),
        ({"stream_mode": "events"}, 422, "events"),
        ({"context": {"platforms": ["myspace"]}}, 422, "platforms"),
        ({"context": {"brand_nme": "x"}}, 422, "brand_nme"),
        ({"multitask_strategy": "later"}, 422, "multitask_strategy"),
        ({"input": {"messages": [{"role": "user", "content": "   "}]}}, 422, "empty"),
        ({"webhook": "http://x"}, 422, "webhook"),
        ({"command": {"resume": {"type": "accept"}}}, 409, "not waiting for an approval"),
        ({"input": None}, 422, "input"),
    ],
)
async def test_bad_run_requests_are_refused_and_leave_nothing(
    api: Any, body: dict[str, Any], status: int, needle: str
) -> None:
    client, _ = api
    await client.post("/threads", json={"thread_id": "t-1"})
    payload = {
        "assistant_id": "supervisor",
        "input": {"messages": [{"role": "user", "content": "Write a blog post"}]},
    }
    payload.update(body)
    if "command" in body:
        payload.pop("input")
    r = await client.post("/threads/t-1/runs", json=payload)
    assert r.status_code == status, r.text
    assert needle in json.dumps(r.json()["detail"])
    assert (await client.get("/threads/t-1/runs")).json() == []
    # if_not_exists=create does not create a thread for a refused request
    r = await client.post("/threads/t-new/runs", json={**payload, "if_not_exists": "create"})
    assert r.status_code == status
    assert (await client.get("/threads/t-new")).status_code == 404


# --- tenants and roles --------------------------------------------------------------------------
async def test_another_tenant_gets_404_and_a_viewer_cannot_start_runs(api: Any) -> None:
    client, app = api
    as_principal(app, "acme", "editor")
    await client.post("/threads", json={"thread_id": "t-acme", "metadata": {"k": "v"}})
    as_principal(app, "globex", "admin")
    for method, path in [
        ("GET", "/threads/t-acme"),
        ("GET", "/threads/t-acme/state"),
        ("POST", "/threads/t-acme/history"),
        ("GET", "/threads/t-acme/runs"),
        ("PATCH", "/threads/t-acme"),
        ("DELETE", "/threads/t-acme"),
    ]:
        r = await client.request(method, path, json={} if method in ("POST", "PATCH") else None)
        assert r.status_code == 404, (method, path)
    r = await client.post(
        "/threads/t-acme/runs", json={"assistant_id": "supervisor", "input": {"messages": ["hi"]}}
    )
    assert r.status_code == 404
    assert (await client.post("/threads/search", json={})).json() == []
    taken = await client.post("/threads", json={"thread_id": "t-acme", "if_exists": "do_nothing"})
    assert taken.status_code == 409  # never handed over to another tenant
    as_principal(app, "acme", "viewer")
    assert (await client.get("/threads/t-acme")).status_code == 200
    r = await client.post(
        "/threads/t-acme/runs", json={"assistant_id": "supervisor", "input": {"messages": ["hi"]}}
    )
    assert r.status_code == 403
    assert (await client.post("/threads", json={})).status_code == 403


async def test_a_viewer_joins_a_run_but_cannot_cancel_it_by_leaving(api: Any) -> None:
    """`cancel_on_disconnect` on a join (its result or its stream) cancels the run when the
    client leaves: a viewer, who may not cancel, may join but not with it."""
    client, app = api
    as_principal(app, "acme", "editor")
    request = "Research what runners say about carbon-plated trail shoes and write a blog post"
    body = {"assistant_id": "supervisor", "input": {"messages": [request]}}
    run = await client.post("/threads/t-join/runs", json={**body, "if_not_exists": "create"})
    base = f"/threads/t-join/runs/{run.json()['run_id']}"
    as_principal(app, "acme", "viewer")
    for path in (f"{base}/join", f"{base}/stream"):
        denied = await client.get(path, params={"cancel_on_disconnect": "true"})
        assert denied.status_code == 403, path
        assert denied.json() == {"detail": "cancel_on_disconnect needs the editor role"}
    assert (await client.get(f"{base}/join")).status_code == 200
    assert (await client.get(base)).json()["status"] == "success"


# --- one real run through the worker ------------------------------------------------------------
async def test_stream_interrupt_then_resume_over_sse(api: Any) -> None:
    client, _ = api
    await client.post("/threads", json={"thread_id": "t-run"})
    r = await client.post(
        "/threads/t-run/runs/stream",
        json={
            "assistant_id": "supervisor",
            "input": {"messages": [{"role": "user", "content": PUBLISH_REQUEST}]},
            "stream_mode": ["updates"],
            "stream_subgraphs": True,
        },
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    run_id = r.headers["content-location"].rsplit("/", 1)[1]
    assert r.headers["location"] == f"/threads/t-run/runs/{run_id}/stream"
    assert "gzip" not in r.headers.get("content-encoding", "")
    events = sse_events(r.text)
    assert events[0]["event"] == "metadata" and events[0]["data"] == {
        "run_id": run_id,
        "attempt": 1,
    }
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids))
    # the last event says how the run ended (stored with the run's final status)
    assert events[-1]["event"] == "end"
    assert events[-1]["data"] == {"run_id": run_id, "status": "interrupted"}
    assert any(e["event"].startswith("updates|social:") for e in events)
    interrupt = [e for e in events if e["event"] == "updates" and "__interrupt__" in e["data"]]
    assert interrupt, [e["event"] for e in events]
    thread = (await client.get("/threads/t-run")).json()
    assert thread["status"] == "interrupted" and thread["interrupts"]
    state = (await client.get("/threads/t-run/state")).json()
    assert state["interrupts"][0]["value"][0]["action_request"]["action"] == "publish_post"

    # a new request may not skip the approval; a malformed answer is a 422 naming the fix
    r = await client.post(
        "/threads/t-run/runs", json={"assistant_id": "supervisor", "input": {"messages": ["hi"]}}
    )
    assert r.status_code == 409 and "approval" in r.json()["detail"]
    r = await client.post(
        "/threads/t-run/runs",
        json={"assistant_id": "supervisor", "command": {"resume": {"type": "edit"}}},
    )
    assert r.status_code == 422

    r = await client.post(
        "/threads/t-run/runs/wait",
        json={"assistant_id": "supervisor", "command": {"resume": {"type": "accept"}}},
    )
    result = r.json()
    assert "__interrupt__" not in result and result["scheduled"][0]["platform"] == "linkedin"
    assert (await client.get("/threads/t-run")).json()["status"] == "idle"
    runs = (await client.get("/threads/t-run/runs")).json()
    assert [x["status"] for x in runs] == ["success", "interrupted"]
    # each run's usage is its own: the thread's totals less what it had before the run
    db = api[1].state.services.db
    resumed, first = [(await db.get_run(x["run_id"]))["usage"] for x in runs]
    total = (await client.get("/threads/t-run/state")).json()["values"]["usage"]
    assert first and resumed and set(first) | set(resumed) == set(total)
    for agent, u in total.items():
        parts = [r[agent]["calls"] for r in (first, resumed) if agent in r]
        assert sum(parts) == u["calls"], agent
    assert first["supervisor"]["calls"] >= 1 and resumed["supervisor"]["calls"] >= 1
    history = (await client.post("/threads/t-run/history", json={"limit": 100})).json()
    assert (
        history[0]["checkpoint"]["checkpoint_id"]
        == (await client.get("/threads/t-run/state")).json()["checkpoint_id"]
    )
    old = history[-1]["checkpoint"]["checkpoint_id"]
    at = (await client.get(f"/threads/t-run/state/{old}")).json()
    assert at["checkpoint"]["checkpoint_id"] == old

    # replay from the middle: exactly the events after the cursor
    r = await client.get(
        f"/threads/t-run/runs/{run_id}/stream", headers={"Last-Event-ID": str(ids[3])}
    )
    assert [int(e["id"]) for e in sse_events(r.text)] == ids[4:]
    # a finished run cannot be cancelled
    assert (await client.post(f"/threads/t-run/runs/{run_id}/cancel")).status_code == 409


async def test_each_runs_usage_is_its_own_across_approvals(api: Any) -> None:
    """A campaign stops for three approvals (four runs). What the runs record adds up to the
    thread's totals."""
    client, app = api
    await client.post("/threads", json={"thread_id": "t-usage"})
    body: dict[str, Any] = {
        "assistant_id": "supervisor",
        "input": {"messages": [{"role": "user", "content": CAMPAIGN}]},
    }
    for _ in range(10):
        result = (await client.post("/threads/t-usage/runs/wait", json=body)).json()
        if "__interrupt__" not in result:
            break
        body = {"assistant_id": "supervisor", "command": {"resume": {"type": "accept"}}}
    runs = (await client.get("/threads/t-usage/runs")).json()
    assert len(runs) == 4 and {r["status"] for r in runs} == {"success", "interrupted"}
    db = app.state.services.db
    recorded = [(await db.get_run(r["run_id"]))["usage"] for r in runs]
    total = (await client.get("/threads/t-usage/state")).json()["values"]["usage"]
    for agent, u in total.items():
        for field in ("calls", "input_tokens", "output_tokens"):
            parts = sum(r[agent][field] for r in recorded if agent in r)
            assert parts == u[field], (agent, field, [r.get(agent) for r in recorded])


# two small graphs with a `usage` channel, served from their own langgraph.json: `ask` waits
# for an answer (interrupt); in PARALLEL_GRAPH `fast` runs beside it, in ASK_GRAPH before it
USAGE_GRAPH_HEAD = """
from typing import Annotated
from typing_extensions import TypedDict
from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt
from graphs.state import add_usage


def used(agent):
    return {agent: {"calls": 1, "input_tokens": 10, "output_tokens": 5, "cost_usd": 0.0,
                    "models": ["scripted"]}}


class S(TypedDict, total=False):
    usage: Annotated[dict, add_usage]
    answer: str


def ask(state):
    return {"answer": str(interrupt("ok?")), "usage": used("ask")}


builder = StateGraph(S)
builder.add_node("ask", ask)
"""

PARALLEL_GRAPH = (
    USAGE_GRAPH_HEAD
    + """
def fast(state):
    return {"usage": used("fast")}


builder.add_node("fast", fast)
builder.add_edge(START, "fast")
builder.add_edge(START, "ask")
builder.add_edge("fast", END)
builder.add_edge("ask", END)
graph = builder.compile()
"""
)

ASK_GRAPH = (
    USAGE_GRAPH_HEAD
    + """
def first(state):
    return {"usage": used("first")}


builder.add_node("first", first)
builder.add_edge(START, "first")
builder.add_edge("first", "ask")
builder.add_edge("ask", END)
graph = builder.compile()
"""
)


@asynccontextmanager
async def serving_graph(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The API serving only `source` as graph `name` (its own langgraph.json). The module is
    imported afresh: another test's `{name}_graph` (its own `source`) may be in `sys.modules`."""
    monkeypatch.delitem(sys.modules, f"{name}_graph", raising=False)
    (tmp_path / f"{name}_graph.py").write_text(source)
    (tmp_path / "langgraph.json").write_text(
        json.dumps({"graphs": {name: f"./{name}_graph.py:graph"}})
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "langgraph.json"
    async with served(settings.model_copy(update={"langgraph_config": config})) as both:
        yield both


async def test_a_resumed_runs_usage_leaves_out_tasks_that_finished_before_it(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks in one step: one finishes, the other stops for approval. The finished task's
    output is saved on the checkpoint as a pending write; the resumed run must not count its
    usage again (its base is the thread's live state, pending writes applied)."""
    serving = serving_graph(settings, tmp_path, monkeypatch, "parallel", PARALLEL_GRAPH)
    async with serving as (client, app):
        made = await client.post("/threads", json={"thread_id": "t-par", "graph_id": "parallel"})
        assert made.status_code == 200, made.text
        first = await client.post(
            "/threads/t-par/runs/wait", json={"assistant_id": "parallel", "input": {}}
        )
        assert "__interrupt__" in first.json()
        resume = {"assistant_id": "parallel", "command": {"resume": "yes"}}
        done = (await client.post("/threads/t-par/runs/wait", json=resume)).json()
        assert done["answer"] == "yes" and set(done["usage"]) == {"fast", "ask"}
        second, first_run = (await client.get("/threads/t-par/runs")).json()
        db = app.state.services.db
        assert set((await db.get_run(first_run["run_id"]))["usage"]) == {"fast"}
        assert set((await db.get_run(second["run_id"]))["usage"]) == {"ask"}


@pytest.fixture
async def ask_api(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with serving_graph(settings, tmp_path, monkeypatch, "ask", ASK_GRAPH) as both:
        yield both


async def test_a_run_stopped_by_interrupt_is_interrupted_even_with_hidden_tasks(
    ask_api: Any,
) -> None:
    """A client's `config.tags` reach every task; `langsmith:hidden` makes LangGraph drop the
    task's `__interrupt__` update (`PregelLoop.output_writes`), so the stream never says the
    run stopped on an interrupt. The thread is interrupted all the same."""
    client, _ = ask_api
    made = await client.post("/threads", json={"thread_id": "t-h", "graph_id": "ask"})
    assert made.status_code == 200, made.text
    body = {"assistant_id": "ask", "input": {}, "config": {"tags": ["langsmith:hidden"]}}
    r = await client.post("/threads/t-h/runs/wait", json=body)
    assert r.status_code == 200, r.text
    state = (await client.get("/threads/t-h/state")).json()
    assert state["next"] == ["ask"] and state["interrupts"]  # the graph did stop
    assert (await client.get("/threads/t-h/runs")).json()[0]["status"] == "interrupted"
    assert (await client.get("/threads/t-h")).json()["status"] == "interrupted"


async def test_a_fork_records_the_usage_it_added(ask_api: Any) -> None:
    """A run from an older checkpoint (`checkpoint_id`) adds to that checkpoint's totals, not to
    the head's: it records what it added (here one `first` call), never a negative."""
    client, app = ask_api
    await client.post("/threads", json={"thread_id": "t-f", "graph_id": "ask"})
    body: dict[str, Any] = {"assistant_id": "ask", "input": {}}
    await client.post("/threads/t-f/runs/wait", json=body)  # stops at ask: first=1
    await client.post(
        "/threads/t-f/runs/wait", json={"assistant_id": "ask", "command": {"resume": "y"}}
    )  # first=1, ask=1
    history = (await client.get("/threads/t-f/history")).json()
    start = history[-1]["checkpoint"]["checkpoint_id"]  # the empty state before anything ran
    fork = await client.post("/threads/t-f/runs/wait", json={**body, "checkpoint_id": start})
    assert fork.status_code == 200, fork.text
    run = (await client.get("/threads/t-f/runs")).json()[0]
    usage = (await app.state.services.db.get_run(run["run_id"]))["usage"]
    assert usage == {
        "first": {
            "calls": 1,
            "input_tokens": 10,
            "output_tokens": 5,
            "cost_usd": 0.0,
            "models": ["scripted"],
        }
    }, usage


async def test_a_run_from_an_earlier_checkpoint_is_checked_against_that_checkpoint(
    ask_api: Any,
) -> None:
    """`checkpoint_id` names where the run starts, so that is what a resume answers: an approval
    pending at an earlier checkpoint can be answered there (Studio's fork) though the head waits
    for none, and a checkpoint the thread does not have is a 404."""
    client, _ = ask_api
    await client.post("/threads", json={"thread_id": "t-fr", "graph_id": "ask"})
    await client.post("/threads/t-fr/runs/wait", json={"assistant_id": "ask", "input": {}})
    asked = (await client.get("/threads/t-fr/state")).json()
    assert asked["interrupts"], asked
    start = (await client.get("/threads/t-fr/history")).json()[-1]["checkpoint"]
    # another branch from the start, stopped by a breakpoint before `ask`: no approval pending
    branch = {"assistant_id": "ask", "input": {}, "interrupt_before": ["ask"]}
    branch["checkpoint_id"] = start["checkpoint_id"]
    assert (await client.post("/threads/t-fr/runs/wait", json=branch)).status_code == 200
    head = (await client.get("/threads/t-fr/state")).json()
    assert head["next"] == ["ask"] and not head["interrupts"], head
    resume: dict[str, Any] = {"assistant_id": "ask", "command": {"resume": "an answer"}}
    at_head = await client.post("/threads/t-fr/runs/wait", json=resume)
    assert at_head.status_code == 409, at_head.text  # nothing waits at the head
    at_ask = {**resume, "checkpoint_id": asked["checkpoint"]["checkpoint_id"]}
    answered = await client.post("/threads/t-fr/runs/wait", json=at_ask)
    assert answered.status_code == 200, answered.text
    assert answered.json()["answer"] == "an answer", answered.text
    unknown = {"assistant_id": "ask", "input": {}}
    unknown["checkpoint_id"] = "1f0000aa-0000-6000-8000-000000000000"
    for path in ("/threads/t-fr/runs", "/runs/wait"):
        missing = await client.post(path, json=unknown)
        assert missing.status_code == 404, missing.text
        assert "checkpoint" in missing.json()["detail"], missing.text
    assert len((await client.get("/threads/t-fr/runs")).json()) == 3  # nothing more was queued


async def test_interrupt_after_the_last_node_leaves_a_finished_thread_idle(ask_api: Any) -> None:
    """`interrupt_after` the node that ends the graph raises its GraphInterrupt after the last
    step (an `__interrupt__` update), but nothing is left to run: `next` is empty, there is no
    interrupt to answer, so the thread is idle and the run a success (as a state read says, and
    as the worker said before)."""
    client, _ = ask_api
    await client.post("/threads", json={"thread_id": "t-ia", "graph_id": "ask"})
    await client.post("/threads/t-ia/runs/wait", json={"assistant_id": "ask", "input": {}})
    resume = {"assistant_id": "ask", "command": {"resume": "y"}, "interrupt_after": ["ask"]}
    done = await client.post("/threads/t-ia/runs/wait", json=resume)
    assert done.status_code == 200, done.text
    state = (await client.get("/threads/t-ia/state")).json()
    assert state["next"] == [] and state["interrupts"] == []  # the graph is done
    assert (await client.get("/threads/t-ia")).json()["status"] == "idle"
    assert (await client.get("/threads/t-ia/runs")).json()[0]["status"] == "success"


HELD_GRAPH = (
    USAGE_GRAPH_HEAD
    + """
import asyncio
import gc
import os

HOLD = __HOLD__


def first(state):
    return {"usage": used("first")}


def held(name):
    async def node(state):  # waits while the file named after it exists
        while os.path.exists(os.path.join(HOLD, name)):
            await asyncio.sleep(0.01)
        return {"usage": used(name)}

    return node


builder.add_node("first", first)
builder.add_node("slow", held("slow"))
builder.add_node("after", held("after"))
builder.add_edge(START, "first")
builder.add_edge("first", "slow")
builder.add_edge("slow", "ask")
builder.add_edge("ask", "after")
builder.add_edge("after", END)
graph = builder.compile()
"""
)


async def wait_for_usage(client: httpx.AsyncClient, thread_id: str, agent: str) -> None:
    for _ in range(500):
        state = (await client.get(f"/threads/{thread_id}/state")).json()
        if agent in (state["values"] or {}).get("usage", {}):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{agent} never ran on {thread_id}")


async def test_a_later_attempt_records_everything_the_run_added(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped part-way (here by a shutdown; a crash is the same) is taken up by a new
    attempt, which continues from the run's last checkpoint. The head it finds already holds what
    the first attempt added; the run still records everything it added, from the usage before
    its first attempt: on a new thread (known when the run was created) and on a resume (read by
    the first attempt and kept for the next)."""
    hold = tmp_path / "hold"
    hold.mkdir()
    source = HELD_GRAPH.replace("__HOLD__", repr(str(hold)))
    quick = settings.model_copy(update={"shutdown_grace_s": 0.1})

    def server() -> Any:
        return serving_graph(quick, tmp_path, monkeypatch, "held", source)

    async def finished(client: httpx.AsyncClient, app: Any, run_id: str) -> dict[str, Any]:
        joined = await client.get(f"/threads/t-held/runs/{run_id}/join")
        assert joined.status_code == 200, joined.text
        row = await app.state.services.db.get_run(run_id)
        assert row is not None
        return row

    (hold / "slow").touch()
    async with server() as (client, _):
        await client.post("/threads", json={"thread_id": "t-held", "graph_id": "held"})
        body = {"assistant_id": "held", "input": {}}
        first = (await client.post("/threads/t-held/runs", json=body)).json()["run_id"]
        await wait_for_usage(client, "t-held", "first")  # checkpointed; `slow` waits
    (hold / "slow").unlink()
    (hold / "after").touch()
    async with server() as (client, app):
        row = await finished(client, app, first)  # attempt 2: slow, then ask stops it
        assert (row["attempt"], row["status"]) == (2, "interrupted")
        assert sorted(row["usage"]) == ["first", "slow"], row["usage"]
        resume = {"assistant_id": "held", "command": {"resume": "yes"}}
        second = (await client.post("/threads/t-held/runs", json=resume)).json()["run_id"]
        await wait_for_usage(client, "t-held", "ask")  # checkpointed; `after` waits
    (hold / "after").unlink()
    async with server() as (client, app):
        row = await finished(client, app, second)
        assert (row["attempt"], row["status"]) == (2, "success")
        assert sorted(row["usage"]) == ["after", "ask"], row["usage"]
        assert all(u["calls"] == 1 for u in row["usage"].values())
        kwargs = (await client.get(f"/threads/t-held/runs/{second}")).json()["kwargs"]
        assert "usage_base" not in kwargs  # the server's own bookkeeping, not shown
        history = (await client.get("/threads/t-held/history")).json()
        start = history[-1]["checkpoint"]["checkpoint_id"]  # before anything ran
        fork = {**body, "checkpoint_id": start}
        (hold / "slow").touch()
        third = (await client.post("/threads/t-held/runs", json=fork)).json()["run_id"]
        for _ in range(500):  # the fork's `first` is checkpointed: `slow` waits
            if (await client.get("/threads/t-held/state")).json()["next"] == ["slow"]:
                break
            await asyncio.sleep(0.01)
    (hold / "slow").unlink()
    async with server() as (client, app):
        row = await finished(client, app, third)  # a fork's later attempt: from its checkpoint
        assert (row["attempt"], row["status"]) == (2, "interrupted")
        assert sorted(row["usage"]) == ["first", "slow"], row["usage"]


async def test_a_cancelled_run_records_what_its_finished_steps_added(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cancelled part-way keeps what it checkpointed (`action=interrupt`) and records what
    that added, as a finished run would; a rolled-back run is deleted with its checkpoints, but
    the tokens it spent were spent: /metrics counts both."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "slow").touch()  # `first` runs, `slow` waits
    source = HELD_GRAPH.replace("__HOLD__", repr(str(hold)))
    metrics.reset()  # (a graph name of its own: a module imported by another test is cached)
    async with serving_graph(settings, tmp_path, monkeypatch, "held_c", source) as (client, app):
        for thread_id, action in (("t-ci", "interrupt"), ("t-cr", "rollback")):
            await client.post("/threads", json={"thread_id": thread_id, "graph_id": "held_c"})
            body = {"assistant_id": "held_c", "input": {}}
            run_id = (await client.post(f"/threads/{thread_id}/runs", json=body)).json()["run_id"]
            await wait_for_usage(client, thread_id, "first")
            cancel = await client.post(
                f"/threads/{thread_id}/runs/{run_id}/cancel",
                params={"action": action, "wait": True},
            )
            assert cancel.status_code == 204, cancel.text
            row = await app.state.services.db.get_run(run_id)
            if action == "interrupt":
                assert row is not None and row["status"] == "interrupted"
                assert sorted(row["usage"]) == ["first"], row["usage"]
                assert row["usage"]["first"]["input_tokens"] == 10
            else:
                assert row is None
    lines = metrics.render()[0].decode().splitlines()
    assert 'mkt_tokens_total{agent="first",direction="input"} 20.0' in lines
    assert not any('agent="slow"' in line for line in lines)


async def test_a_queued_run_that_is_cancelled_ends_its_stream_with_end(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run cancelled while it waits in the queue — by `POST .../cancel`, or by a later run's
    `multitask_strategy=interrupt` — is `interrupted`, and its stream ends with `event: end`
    `{"run_id", "status"}` as every run that finishes or is cancelled does (the SDK learns from
    it that the run is over)."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "slow").touch()  # the thread's first run waits in `slow`: the next ones queue
    source = HELD_GRAPH.replace("__HOLD__", repr(str(hold)))
    async with serving_graph(settings, tmp_path, monkeypatch, "held_q", source) as (client, _):
        await client.post("/threads", json={"thread_id": "t-q", "graph_id": "held_q"})
        body = {"assistant_id": "held_q", "input": {}}
        running = (await client.post("/threads/t-q/runs", json=body)).json()["run_id"]
        await wait_for_usage(client, "t-q", "first")
        queued = [
            (await client.post("/threads/t-q/runs", json=body)).json()["run_id"] for _ in range(2)
        ]
        cancel = await client.post(f"/threads/t-q/runs/{queued[0]}/cancel")
        assert cancel.status_code == 202, cancel.text
        later = await client.post(
            "/threads/t-q/runs", json={**body, "multitask_strategy": "interrupt"}
        )
        assert later.status_code == 200, later.text
        for run_id in (*queued, running):
            run = (await client.get(f"/threads/t-q/runs/{run_id}")).json()
            assert run["status"] == "interrupted", run
            events = sse_events((await client.get(f"/threads/t-q/runs/{run_id}/stream")).text)
            assert events[0]["event"] == "metadata"
            assert events[-1]["event"] == "end", [e["event"] for e in events]
            assert events[-1]["data"] == {"run_id": run_id, "status": "interrupted"}
        (hold / "slow").unlink()
        joined = await client.get(f"/threads/t-q/runs/{later.json()['run_id']}/join")
        assert "__interrupt__" in joined.json()


@pytest.mark.parametrize("action", ["interrupt", "rollback"])
async def test_cancelling_a_run_released_to_the_queue_settles_its_thread(
    settings: Settings, action: str
) -> None:
    from tests.helpers import check_cancel_of_a_released_run

    await check_cancel_of_a_released_run(settings, action)


async def test_wait_and_join_stream_their_answer_and_keep_the_connection_alive(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/runs/wait` and `/join` answer with the run's headers (`Location`: its `/join`,
    `Content-Location`: the run), a newline every `SSE_HEARTBEAT_S` while the run goes on, then
    the result JSON — the same bytes as before, after the whitespace, which JSON parsers skip.
    What is known to be wrong before the run exists is still a status code with the JSON error."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "slow").touch()
    source = HELD_GRAPH.replace("__HOLD__", repr(str(hold)))
    quick = settings.model_copy(update={"sse_heartbeat_s": 0.2})  # at least 1 s is used
    async with serving_graph(quick, tmp_path, monkeypatch, "held_w", source) as (client, app):
        await client.post("/threads", json={"thread_id": "t-w", "graph_id": "held_w"})
        body = {"assistant_id": "held_w", "input": {}}
        waiting = asyncio.create_task(client.post("/threads/t-w/runs/wait", json=body))
        await wait_for_usage(client, "t-w", "first")
        (run,) = (await client.get("/threads/t-w/runs")).json()
        joining = asyncio.create_task(client.get(f"/threads/t-w/runs/{run['run_id']}/join"))
        busy = await client.post(
            "/threads/t-w/runs/wait", json={**body, "multitask_strategy": "reject"}
        )
        assert busy.status_code == 409 and "in progress" in busy.json()["detail"]
        await asyncio.sleep(2.3)  # two keep-alives
        (hold / "slow").unlink()
        waited, joined = await waiting, await joining
        base = f"/threads/t-w/runs/{run['run_id']}"
        for r in (waited, joined):
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/json"
            assert (r.headers["location"], r.headers["content-location"]) == (f"{base}/join", base)
            assert r.content.startswith(b"\n\n") and r.content.strip()[:1] == b"{"
        result = waited.json()
        assert "__interrupt__" in result and joined.json() == result
        assert (
            waited.content.lstrip()
            == json.dumps(result, ensure_ascii=False, separators=(",", ":")).encode()
        )
        # refused before any run exists: a status code and the JSON error, no stream
        missing = await client.post("/threads/nope/runs/wait", json=body)
        assert missing.status_code == 404 and "nope" in missing.json()["detail"]
        bad = await client.post("/runs/wait", json={**body, "webhook": "http://hook"})
        assert bad.status_code == 422 and "detail" in bad.json()
        unknown = await client.get("/threads/t-w/runs/nope/join")
        assert unknown.status_code == 404 and "detail" in unknown.json()
        assert app.state.services.executor.active == 0


@pytest.mark.parametrize("shutting_down", [False, True])
async def test_a_wait_cut_by_the_servers_shutdown_leaves_its_run_to_the_shutdown(
    monkeypatch: pytest.MonkeyPatch, shutting_down: bool
) -> None:
    """A `wait` with `on_disconnect=cancel` whose answer is cut (its task cancelled): by its
    client going away, the run is cancelled; by the server shutting down (uvicorn cancels what
    is left at its graceful timeout), it is not — the shutdown finishes it in its grace period
    or releases it to the next server (it used to be cancelled, ending `interrupted`)."""
    from sse_starlette.sse import AppStatus

    from app.server import streaming

    cancelled: list[str] = []

    class Executor:
        async def wait_until_done(self, run_id: str) -> None:
            await asyncio.Event().wait()  # the run goes on

        async def cancel(self, run: dict[str, Any], action: str) -> None:
            cancelled.append(action)

    svc: Any = type("Svc", (), {"executor": Executor(), "settings": Settings()})()
    monkeypatch.setattr(AppStatus, "should_exit", shutting_down)

    async def result() -> Any:
        raise AssertionError("the run has no result yet")

    response = streaming.wait_response(
        svc, {"run_id": "r", "thread_id": "t"}, result, cancel_on_disconnect=True
    )
    sending = asyncio.create_task(response.body_iterator.__anext__())
    await asyncio.sleep(0.05)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await asyncio.gather(*streaming._background)
    assert cancelled == ([] if shutting_down else ["interrupt"])


FAILING_GRAPH = (
    USAGE_GRAPH_HEAD
    + """
import os

FAIL = __FAIL__


def first(state):
    return {"usage": used("first")}


def boom(state):
    if os.path.exists(FAIL):
        raise RuntimeError("boom failed")
    return {"usage": used("boom")}


builder.add_node("first", first)
builder.add_node("boom", boom)
builder.add_edge(START, "first")
builder.add_edge("first", "boom")
builder.add_edge("boom", END)
graph = builder.compile()
"""
)


def used(calls: int) -> dict[str, Any]:
    """The usage of `calls` calls of a node of the graphs above."""
    return {
        "calls": calls,
        "input_tokens": 10 * calls,
        "output_tokens": 5 * calls,
        "cost_usd": 0.0,
        "models": ["scripted"],
    }


async def test_a_failed_run_records_what_its_finished_steps_added(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails part-way records (and /metrics counts) what its finished steps added to
    the thread. A run from an earlier checkpoint without input (`checkpoint_id`, `input: null`:
    Studio's re-run from here) replays from there; when it fails in its first step it saved
    nothing (the head it leaves is the other branch's, whose usage is not the fork's)."""
    fail = tmp_path / "fail"
    source = FAILING_GRAPH.replace("__FAIL__", repr(str(fail)))
    metrics.reset()
    async with serving_graph(settings, tmp_path, monkeypatch, "failing", source) as (client, app):
        db = app.state.services.db
        await client.post("/threads", json={"thread_id": "t-e", "graph_id": "failing"})
        body: dict[str, Any] = {"assistant_id": "failing", "input": {}}
        fail.touch()
        failed = (await client.post("/threads/t-e/runs/wait", json=body)).json()
        assert "boom failed" in failed["__error__"]["message"], failed
        (run,) = (await client.get("/threads/t-e/runs")).json()
        row = await db.get_run(run["run_id"])
        assert row["status"] == "error" and sorted(row["usage"]) == ["first"], row
        assert (await client.get("/threads/t-e")).json()["status"] == "error"

        fail.unlink()  # a run that goes through: first=2, boom=1 at the head
        await client.post("/threads/t-e/runs/wait", json=body)
        history = (await client.get("/threads/t-e/history")).json()
        # where the failed run stopped (the second run's step there saved boom's output)
        at_boom = [h for h in history if h["next"] == ["boom"]][-1]
        fail.touch()
        fork = {
            "assistant_id": "failing",
            "input": None,
            "checkpoint_id": at_boom["checkpoint"]["checkpoint_id"],
        }
        await client.post("/threads/t-e/runs/wait", json=fork)
        latest = (await client.get("/threads/t-e/runs")).json()[0]
        row = await db.get_run(latest["run_id"])
        assert row["status"] == "error" and row["usage"] == {}, row

        fail.unlink()  # replayed from there once more, boom goes through: a branch of its own
        replayed = (await client.post("/threads/t-e/runs/wait", json=fork)).json()
        assert replayed["usage"] == {"first": used(1), "boom": used(1)}, replayed
        latest = (await client.get("/threads/t-e/runs")).json()[0]
        row = await db.get_run(latest["run_id"])
        assert row["status"] == "success" and row["usage"] == {"boom": used(1)}, row
        parent = {
            h["checkpoint"]["checkpoint_id"]: (h["parent_checkpoint"] or {}).get("checkpoint_id")
            for h in (await client.get("/threads/t-e/history")).json()
        }
        branch = [(await client.get("/threads/t-e/state")).json()["checkpoint"]["checkpoint_id"]]
        while parent.get(branch[-1]):
            branch.append(parent[branch[-1]])
        assert fork["checkpoint_id"] in branch  # the head grew from the replayed checkpoint
    lines = metrics.render()[0].decode().splitlines()
    assert 'mkt_tokens_total{agent="first",direction="input"} 20.0' in lines
    assert 'mkt_tokens_total{agent="boom",direction="input"} 20.0' in lines


@pytest.mark.parametrize(
    "breakpoint", [{"interrupt_before": ["ask"]}, {"interrupt_after": ["first"]}]
)
async def test_a_later_attempt_of_a_run_that_stopped_at_its_breakpoint_stops_there(
    ask_api: Any, breakpoint: dict[str, Any]
) -> None:
    """The process went away after the graph stopped at the run's breakpoint, before the run was
    recorded: a new attempt finds the run's own checkpoint there. Continuing would run past the
    breakpoint (LangGraph does not stop twice at one); the run ends at it instead."""
    client, app = ask_api
    svc = app.state.services
    await client.post("/threads", json={"thread_id": "t-bp", "graph_id": "ask"})
    body = {"assistant_id": "ask", "input": {}, **breakpoint}
    first = await client.post("/threads/t-bp/runs/wait", json=body)
    assert first.status_code == 200, first.text
    run_id = first.headers["content-location"].rsplit("/", 1)[1]
    assert (await svc.db.get_run(run_id))["status"] == "interrupted"
    # as if the worker died right after the graph stopped: the run is taken up again
    await svc.db._b.execute(
        "UPDATE runs SET status = 'pending', lease_owner = NULL, ended_at = NULL WHERE run_id = ?",
        (run_id,),
    )
    await svc.db.update_thread("t-bp", status="busy")
    svc.executor.wake()
    joined = await client.get(f"/threads/t-bp/runs/{run_id}/join")
    assert joined.status_code == 200, joined.text
    row = await svc.db.get_run(run_id)
    assert (row["attempt"], row["status"]) == (2, "interrupted")
    state = (await client.get("/threads/t-bp/state")).json()
    assert state["next"] == ["ask"] and state["interrupts"] == []  # `ask` never ran
    assert sorted(row["usage"]) == ["first"]
    assert (await client.get("/threads/t-bp")).json()["status"] == "interrupted"


RESEARCH_REQUEST = "Research what runners say about carbon-plated trail shoes"


async def test_a_run_starts_from_the_state_its_creation_read_only_if_nothing_changed(
    api: Any,
) -> None:
    """A run records the usage it added: the thread's totals after it less those before it.
    Its creation already read the state; the worker uses that read instead of reading again only
    if, at the claim, the thread is still at that checkpoint with nothing pending. Two turns
    queued on a new thread were both created before any state existed: the second starts after
    the first ran, so it must not take the empty state as its start. A third turn on the idle
    thread does start from what its creation read: the totals so far."""
    client, app = api
    svc = app.state.services
    await client.post("/threads", json={"thread_id": "t-q"})
    body: dict[str, Any] = {
        "assistant_id": "supervisor",
        "input": {"messages": [{"role": "user", "content": RESEARCH_REQUEST}]},
        "multitask_strategy": "enqueue",
    }
    claim = svc.executor.claim

    async def nothing_yet() -> None:  # nothing is claimed until both are queued
        return None

    svc.executor.claim = nothing_yet
    queued = [(await client.post("/threads/t-q/runs", json=body)).json() for _ in range(2)]
    svc.executor.claim = claim
    svc.executor.wake()
    for run in queued:
        joined = await client.get(f"/threads/t-q/runs/{run['run_id']}/join")
        assert joined.status_code == 200, joined.text
    third = await client.post("/threads/t-q/runs/wait", json=body)
    assert third.status_code == 200, third.text
    runs = (await client.get("/threads/t-q/runs")).json()[::-1]  # oldest first
    assert [r["status"] for r in runs] == ["success"] * 3
    assert "created_from" not in runs[0]["kwargs"]  # the server's own, not shown
    rows = [await svc.db.get_run(r["run_id"]) for r in runs]
    # the situations meant: run 2 was created at the start, claimed after run 1; run 3 found the
    # thread where its creation read it
    created = [r["kwargs"]["created_from"]["checkpoint_id"] for r in rows]
    started = [r["before_checkpoint_id"] for r in rows]
    assert created[:2] == ["", ""] and started[0] == "" and started[1] != ""
    assert created[2] == started[2] != ""
    total = (await client.get("/threads/t-q/state")).json()["values"]["usage"]
    for row in rows:
        assert row["usage"]["research"]["calls"] >= 1, row["usage"]
    for agent, u in total.items():
        for name in ("calls", "input_tokens", "output_tokens"):
            parts = [r["usage"][agent][name] for r in rows if agent in r["usage"]]
            assert sum(parts) == u[name], (agent, name, parts)


async def test_interrupt_before_a_node_stops_the_run_and_a_run_without_input_goes_on(
    api: Any,
) -> None:
    """`interrupt_before` stops the run before the node: the run and the thread are
    `interrupted` (no interrupt value: nothing to answer), the state's `next` is that node, and
    a run with no input continues the thread to its end."""
    client, _ = api
    await client.post("/threads", json={"thread_id": "t-ib"})
    body = {
        "assistant_id": "supervisor",
        "input": {"messages": [{"role": "user", "content": RESEARCH_REQUEST}]},
        "interrupt_before": ["research"],
    }
    stopped = await client.post("/threads/t-ib/runs/wait", json=body)
    assert stopped.status_code == 200, stopped.text
    assert (await client.get("/threads/t-ib")).json()["status"] == "interrupted"
    assert (await client.get("/threads/t-ib/runs")).json()[0]["status"] == "interrupted"
    state = (await client.get("/threads/t-ib/state")).json()
    assert state["next"] == ["research"] and state["interrupts"] == []
    done = await client.post("/threads/t-ib/runs/wait", json={"assistant_id": "supervisor"})
    assert done.status_code == 200, done.text
    assert (await client.get("/threads/t-ib")).json()["status"] == "idle"
    assert (await client.get("/threads/t-ib/state")).json()["next"] == []
    assert done.json()["brief"], "the research ran on the second run"


async def test_state_update_as_node_and_unknown_node(api: Any) -> None:
    client, _ = api
    await client.post("/threads", json={"thread_id": "t-s"})
    r = await client.post("/threads/t-s/state", json={"values": {"brief": None}, "as_node": "nope"})
    assert r.status_code == 422 and "as_node" in r.json()["detail"]
    r = await client.post(
        "/threads/t-s/state",
        json={"values": {"messages": [{"role": "user", "content": "hello"}]}, "as_node": "answer"},
    )
    assert r.status_code == 200 and r.json()["checkpoint"]["checkpoint_id"]
    state = (await client.get("/threads/t-s/state")).json()
    assert state["values"]["messages"][0]["content"] == "hello"
    assert state["metadata"]["source"] == "update"


async def test_chat_endpoint_refuses_bad_input_without_side_effects(api: Any) -> None:
    client, _ = api
    r = await client.post("/chat", json={"message": "   ", "thread_id": "c-1"})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert (await client.get("/threads/c-1")).status_code == 404
    r = await client.post("/chat/c-1/approval", json={"answer": {"type": "accept"}})
    assert r.status_code == 404
    r = await client.post("/chat", json={"message": "hi", "context": {"timezone": "Mars/Base"}})
    assert r.status_code == 422 and "timezone" in r.json()["detail"]


async def test_shutdown_releases_unfinished_runs_to_the_queue(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run still going when the grace period ends goes back to `pending` (no owner, no lease)
    and its thread stays `busy` until the next server resumes it."""
    async with served(
        settings.model_copy(update={"shutdown_grace_s": 0.1, "scripted_latency_ms": 500})
    ) as (client, app):
        await client.post("/threads", json={"thread_id": "t-long"})
        run = (
            await client.post(
                "/threads/t-long/runs",
                json={
                    "assistant_id": "supervisor",
                    "input": {"messages": ["Write a blog post"]},
                },
            )
        ).json()
        svc = app.state.services
        for _ in range(100):
            if (await svc.db.get_run(run["run_id"]))["status"] == "running":
                break
            await asyncio.sleep(0.02)
    from app.db import open_sqlite_db

    db, conn = await open_sqlite_db(settings.sqlite_path)
    try:
        row = await db.get_run(run["run_id"])
        assert row is not None
        assert row["status"] == "pending" and row["lease_owner"] is None and row["attempt"] == 1
        thread = await db.get_thread("t-long")
        assert thread is not None and thread["status"] == "busy"
    finally:
        await conn.close()


async def test_requests_during_a_shutdown_get_503_with_retry_after(api: Any) -> None:
    """As the server shuts down (the lifespan first stops taking runs, then drops its services)
    a request gets 503 saying so, with `Retry-After` (it used to say the server was starting
    up, and neither 503 said when to retry)."""
    client, app = api
    await client.post("/threads", json={"thread_id": "t-stop"})
    body = {"assistant_id": "supervisor", "input": {"messages": ["Write a blog post"]}}
    svc = app.state.services
    svc.executor.accepting = False
    try:
        refused = await client.post("/threads/t-stop/runs", json=body)
        assert refused.status_code == 503 and "shutting down" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"
        app.state.services = None
        gone = await client.get("/threads/t-stop")
        assert gone.status_code == 503 and "shutting down" in gone.json()["detail"]
        assert gone.headers["retry-after"] == "1"
    finally:
        app.state.services = svc
        svc.executor.accepting = True


# --- stateless runs: their thread goes when the run is over, unless on_completion=keep ----------
async def test_stateless_runs_delete_their_thread_unless_asked_to_keep_it(api: Any) -> None:
    client, app = api
    body = {
        "assistant_id": "supervisor",
        "input": {
            "messages": [{"role": "user", "content": "Write a LinkedIn post about TerraRun"}]
        },
    }
    r = await client.post("/runs/wait", json=body)
    assert r.status_code == 200 and r.json()["messages"][-1]["type"] == "ai"  # the result first
    gone = r.headers["content-location"].split("/")[2]
    assert (await client.get(f"/threads/{gone}")).status_code == 404
    assert not await app.state.services.registry.checkpointer.aget_tuple(
        {"configurable": {"thread_id": gone, "checkpoint_ns": ""}}
    )

    r = await client.post("/runs/wait", json={**body, "on_completion": "keep"})
    kept = r.headers["content-location"].split("/")[2]
    thread = (await client.get(f"/threads/{kept}")).json()
    assert thread["metadata"]["stateless"] and thread["metadata"]["on_completion"] == "keep"
    assert thread["values"]["messages"][-1]["type"] == "ai"

    r = await client.post("/runs/stream", json={**body, "stream_mode": ["updates"]})
    events = sse_events(r.text)
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "success"
    streamed = r.headers["content-location"].split("/")[2]
    for _ in range(100):  # deleted just after the stream delivered the end
        if (await client.get(f"/threads/{streamed}")).status_code == 404:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the stateless thread outlived its streamed run")


async def test_stateless_threads_whose_client_went_away_go_after_a_grace_period(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = api
    svc = app.state.services
    body = {
        "assistant_id": "supervisor",
        "input": {
            "messages": [{"role": "user", "content": "Write a LinkedIn post about TerraRun"}]
        },
    }
    # a background run on a stateless-like thread nobody will collect: as left by a client that
    # disconnected from its stateless stream
    _, created = await svc.db.create_thread(
        "orphan",
        tenant="default",
        metadata={"graph_id": "supervisor", "stateless": True, "on_completion": "delete"},
        graph_id="supervisor",
    )
    await svc.db.create_thread(
        "kept",
        tenant="default",
        metadata={"stateless": True, "on_completion": "keep"},
        graph_id="supervisor",
    )
    assert created
    r = await client.post("/threads/orphan/runs/wait", json=body)
    assert r.status_code == 200
    assert (await client.get("/threads/orphan")).status_code == 200  # not a stateless call
    assert await svc.executor.erase_abandoned() == 0  # within STATELESS_THREAD_GRACE_S (300 s)
    assert (await client.get("/threads/orphan")).status_code == 200
    past = svc.executor.settings.model_copy(update={"stateless_thread_grace_s": 0.0})
    monkeypatch.setattr(svc.executor, "settings", past)  # the grace is over now
    assert await svc.executor.erase_abandoned() == 1
    assert (await client.get("/threads/orphan")).status_code == 404
    assert (await client.get("/threads/kept")).status_code == 200


# --- rollback: the thread is exactly as before the run, pending approval included -------------
async def test_rollback_of_a_resume_restores_the_pending_approval(tmp_path: Path) -> None:
    # slow model calls keep the resumed run busy long enough to cancel it mid-way
    settings = Settings(model_provider="scripted", data_dir=tmp_path / "d", scripted_latency_ms=300)
    async with served(settings) as (client, app):
        await client.post("/threads", json={"thread_id": "t-rb"})
        body = {
            "assistant_id": "supervisor",
            "input": {"messages": [{"role": "user", "content": PUBLISH_REQUEST}]},
        }
        assert "__interrupt__" in (await client.post("/threads/t-rb/runs/wait", json=body)).json()
        before = (await client.get("/threads/t-rb/state")).json()
        assert before["interrupts"] and before["next"]
        (first,) = (await client.get("/threads/t-rb/runs")).json()
        db = app.state.services.db  # where each run started is recorded as it starts
        assert (await db.get_run(first["run_id"]))["before_checkpoint_id"] == ""  # new thread

        run = (
            await client.post(
                "/threads/t-rb/runs",
                json={"assistant_id": "supervisor", "command": {"resume": {"type": "accept"}}},
            )
        ).json()
        for _ in range(200):  # the resumed run has checkpointed past the approval
            state = (await client.get("/threads/t-rb/state")).json()
            if state["checkpoint"]["checkpoint_id"] != before["checkpoint"]["checkpoint_id"]:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the resumed run never checkpointed")
        started_at = (await db.get_run(run["run_id"]))["before_checkpoint_id"]
        assert started_at == before["checkpoint"]["checkpoint_id"]  # the head it resumed
        r = await client.post(
            f"/threads/t-rb/runs/{run['run_id']}/cancel",
            params={"action": "rollback", "wait": True},
        )
        assert r.status_code == 204
        after = (await client.get("/threads/t-rb/state")).json()
        assert after["checkpoint"] == before["checkpoint"]  # the very same head, not a copy
        assert after["values"] == before["values"] and after["next"] == before["next"]
        assert after["interrupts"] == before["interrupts"]
        assert (await client.get("/threads/t-rb")).json()["status"] == "interrupted"
        assert (await client.get(f"/threads/t-rb/runs/{run['run_id']}")).status_code == 404


async def test_a_served_app_exempts_its_startup_heap_from_garbage_collection(
    settings: Settings,
) -> None:
    """`mkt serve` freezes the heap once started (`app.server.heap`): a full collection then walks
    only what was allocated since, not the million start-up objects (100–180 ms pauses in which
    no stream moved). Apps that tests create again and again do not freeze theirs."""
    gc.unfreeze()
    try:
        plain = create_app(settings)
        async with plain.router.lifespan_context(plain):
            assert gc.get_freeze_count() == 0
        frozen_app = create_app(settings, freeze_heap=True)
        async with frozen_app.router.lifespan_context(frozen_app):
            frozen = gc.get_freeze_count()
            assert frozen > 100_000  # modules, graphs, schemas
            # runs execute in this process (SQLite): once the first has ended, what it loaded
            # for good (modules imported on first use, caches) is frozen too, once
            transport = httpx.ASGITransport(app=frozen_app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                body = {"assistant_id": "supervisor", "input": {"messages": ["Write a blog post"]}}
                for _ in range(2):
                    done = await client.post("/runs/wait", json=body)
                    assert done.status_code == 200, done.text
                    assert frozen_app.state.services.executor.after_first_run is None
            assert gc.get_freeze_count() != frozen
    finally:
        gc.unfreeze()
