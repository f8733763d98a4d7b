"""The HTTP server in-process (ASGI, SQLite, scripted model) against hostile or odd input:
secrets a failed run or a client's config carries never reach run records, events or
checkpoints; bad input is a 4xx naming the field (never echoing the value), never a 500 and never
half-stored; state updates check their checkpoint and keep the thread's status truthful."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.db import open_sqlite_db
from app.leases import lease_until
from app.redact import forget_secrets
from app.server.events import EventLog, RunSignals, encode_event, parse_last_event_id
from app.server.serde import dumps
from app.settings import Settings
from tests.helpers import queue_run, served
from tests.unit.test_server_api import serving_graph, sse_events

H = {"content-type": "application/json"}
OPENAI_KEY = "sk-proj-Zq81mTTx0abcdefghijklmnopqrstuv"
DSN_PASSWORD = "hunter2-db-password"
SECRET = "sk-proj-SECRETVALUE0123456789abcdef"
UNKNOWN_CHECKPOINT = "1ef00000-0000-6000-8000-000000000000"

FAILING_GRAPH = f"""
from typing_extensions import TypedDict
from langgraph.graph import END, START, StateGraph


class S(TypedDict, total=False):
    answer: str


def call_provider(state):
    # what an HTTP client / driver error typically carries: the request headers or the DSN
    raise RuntimeError(
        "upstream refused the request (headers={{'Authorization': 'Bearer {OPENAI_KEY}'}}) "
        "while connecting to postgresql://app:{DSN_PASSWORD}@db.internal:5432/mkt"
    )


builder = StateGraph(S)
builder.add_node("call_provider", call_provider)
builder.add_edge(START, "call_provider")
builder.add_edge("call_provider", END)
graph = builder.compile()
"""

TWO_STEP_GRAPH = """
from typing_extensions import TypedDict
from langgraph.graph import END, START, StateGraph


class S(TypedDict, total=False):
    answer: str


def first(state):
    return {"answer": "first"}


def second(state):
    return {"answer": "second"}


builder = StateGraph(S)
builder.add_node("first", first)
builder.add_node("second", second)
builder.add_edge(START, "first")
builder.add_edge("first", "second")
builder.add_edge("second", END)
graph = builder.compile()
"""


@pytest.fixture
async def two_step(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    async with serving_graph(settings, tmp_path, monkeypatch, "two", TWO_STEP_GRAPH) as served:
        client, app = served
        client._transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        made = await client.post("/threads", json={"thread_id": "t-2", "graph_id": "two"})
        assert made.status_code == 200, made.text
        yield client, app


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (supervisor graphs), 500s answered rather than raised."""
    async with served(settings, raise_app_exceptions=False) as (client, _):
        assert (await client.post("/threads", json={"thread_id": "t-1"})).status_code == 200
        yield client


