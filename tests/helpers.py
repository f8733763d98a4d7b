"""Small helpers for driving the runner and the in-process server in tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from app.runner import Runner
from app.settings import Settings

CAMPAIGN = (
    "Research what runners say about carbon-plated trail shoes, write a launch blog post and "
    "LinkedIn + X posts for our TerraRun shoe, and schedule them for Tuesday 9am."
)
# one item, one approval
PUBLISH_REQUEST = "Write a LinkedIn post for our TerraRun shoe and publish it Tuesday 9am"

Decide = Callable[[dict[str, Any]], Any]


def accept_all(_request: dict[str, Any]) -> Any:
    return {"type": "accept"}


async def drain(events: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e async for e in events]


async def converse(
    runner: Runner,
    request: str,
    *,
    thread_id: str | None = None,
    decide: Decide = accept_all,
    context: dict[str, Any] | None = None,
    max_approvals: int = 20,
) -> tuple[str, list[dict[str, Any]]]:
    """Send a request and answer every approval with `decide(request)`; returns (thread, events)."""
    events = await drain(runner.send(thread_id, request, context))
    tid = next(e["thread_id"] for e in events if e["type"] == "run")
    for _ in range(max_approvals):
        view = await runner.view(tid)
        if view.status != "interrupted":
            return tid, events
        value = decide(view.interrupts[0]["value"][0])
        events += await drain(runner.resume(tid, value))
    raise AssertionError("too many approvals")


async def queue_run(
    db: Any,
    thread_id: str,
    run_id: str,
    strategy: str = "enqueue",
    *,
    new_thread: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> None:
    """Queue a run of the supervisor on `thread_id` (created first with `new_thread`) the way
    the server does, without a request (`db`: an `app.db.AppDB`)."""
    if new_thread:
        await db.create_thread(thread_id, tenant="default", metadata={}, graph_id="supervisor")
    await db.enqueue_run(
        run_id=run_id,
        thread_id=thread_id,
        tenant="default",
        assistant_id="supervisor",
        graph_id="supervisor",
        kwargs=kwargs or {},
        metadata={},
        multitask_strategy=strategy,
    )


async def check_claim_marks_runs_started(storage: Any) -> None:
    """`claim_runs(start=True)` (what an executor calls) marks what it claims started exactly as
    `mark_run_started` does — the thread `busy`, a first attempt's start checkpoint and the writes
    pending on it — and a later attempt keeps the first one's record. `storage`: an open
    `app.storage.Storage` (the checkpointer's tables are read)."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt
    from typing_extensions import TypedDict

    from app.leases import lease_until

    class S(TypedDict, total=False):
        n: int
        answer: str

    def ask(state: S) -> S:
        return {"answer": str(interrupt("ok?"))}

    builder = StateGraph(S)
    builder.add_node("ask", ask)
    builder.add_edge(START, "ask")
    builder.add_edge("ask", END)
    graph = builder.compile(checkpointer=storage.checkpointer)
    db = storage.db

    # a thread stopped at an interrupt: its head checkpoint has pending writes to keep
    for tid in ("t-claim", "t-mark"):
        await db.create_thread(tid, tenant="default", metadata={}, graph_id="supervisor")
        await graph.ainvoke({"n": 1}, {"configurable": {"thread_id": tid}})
    head = (await graph.aget_state({"configurable": {"thread_id": "t-claim"}})).config
    head_id = head["configurable"]["checkpoint_id"]

    await queue_run(db, "t-claim", "r-claim")
    (run,) = await db.claim_runs("w1", lease_until(30), 5, start=True)
    assert run["run_id"] == "r-claim" and run["attempt"] == 1
    assert run["before_checkpoint_id"] == head_id  # returned with the claim
    assert (await db.get_thread("t-claim"))["status"] == "busy"

    await queue_run(db, "t-mark", "r-mark")  # the same state, marked by the separate statement
    (other,) = await db.claim_runs("w1", lease_until(30), 5)
    assert other["before_checkpoint_id"] is None  # a plain claim marks nothing
    await db.mark_run_started("r-mark", "t-mark", "supervisor")

    async def before_writes(rid: str) -> list[list[Any]]:
        rows = await db._b.fetchall("SELECT before_writes FROM runs WHERE run_id = ?", (rid,))
        return sorted(
            [w[0], "<head>" if w[1] else None, w[2] is not None, w[3]]
            for w in json.loads(rows[0]["before_writes"])
        )

    claimed, marked = await before_writes("r-claim"), await before_writes("r-mark")
    assert claimed == marked
    assert any(w[2] for w in claimed)  # the interrupt's pending write is recorded

    # the run's process dies after a checkpoint; the next attempt keeps the first start
    from langgraph.types import Command

    await graph.ainvoke(Command(resume="yes"), {"configurable": {"thread_id": "t-claim"}})
    assert await db.requeue_run("r-claim", "w1")
    await db.update_thread("t-claim", status="idle")
    (again,) = await db.claim_runs("w2", lease_until(30), 5, start=True)
    assert again["attempt"] == 2 and again["before_checkpoint_id"] == head_id
    assert await before_writes("r-claim") == claimed
    assert (await db.get_thread("t-claim"))["status"] == "busy"


async def check_stateless_threads_are_found_by_their_index(db: Any) -> None:
    """`stale_stateless_threads` finds the idle threads of stateless runs due for deletion (not a
    kept one, not a thread of a normal run, not one newer than the cutoff), and the database
    answers it from the partial index `threads_stateless`, not a scan of every thread's
    metadata (the sweep asks every minute)."""
    from datetime import timedelta

    from app.db import _STATELESS, utcnow

    for tid, meta in (
        ("gone", {"stateless": True, "on_completion": "delete"}),
        ("kept", {"stateless": True, "on_completion": "keep"}),
        ("normal", {"graph_id": "supervisor"}),
    ):
        await db.create_thread(tid, tenant="default", metadata=meta, graph_id="supervisor")
    assert await db.stale_stateless_threads(utcnow() + timedelta(seconds=1)) == ["gone"]
    assert await db.stale_stateless_threads(utcnow() - timedelta(hours=1)) == []
    query = f"SELECT thread_id FROM threads WHERE updated_at < ? AND {_STATELESS}"
    if db.dialect == "postgres":
        async with db._b.transaction() as tx:  # a tiny table: keep the planner off a scan
            await tx.execute("SET LOCAL enable_seqscan = off")
            plan = await tx.fetchall("EXPLAIN " + query, ("9999",))
    else:
        plan = await db._b.fetchall("EXPLAIN QUERY PLAN " + query, ("9999",))
    assert "threads_stateless" in str(plan), plan


async def check_cancel_of_a_released_run(settings: Any, action: str) -> None:
    """A run released to the queue part-way (a graceful shutdown here; a dead worker or a lost
    lease leaves the same) is `pending` again, its thread `busy` and the checkpoints of its first
    attempt on the thread. Cancelled before any worker takes it up again (here the next server
    has no free worker), it gets the bookkeeping of a cancelled running run: the thread's status
    follows from the state (not `busy` for good), the run's stream ends with `end`, `interrupt`
    records what its finished steps added, `rollback` deletes the run with its checkpoints.
    `settings`: the backend to use (SQLite or Postgres, migrated)."""
    import asyncio

    import httpx

    from app.server.app import create_app

    body = {"assistant_id": "supervisor", "input": {"messages": ["Write a blog post about shoes"]}}
    first = create_app(
        settings.model_copy(update={"shutdown_grace_s": 0.1, "scripted_latency_ms": 400}),
        workers=0,
    )
    async with first.router.lifespan_context(first):
        transport = httpx.ASGITransport(app=first)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.post("/threads", json={"thread_id": "t-rel"})
            run_id = (await client.post("/threads/t-rel/runs", json=body)).json()["run_id"]
            for _ in range(500):  # the first attempt checkpointed a step that used the model
                state = (await client.get("/threads/t-rel/state")).json()
                if (state["values"] or {}).get("usage"):
                    break
                await asyncio.sleep(0.02)
            assert state["values"]["usage"], state
    second = create_app(settings.model_copy(update={"worker_concurrency": 0}), workers=0)
    async with second.router.lifespan_context(second):
        db = second.state.services.db
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            row = await db.get_run(run_id)
            assert row is not None and (row["status"], row["attempt"]) == ("pending", 1)
            assert (await client.get("/threads/t-rel")).json()["status"] == "busy"
            cancel = await client.post(
                f"/threads/t-rel/runs/{run_id}/cancel", params={"action": action, "wait": True}
            )
            assert cancel.status_code == 204, cancel.text
            assert (await client.get("/threads/t-rel")).json()["status"] == "idle"
            history = (await client.get("/threads/t-rel/history")).json()
            if action == "rollback":
                assert await db.get_run(run_id) is None
                assert history == []  # the thread is where it was before the run: empty
                return
            row = await db.get_run(run_id)
            assert row is not None and row["status"] == "interrupted"
            assert row["usage"], "what its finished steps added is recorded"
            assert len(history) >= 2  # kept
            stream = await client.get(f"/threads/t-rel/runs/{run_id}/stream")
            last = stream.text.replace("\r\n", "\n").strip().split("\n\n")[-1]
            assert "event: end" in last and '"status":"interrupted"' in last, stream.text


async def check_graceful_releases_are_counted(db: Any) -> None:
    """`requeue_run(released=True)` (a graceful shutdown) counts the release in the run's
    kwargs, keeping the rest; a requeue of a stale run (a dead worker) does not (`db`: an
    `app.db.AppDB`)."""
    from app.leases import lease_until

    await queue_run(db, "t-rel", "r-rel", new_thread=True, kwargs={"usage_base": {"a": 1}})
    for owner, released in (("w1", True), ("w2", False), ("w3", True)):
        (run,) = await db.claim_runs(owner, lease_until(30), 1)
        assert run["run_id"] == "r-rel"
        assert await db.requeue_run("r-rel", owner, released=released)
    row = await db.get_run("r-rel")
    assert row["status"] == "pending" and row["attempt"] == 3
    assert row["kwargs"] == {"usage_base": {"a": 1}, "released": 2}, row["kwargs"]


@asynccontextmanager
async def served(
    settings: Settings, *, workers: int | None = None, raise_app_exceptions: bool = True
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """(client, app): an httpx client on the whole server app in this process, started (its
    lifespan) and stopped around the block."""
    from app.server.app import create_app

    app = create_app(settings, workers=workers)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app


def http_scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """An ASGI HTTP scope, for tests that call an app with their own `receive` and `send`."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
        "state": {},
    }
