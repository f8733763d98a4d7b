"""`mkt serve` driven by the official `langgraph-sdk` client, unchanged, over loopback, on
PostgreSQL, with the scripted model: assistants, threads, streamed runs with sub-agent namespaces
and tokens, the approval interrupt and its resume, state and history, join after a dropped
connection (no gap, no duplicate), cancel, double texting, and `kill -9` of the server mid-run.

One server serves the module (on Postgres its runs execute in worker processes, the default);
the kill test starts its own, with runs in the server process (`--workers 0`), and kills that
(`test_server_workers.py` kills a worker under a living server)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.local_llm import free_port
from tests.helpers import CAMPAIGN, PUBLISH_REQUEST
from tests.integration.serving import (
    Server,
    channel_blobs,
    migrate,
    outbox,
    start_server,
    stop_server,
    user,
)
from tests.integration.serving import server_env as _env

langgraph_sdk = pytest.importorskip("langgraph_sdk")
from langgraph_sdk.errors import ConflictError, NotFoundError  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.pg import fresh_database

    tmp = tmp_path_factory.mktemp("server")
    with fresh_database(pg_admin_dsn) as dsn:
        env = _env(dsn, tmp / "data")
        migrate(env)
        srv = start_server(env, tmp / "server.log")  # Postgres: runs execute in worker processes
        try:
            yield srv
        except BaseException:
            print(srv.log())
            raise
        finally:
            stop_server(srv)


def client(server: Server) -> Any:
    return langgraph_sdk.get_client(url=server.url)


async def test_sdk_assistants_and_studio_calls(server: Server) -> None:
    c = client(server)
    found = await c.assistants.search(metadata={"created_by": "system"}, limit=100)
    assert {a["graph_id"] for a in found} == {
        "supervisor",
        "research",
        "content",
        "social",
        "publishing",
    }
    sup = await c.assistants.get("supervisor")
    assert (await c.assistants.get(sup["assistant_id"]))["graph_id"] == "supervisor"
    graph = await c.assistants.get_graph(sup["assistant_id"], xray=True)
    assert {"plan", "answer"} <= {n["id"] for n in graph["nodes"]}
    assert set(await c.assistants.get_subgraphs("supervisor")) == {
        "research",
        "content",
        "social",
        "publishing",
    }
    async with httpx.AsyncClient(base_url=server.url) as h:
        info = (await h.get("/info")).json()
    assert info["provider"] == "scripted" and info["storage"].startswith("postgres")


async def test_sdk_stream_approval_resume_state_and_history(server: Server) -> None:
    c = client(server)
    thread = await c.threads.create(metadata={"case": "publish"})
    tid = thread["thread_id"]
    parts = [
        p
        async for p in c.runs.stream(
            tid,
            "supervisor",
            input=user(PUBLISH_REQUEST),
            stream_mode=["updates", "messages-tuple"],
            stream_subgraphs=True,
        )
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata" and parts[0].data["attempt"] == 1
    run_id = parts[0].data["run_id"]
    assert events[-1] == "end" and parts[-1].data == {"run_id": run_id, "status": "interrupted"}
    # with `end` the SDK knows the run is over: it does not ask the server after the stream
    assert f"GET /threads/{tid}/runs/{run_id} " not in server.log()
    assert not [p for p in parts if p.event == "error"], parts
    # sub-agent progress carries its namespace; the social agent's model tokens stream too
    assert any(e.startswith("updates|social:") for e in events), events
    tokens = [p for p in parts if p.event.startswith("messages|social:")]
    assert tokens and tokens[0].data[1]["langgraph_node"], tokens[:1]
    interrupts = [
        p.data["__interrupt__"] for p in parts if p.event == "updates" and "__interrupt__" in p.data
    ]
    assert interrupts[0][0]["value"][0]["action_request"]["args"]["channel"] == "linkedin"
    assert (await c.threads.get(tid))["status"] == "interrupted"
    state = await c.threads.get_state(tid)
    assert state["interrupts"] and state["next"] == ["publishing"]
    assert len(await c.threads.search(metadata={"case": "publish"}, status="interrupted")) == 1

    with pytest.raises(ConflictError):  # a new request may not skip the pending approval
        await c.runs.create(tid, "supervisor", input=user("and an X post"))

    parts = [
        p
        async for p in c.runs.stream(
            tid, "supervisor", command={"resume": {"type": "accept"}}, stream_mode="messages-tuple"
        )
    ]
    answer_tokens = [
        p.data[0]["content"]
        for p in parts
        if p.event == "messages" and p.data[1]["langgraph_node"] == "answer"
    ]
    assert len(answer_tokens) > 3 and "post-linkedin" in "".join(answer_tokens)
    assert (await c.threads.get(tid))["status"] == "idle"
    values = (await c.threads.get_state(tid))["values"]
    assert values["messages"][-1]["type"] == "ai"
    assert [(s["platform"], s["status"]) for s in values["scheduled"]] == [
        ("linkedin", "scheduled")
    ]
    assert outbox(server.dsn, tid) == [("post-linkedin", 1)]
    history = await c.threads.get_history(tid, limit=100)
    assert history[0]["checkpoint"] == (await c.threads.get_state(tid))["checkpoint"]
    assert any(h["interrupts"] for h in history)  # the state that waited for approval
    with pytest.raises(ConflictError):  # nothing to resume any more
        await c.runs.create(tid, "supervisor", command={"resume": {"type": "accept"}})
    runs = await c.runs.list(tid)
    assert [r["status"] for r in runs] == ["success", "interrupted"]


async def test_sdk_join_after_dropped_connection_has_no_gap_and_no_duplicate(
    server: Server,
) -> None:
    c = client(server)
    tid = (await c.threads.create())["thread_id"]
    run = await c.runs.create(
        tid,
        "supervisor",
        input=user(CAMPAIGN),
        stream_mode=["updates", "messages-tuple"],
        stream_subgraphs=True,
    )
    first = []
    async for p in c.runs.join_stream(tid, run["run_id"]):
        first.append(p)
        if len(first) == 6:
            break  # the connection drops here; the run goes on
    rest = [p async for p in c.runs.join_stream(tid, run["run_id"], last_event_id=first[-1].id)]
    full = [p async for p in c.runs.join_stream(tid, run["run_id"])]
    assert [(p.id, p.event, p.data) for p in first + rest] == [
        (p.id, p.event, p.data) for p in full
    ]
    ids = [int(p.id) for p in full]
    assert ids == sorted(set(ids)) and len(ids) > 20
    assert any(p.event.startswith("updates|research:") for p in full)
    assert (await c.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    # the raw wire: SSE ids, Location for reconnect, Content-Location naming the run
    async with httpx.AsyncClient(base_url=server.url) as h:
        r = await h.get(
            f"/threads/{tid}/runs/{run['run_id']}/stream", headers={"Last-Event-ID": str(ids[-2])}
        )
        assert r.headers["location"] == f"/threads/{tid}/runs/{run['run_id']}/stream"
        assert r.headers["content-location"] == f"/threads/{tid}/runs/{run['run_id']}"
        assert f"id: {ids[-1]}" in r.text and f"id: {ids[-2]}\r\n" not in r.text


async def test_sdk_cancel_and_double_texting(server: Server) -> None:
    c = client(server)
    tid = (await c.threads.create())["thread_id"]
    first = await c.runs.create(tid, "supervisor", input=user(CAMPAIGN))
    with pytest.raises(ConflictError):
        await c.runs.create(tid, "supervisor", input=user("again"), multitask_strategy="reject")
    queued = await c.runs.create(
        tid,
        "supervisor",
        input=user("Write a blog post about TerraRun"),
        multitask_strategy="enqueue",
    )
    assert queued["status"] == "pending"
    await asyncio.sleep(0.3)
    await c.runs.cancel(tid, first["run_id"], wait=True)
    assert (await c.runs.get(tid, first["run_id"]))["status"] == "interrupted"
    await c.runs.join(tid, queued["run_id"])  # the queued run runs once the first is gone
    assert (await c.runs.get(tid, queued["run_id"]))["status"] == "success"
    assert (await c.threads.get(tid))["status"] == "idle"

    # rollback: the thread goes back to where it was, the run is deleted
    before = await c.threads.get_state(tid)
    blobs = channel_blobs(server.dsn, tid)
    doomed = await c.runs.create(tid, "supervisor", input=user(CAMPAIGN))
    for _ in range(200):  # it stores values of its own ...
        if channel_blobs(server.dsn, tid) > blobs:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the doomed run stored no channel values")
    await c.runs.cancel(tid, doomed["run_id"], wait=True, action="rollback")
    assert channel_blobs(server.dsn, tid) == blobs  # ... which went with its checkpoints
    with pytest.raises(NotFoundError):
        await c.runs.get(tid, doomed["run_id"])
    after = await c.threads.get_state(tid)
    assert after["values"] == before["values"] and after["next"] == before["next"] == []
    assert after["values"]["request"] == "Write a blog post about TerraRun"
    # the run's checkpoints are gone: the head is the very checkpoint the thread was at
    assert after["checkpoint"] == before["checkpoint"] and after["metadata"]["source"] == "loop"


async def test_sdk_stateless_runs_answer_and_leave_no_thread(server: Server) -> None:
    c = client(server)
    before = {t["thread_id"] for t in await c.threads.search(limit=1000)}
    request = user("Write a LinkedIn post for our TerraRun shoe")
    result = await c.runs.wait(None, "supervisor", input=request)
    assert result["messages"][-1]["type"] == "ai"
    parts = [p async for p in c.runs.stream(None, "supervisor", input=request)]
    assert parts[-1].event == "end" and parts[-1].data["status"] == "success"
    for _ in range(100):  # the streamed run's thread is deleted just after its end was sent
        after = {t["thread_id"] for t in await c.threads.search(limit=1000)}
        if after == before:
            break
        await asyncio.sleep(0.05)
    assert after == before
    kept = await c.runs.wait(None, "supervisor", input=request, on_completion="keep")
    assert kept["messages"][-1]["type"] == "ai"
    assert len(await c.threads.search(metadata={"stateless": True}, limit=1000)) == 1


async def test_kill_9_mid_run_then_restart_completes_and_publishes_once(
    pg_dsn: str, tmp_path: Path
) -> None:
    env = _env(pg_dsn, tmp_path / "data")
    migrate(env)
    port = free_port()
    log_path = tmp_path / "server.log"
    # the first server SIGKILLs itself right after writing the first outbox row, before the
    # checkpoint: the worst moment for exactly-once publishing
    first = start_server({**env, "MKT_CRASH_AT": "after_outbox_write"}, log_path, port, workers=0)
    try:
        c = langgraph_sdk.get_client(url=first.url)
        tid = (await c.threads.create())["thread_id"]
        await c.runs.wait(tid, "supervisor", input=user(CAMPAIGN))
        for _ in range(2):  # three items: the first two approvals just ask for the next one
            assert (await c.threads.get(tid))["status"] == "interrupted"
            await c.runs.wait(tid, "supervisor", command={"resume": {"type": "accept"}})
        last = await c.runs.create(tid, "supervisor", command={"resume": {"type": "accept"}})
        await asyncio.to_thread(first.proc.wait, 60)
        assert first.proc.returncode == -signal.SIGKILL, first.log()
        assert len(outbox(pg_dsn, tid)) == 1  # written, not yet checkpointed
    finally:
        stop_server(first)

    second = start_server(env, log_path, port, workers=0)
    try:
        assert "resuming 1 run(s)" in second.log()
        c = langgraph_sdk.get_client(url=second.url)
        result = await c.runs.join(tid, last["run_id"])
        assert "__error__" not in result and "__interrupt__" not in result, result
        run = await c.runs.get(tid, last["run_id"])
        assert run["status"] == "success" and run["attempt"] == 2
        parts = [p async for p in c.runs.join_stream(tid, last["run_id"])]
        assert [p.data["attempt"] for p in parts if p.event == "metadata"] == [1, 2]
        assert (await c.threads.get(tid))["status"] == "idle"
        assert outbox(pg_dsn, tid) == [("blog", 1), ("post-linkedin", 1), ("post-x", 1)]
    except BaseException:
        print(second.log())
        raise
    finally:
        stop_server(second)