# --- secrets ------------------------------------------------------------------------------------
async def test_a_failed_runs_error_is_redacted_in_the_run_record_and_the_event_log(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception's message often quotes request headers or a DSN: the run's `error`, the
    `error` event (stored and streamed) and /wait's `__error__` carry it with credentials masked,
    the exception type and the rest of the message kept."""
    s = settings.model_copy(update={"openai_api_key": SecretStr(OPENAI_KEY)})
    try:
        async with serving_graph(s, tmp_path, monkeypatch, "fails", FAILING_GRAPH) as served:
            client, app = served
            made = await client.post("/threads", json={"thread_id": "t-f", "graph_id": "fails"})
            assert made.status_code == 200
            body = {"assistant_id": "fails", "input": {}}
            waited = await client.post("/threads/t-f/runs/wait", json=body)
            run = (await client.get("/threads/t-f/runs")).json()[0]
            joined = await client.get(f"/threads/t-f/runs/{run['run_id']}/stream")
            stored = await app.state.services.db.events_after(run["run_id"], 0, limit=1000)
    finally:
        forget_secrets()
    assert run["status"] == "error"
    assert run["error"].startswith("RuntimeError: upstream refused the request")
    assert "db.internal" in run["error"]  # only the credentials are masked
    errors = [e for e in sse_events(joined.text) if e["event"] == "error"]
    assert errors and errors[0]["data"]["error"] == "RuntimeError"
    for text in (waited.text, json.dumps(run), joined.text, json.dumps([dict(e) for e in stored])):
        assert OPENAI_KEY not in text and DSN_PASSWORD not in text


def test_events_that_carry_an_exception_are_redacted_when_stored() -> None:
    """`error` events and task results with an error (tasks/debug/checkpoints modes) are
    redacted as stored; other events are stored as produced (redacting them all is too slow)."""
    exc = RuntimeError(f"Authorization: Bearer {OPENAI_KEY}")
    task = {"id": "t", "name": "call", "error": exc, "result": [], "interrupts": []}
    assert OPENAI_KEY not in encode_event("tasks", task)
    assert OPENAI_KEY not in encode_event("debug|sub:1", {"type": "task_result", "payload": task})
    assert OPENAI_KEY not in encode_event("error", {"error": "E", "message": str(exc)})
    assert "RuntimeError" in encode_event("tasks", task)
    values = {"messages": [{"content": "our key format looks like sk-... (docs)"}]}
    assert encode_event("values", values) == dumps(values)


async def test_credentials_in_a_runs_config_or_metadata_are_not_stored(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client passing `configurable.openai_api_key` or `metadata.authorization` (a common
    LangGraph pattern): the run record holds them masked, and checkpoint metadata (/history),
    into which LangGraph copies configurable keys, does not hold them at all."""
    async with serving_graph(settings, tmp_path, monkeypatch, "two", TWO_STEP_GRAPH) as served:
        client, _ = served
        await client.post("/threads", json={"thread_id": "t-c", "graph_id": "two"})
        body = {
            "assistant_id": "two",
            "input": {},
            "config": {"configurable": {"openai_api_key": OPENAI_KEY, "user_id": "u-1"}},
            "metadata": {"authorization": f"Bearer {OPENAI_KEY}", "note": f"key {OPENAI_KEY}"},
        }
        r = await client.post("/threads/t-c/runs/wait", json=body)
        assert r.status_code == 200, r.text
        run = (await client.get("/threads/t-c/runs")).json()[0]
        history = (await client.get("/threads/t-c/history")).json()
    assert run["kwargs"]["config"]["configurable"] == {"openai_api_key": "***", "user_id": "u-1"}
    assert run["metadata"]["authorization"] == "***"
    metadata = [h["metadata"] for h in history]
    assert all("openai_api_key" not in m for m in metadata)
    assert any(m.get("user_id") == "u-1" for m in metadata)  # other configurable keys stay
    assert OPENAI_KEY not in json.dumps(run) + json.dumps(metadata)


# --- bad input: 4xx, nothing stored --------------------------------------------------------------
@pytest.mark.parametrize("depth", [65, 600])
async def test_deeply_nested_bodies_are_refused_before_anything_is_stored(
    api: httpx.AsyncClient, depth: int
) -> None:
    """Metadata nested hundreds of levels deep was stored, and every later listing of the
    tenant's threads or runs then failed with a 500. Bodies deeper than 64 levels are a 422."""
    deep = '{"a":' * depth + "1" + "}" * depth
    thread = await api.post(
        "/threads", content=f'{{"thread_id":"t-deep","metadata":{deep}}}'.encode(), headers=H
    )
    assert thread.status_code == 422
    assert thread.json()["detail"] == "body: nested deeper than 64 levels of objects and arrays"
    run_body = '{"assistant_id":"supervisor","input":{"messages":["hi"]},"metadata":' + deep + "}"
    run = await api.post("/threads/t-1/runs", content=run_body.encode(), headers=H)
    assert run.status_code == 422
    assert (await api.get("/threads/t-deep")).status_code == 404
    assert (await api.get("/threads/t-1/runs")).json() == []
    assert (await api.post("/threads/search", json={})).status_code == 200
    ok = '{"a":' * 60 + "1" + "}" * 60  # within the limit
    fine = await api.post("/threads", content=f'{{"metadata":{ok}}}'.encode(), headers=H)
    assert fine.status_code == 200, fine.text


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"metadata": {"k": "caf\xe9"}}', "body: not valid UTF-8 (at byte 23)"),
        (b'{"metadata": {"k": NaN}}', "body: NaN, Infinity and numbers out of range"),
        (b'{"metadata": {"k": -Infinity}}', "body: NaN, Infinity and numbers out of range"),
        (b'{"metadata": {"k": 1e999}}', "body: NaN, Infinity and numbers out of range"),
        (b'{"metadata": {"k": ' + b"9" * 5000 + b"}}", "body: a number has too many digits"),
        (b'{"metadata": {"k": "x\\ud800"}}', "body: a string holds an unpaired UTF-16 surrogate"),
        (b'{"metadata": {"x\\udc00": 1}}', "body: a string holds an unpaired UTF-16 surrogate"),
    ],
)
async def test_json_bodies_no_database_can_store_are_a_422_naming_body(
    api: httpx.AsyncClient, body: bytes, detail: str
) -> None:
    """Invalid UTF-8 got FastAPI's generic 400; NaN, huge numbers and lone surrogates were
    accepted and failed later (a 500, or a run that could not write its events)."""
    r = await api.post("/threads", content=body, headers=H)
    assert r.status_code == 422 and r.json()["detail"].startswith(detail), r.text
    assert [t["thread_id"] for t in (await api.post("/threads/search", json={})).json()] == ["t-1"]
    paired = await api.post(  # an emoji written as an escaped surrogate pair is fine
        "/threads", content=b'{"metadata": {"k": "\\ud83d\\ude00"}}', headers=H
    )
    assert paired.status_code == 200 and paired.json()["metadata"]["k"] == "\U0001f600"


async def test_non_finite_numbers_and_lone_surrogates_in_run_input_queue_nothing(
    two_step: Any,
) -> None:
    """`NaN` in a run's input was a 500 after the run was queued; a lone surrogate in a
    message failed the run (its events could not be encoded). Both are a 422, nothing queued."""
    client, _ = two_step
    for raw in (
        b'{"assistant_id":"two","input":{"answer":NaN}}',
        b'{"assistant_id":"two","input":{"messages":[{"role":"user","content":"hi \\ud800"}]}}',
    ):
        r = await client.post("/threads/t-2/runs", content=raw, headers=H)
        assert r.status_code == 422 and r.json()["detail"].startswith("body: "), r.text
    assert (await client.get("/threads/t-2/runs")).json() == []


async def test_lone_surrogates_the_graph_produces_are_stored_escaped(tmp_path: Path) -> None:
    """The event log's JSON is always encodable: a lone surrogate (from a tool, a bad decode)
    is written as its JSON escape — the run's event write failed with UnicodeEncodeError — and
    reads back as the same string."""
    assert dumps({"k": "a\ud800"}) == '{"k":"a\\ud800"}'
    assert dumps({"k": "é"}) == '{"k":"é"}'  # other text stays unescaped
    db, conn = await open_sqlite_db(tmp_path / "app.sqlite")
    try:
        await db.migrate()
        await queue_run(db, "t-s", "r-s", new_thread=True)
        assert len(await db.claim_runs("w1", lease_until(30), 1)) == 1
        await EventLog(db, RunSignals(), owner="w1").append(
            "r-s", [("values", {"text": "tool said \udc80"})]
        )
        rows = await db.events_after("r-s", 0, limit=10)
        assert json.loads(rows[-1]["data"]) == {"text": "tool said \udc80"}
    finally:
        await conn.close()


async def test_out_of_range_offsets_filters_and_checkpoint_keys_are_a_422(
    api: httpx.AsyncClient,
) -> None:
    """Each of these was a 500: an offset past a database integer (thread/assistant search, the
    runs list), a `/history` metadata filter key the checkpointer refuses, a checkpoint object
    with keys that reached LangGraph's config (`__pregel_checkpointer`)."""
    for path in ("/threads/search", "/assistants/search"):
        r = await api.post(path, json={"offset": 2**63})
        assert r.status_code == 422 and "body.offset" in r.json()["detail"], r.text
    r = await api.get("/threads/t-1/runs", params={"offset": 2**63})
    assert r.status_code == 422 and "query.offset" in r.json()["detail"]
    r = await api.post("/threads/t-1/history", json={"metadata": {"my key": 1}})
    assert r.status_code == 422 and "body.metadata" in r.json()["detail"]
    assert "my key" not in r.text
    assert (
        await api.post("/threads/t-1/history", json={"metadata": {"step": 1}})
    ).status_code == 200
    for path in ("/threads/t-1/state/checkpoint", "/threads/t-1/history"):
        r = await api.post(path, json={"checkpoint": {"__pregel_checkpointer": "x"}})
        assert r.status_code == 422 and "__pregel_checkpointer" in r.json()["detail"], r.text


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/threads", {"graph_id": SECRET}, "graph_id"),
        ("POST", "/threads", {"metadata": {"graph_id": {"k": SECRET}}}, "graph_id"),
        (
            "POST",
            "/threads/t-1/runs",
            {
                "assistant_id": "supervisor",
                "input": {"messages": ["Write a blog post"]},
                "context": {"timezone": SECRET},
            },
            "timezone",
        ),
        (
            "POST",
            "/threads/t-1/runs",
            {
                "assistant_id": "supervisor",
                "input": {"messages": ["Write a blog post"]},
                "context": {"platforms": [SECRET]},
            },
            "platforms",
        ),
        ("POST", "/threads/t-1/state", {"values": {}, "as_node": SECRET}, "as_node"),
        ("POST", "/keys", {"role": "viewer", "tenant": SECRET}, "tenant"),
    ],
)
async def test_rejected_values_are_not_echoed(
    api: httpx.AsyncClient, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    """README: a 422 names the field and what is allowed, never the rejected value (it may be a
    secret a client put in the wrong place)."""
    r = await api.request(method, path, json=body)
    assert r.status_code == 422 and field in r.json()["detail"], r.text
    assert SECRET not in r.text


# --- state updates --------------------------------------------------------------------------------
async def test_a_state_update_at_an_unknown_checkpoint_is_404_and_writes_nothing(
    two_step: Any,
) -> None:
    """It was a 200 that wrote a head whose parent checkpoint does not exist."""
    client, _ = two_step
    done = await client.post("/threads/t-2/runs/wait", json={"assistant_id": "two", "input": {}})
    assert done.status_code == 200, done.text
    before = (await client.get("/threads/t-2/state")).json()
    r = await client.post(
        "/threads/t-2/state",
        json={"values": {"answer": "x"}, "checkpoint_id": UNKNOWN_CHECKPOINT},
    )
    assert r.status_code == 404 and "not found" in r.json()["detail"]
    assert (await client.get("/threads/t-2/state")).json() == before
    r = await client.post(
        "/threads/t-2/state",
        json={"values": {"answer": "y"}, "checkpoint_id": before["checkpoint"]["checkpoint_id"]},
    )
    assert r.status_code == 200, r.text


async def test_a_state_update_the_graph_rejects_is_a_422_without_the_values(
    two_step: Any,
) -> None:
    """LangGraph's InvalidUpdateError (values that are not an object) was a 500."""
    client, _ = two_step
    await client.post("/threads/t-2/runs/wait", json={"assistant_id": "two", "input": {}})
    r = await client.post("/threads/t-2/state", json={"values": [1, SECRET]})
    assert r.status_code == 422 and r.json()["detail"].startswith("values: "), r.text
    assert SECRET not in r.text


async def test_a_state_update_keeps_a_breakpoint_interrupted_and_a_busy_thread_busy(
    two_step: Any,
) -> None:
    """The thread's status after an update is the executor's (`thread_status_of`): a thread
    stopped at a breakpoint (tasks pending, no interrupt value) stays `interrupted` — it became
    `idle`. And a run that started after the update's check owns the status: `busy` stays."""
    client, app = two_step
    body = {"assistant_id": "two", "input": {}, "interrupt_before": ["second"]}
    assert (await client.post("/threads/t-2/runs/wait", json=body)).status_code == 200
    assert (await client.get("/threads/t-2")).json()["status"] == "interrupted"
    r = await client.post("/threads/t-2/state", json={"values": {"answer": "edited"}})
    assert r.status_code == 200, r.text
    assert (await client.get("/threads/t-2")).json()["status"] == "interrupted"
    db = app.state.services.db
    real_active_runs = db.active_runs

    async def run_starts_after_the_check(thread_id: str) -> list[Any]:
        found = await real_active_runs(thread_id)  # none: the update may go ahead ...
        await db.start_run("r-meanwhile", thread_id, "scripted")  # ... and a run starts
        await db.update_thread(thread_id, status="busy")  # (its claim makes the thread busy)
        return list(found)

    db.active_runs = run_starts_after_the_check
    try:
        r = await client.post("/threads/t-2/state", json={"values": {"answer": "again"}})
    finally:
        db.active_runs = real_active_runs
    assert r.status_code == 200, r.text
    assert (await db.get_thread("t-2"))["status"] == "busy"


# --- Last-Event-ID ----------------------------------------------------------------------------------
def test_last_event_id_is_ascii_digits_that_fit_a_database_integer() -> None:
    """`²` passed `isdigit()` and failed `int()`; 5000 digits failed `int()`; 23 digits overflowed
    the database's integer mid-stream. Anything but 1-18 ASCII digits replays from the start."""
    assert parse_last_event_id(" 12 ") == 12
    assert parse_last_event_id("9" * 18) == 10**18 - 1
    for odd in ("²", "٣", "9" * 19, "9" * 5000, "-1", "+1", "1e3", "", None):
        assert parse_last_event_id(odd) == 0


async def test_a_join_with_an_odd_last_event_id_replays_the_whole_stream(two_step: Any) -> None:
    client, _ = two_step
    await client.post("/threads/t-2/runs/wait", json={"assistant_id": "two", "input": {}})
    run_id = (await client.get("/threads/t-2/runs")).json()[0]["run_id"]
    for header in (b"\xb2", b"99999999999999999999999"):
        r = await client.get(
            f"/threads/t-2/runs/{run_id}/stream", headers=[(b"Last-Event-ID", header)]
        )
        assert r.status_code == 200, r.text
        events = sse_events(r.text)
        assert events[0]["event"] == "metadata" and events[-1]["event"] == "end"
