"""Runs that wait in the queue, and the end of a run: a queued run is checked again when it
starts on a thread another run changed; a run's end is recorded though a cancel arrives or the
database is briefly locked as it is recorded, and a run whose end could not be recorded is taken
up again; run creation on a new id races itself, or names another tenant's thread."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from app.server import metrics
from app.settings import Settings
from tests.helpers import PUBLISH_REQUEST
from tests.unit.test_server_api import (
    ASK_GRAPH,
    FAILING_GRAPH,
    HELD_GRAPH,
    as_principal,
    serving_graph,
    wait_for_usage,
)


@contextmanager
def claims_held(app: Any) -> Iterator[None]:
    """No run is claimed inside the block (they queue up); claiming resumes after it."""
    executor = app.state.services.executor
    real = executor.claim

    async def nothing() -> None:
        return None

    executor.claim = nothing
    try:
        yield
    finally:
        executor.claim = real
        executor.wake()


async def ended(client: Any, thread_id: str, run_id: str) -> dict[str, Any]:
    joined = await client.get(f"/threads/{thread_id}/runs/{run_id}/join")
    assert joined.status_code == 200, joined.text
    result: dict[str, Any] = joined.json()
    return result


async def test_a_queued_resume_is_checked_again_when_it_starts(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two answers queued for one approval: when the second starts, the first has answered it
    and nothing waits. The second ends `error` saying so (as it would have been a 409 had it
    come after), the first answer stands, and the thread is idle."""
    async with serving_graph(settings, tmp_path, monkeypatch, "ask", ASK_GRAPH) as (client, app):
        await client.post("/threads", json={"thread_id": "t-2r", "graph_id": "ask"})
        await client.post("/threads/t-2r/runs/wait", json={"assistant_id": "ask", "input": {}})
        body: dict[str, Any] = {"assistant_id": "ask", "command": {"resume": "yes"}}
        with claims_held(app):
            first = await client.post("/threads/t-2r/runs", json=body)
            second = await client.post(
                "/threads/t-2r/runs", json={**body, "command": {"resume": "no"}}
            )
            assert first.status_code == second.status_code == 200, second.text
        assert (await ended(client, "t-2r", first.json()["run_id"]))["answer"] == "yes"
        refused = await ended(client, "t-2r", second.json()["run_id"])
        assert refused["__error__"]["error"] == "NotInterruptedError", refused
        assert "not waiting for an approval" in refused["__error__"]["message"]
        run = (await client.get(f"/threads/t-2r/runs/{second.json()['run_id']}")).json()
        assert run["status"] == "error"
        assert (await client.get("/threads/t-2r/state")).json()["values"]["answer"] == "yes"
        assert (await client.get("/threads/t-2r")).json()["status"] == "idle"


async def test_a_queued_request_does_not_skip_an_approval_the_run_before_it_asked_for(
    api: Any,
) -> None:
    """A second request queued behind one that stops for a publish approval would discard the
    approval if it ran. It ends `error` (a new request on a thread waiting for approval), the
    approval still waits, and the thread is interrupted."""
    client, app = api
    await client.post("/threads", json={"thread_id": "t-q"})

    def turn(text: str) -> dict[str, Any]:
        return {
            "assistant_id": "supervisor",
            "input": {"messages": [{"role": "user", "content": text}]},
        }

    with claims_held(app):
        first = await client.post("/threads/t-q/runs", json=turn(PUBLISH_REQUEST))
        second = await client.post("/threads/t-q/runs", json=turn("Write a blog post about shoes"))
        assert first.status_code == second.status_code == 200, second.text
    assert "__interrupt__" in await ended(client, "t-q", first.json()["run_id"])
    refused = await ended(client, "t-q", second.json()["run_id"])
    assert refused["__error__"]["error"] == "PendingApprovalError", refused
    state = (await client.get("/threads/t-q/state")).json()
    assert state["interrupts"], "the approval was discarded"
    assert (await client.get("/threads/t-q")).json()["status"] == "interrupted"
    # answered, the thread goes on as if the refused run had never been sent
    done = await client.post(
        "/threads/t-q/runs/wait",
        json={"assistant_id": "supervisor", "command": {"resume": {"type": "accept"}}},
    )
    assert done.status_code == 200 and "__error__" not in done.json(), done.text


async def test_a_runs_end_is_recorded_though_a_cancel_arrives_as_it_is_recorded(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph has stopped and the run's end is being written when a cancel arrives: it is too
    late to cancel anything, so the end is recorded (it used to be abandoned, the run `running`
    and its thread `busy` for good, the next run queued behind it forever)."""
    async with serving_graph(settings, tmp_path, monkeypatch, "ask", ASK_GRAPH) as (client, app):
        db = app.state.services.db
        real_finish = db.finish_run
        writing = asyncio.Event()

        async def slow_finish(*args: Any, **kw: Any) -> Any:
            writing.set()
            await asyncio.sleep(0.2)  # a slow disk, a busy database: any await will do
            return await real_finish(*args, **kw)

        monkeypatch.setattr(db, "finish_run", slow_finish)
        await client.post("/threads", json={"thread_id": "t-c", "graph_id": "ask"})
        body = {"assistant_id": "ask", "input": {}}
        run = (await client.post("/threads/t-c/runs", json=body)).json()
        await asyncio.wait_for(writing.wait(), 10)
        assert (await client.post(f"/threads/t-c/runs/{run['run_id']}/cancel")).status_code == 202
        monkeypatch.setattr(db, "finish_run", real_finish)
        await ended(client, "t-c", run["run_id"])
        row = await db.get_run(run["run_id"])
        assert row["status"] == "interrupted" and row["error"] is None, row  # stopped at `ask`
        assert (await client.get("/threads/t-c")).json()["status"] == "interrupted"
        resume = {"assistant_id": "ask", "command": {"resume": "yes"}}
        nxt = await client.post("/threads/t-c/runs/wait", json=resume)
        assert nxt.json()["answer"] == "yes", nxt.text


async def test_a_runs_end_is_recorded_when_the_database_is_locked_for_a_moment(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recording the end meets SQLite's 'database is locked' (or a Postgres restart) once: it is
    written again a moment later."""
    async with serving_graph(settings, tmp_path, monkeypatch, "ask", ASK_GRAPH) as (client, app):
        db = app.state.services.db
        real_finish = db.finish_run
        calls: list[str] = []

        async def locked_once(*args: Any, **kw: Any) -> Any:
            calls.append(args[0])
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")
            return await real_finish(*args, **kw)

        monkeypatch.setattr(db, "finish_run", locked_once)
        await client.post("/threads", json={"thread_id": "t-l", "graph_id": "ask"})
        run = (
            await client.post("/threads/t-l/runs", json={"assistant_id": "ask", "input": {}})
        ).json()
        await ended(client, "t-l", run["run_id"])
        assert calls == [run["run_id"], run["run_id"]]
        assert (await db.get_run(run["run_id"]))["status"] == "interrupted"
        assert (await client.get("/threads/t-l")).json()["status"] == "interrupted"


def locked_once(db: Any, monkeypatch: pytest.MonkeyPatch, run_id: str | None = None) -> list[str]:
    """`db.finish_run` (of run `run_id`, else of any run) meets 'database is locked' on its
    first call; returns the calls' run ids."""
    real_finish = db.finish_run
    calls: list[str] = []

    async def finish(*args: Any, **kw: Any) -> Any:
        if run_id is None or args[0] == run_id:
            calls.append(args[0])
            if len(calls) == 1:
                raise sqlite3.OperationalError("database is locked")
        return await real_finish(*args, **kw)

    monkeypatch.setattr(db, "finish_run", finish)
    return calls


def tokens(agent: str) -> float:
    """`mkt_tokens_total` of `agent`'s input tokens in the exposition (0 when absent)."""
    prefix = f'mkt_tokens_total{{agent="{agent}",direction="input"}} '
    lines = metrics.render()[0].decode().splitlines()
    return sum(float(line[len(prefix) :]) for line in lines if line.startswith(prefix))


async def test_a_failed_runs_end_recorded_again_streams_one_error_and_counts_once(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed run's end meets 'database is locked' once and is written again: its stream has
    one `error` event, and /metrics counts the tokens its finished steps spent once (the retry
    used to store a second `error` event and count them twice)."""
    fail = tmp_path / "fail"
    fail.touch()
    source = FAILING_GRAPH.replace("__FAIL__", repr(str(fail)))
    metrics.reset()
    async with serving_graph(settings, tmp_path, monkeypatch, "failing_l", source) as (client, app):
        db = app.state.services.db
        calls = locked_once(db, monkeypatch)
        await client.post("/threads", json={"thread_id": "t-fl", "graph_id": "failing_l"})
        body = {"assistant_id": "failing_l", "input": {}}
        run = (await client.post("/threads/t-fl/runs", json=body)).json()
        await ended(client, "t-fl", run["run_id"])
        assert calls == [run["run_id"], run["run_id"]]
        row = await db.get_run(run["run_id"])
        assert row["status"] == "error" and sorted(row["usage"]) == ["first"], row
        events = await db.events_after(run["run_id"], 0)
        assert [e["event"] for e in events].count("error") == 1, events
    assert tokens("first") == 10


async def test_a_refused_runs_end_recorded_again_streams_one_error(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queued run refused when it starts, whose end meets 'database is locked' once: its
    stream has one `error` event (the retry used to store a second one)."""
    async with serving_graph(settings, tmp_path, monkeypatch, "ask", ASK_GRAPH) as (client, app):
        db = app.state.services.db
        await client.post("/threads", json={"thread_id": "t-rl", "graph_id": "ask"})
        await client.post("/threads/t-rl/runs/wait", json={"assistant_id": "ask", "input": {}})
        body: dict[str, Any] = {"assistant_id": "ask", "command": {"resume": "yes"}}
        with claims_held(app):
            first = (await client.post("/threads/t-rl/runs", json=body)).json()
            second = (await client.post("/threads/t-rl/runs", json=body)).json()
            calls = locked_once(db, monkeypatch, second["run_id"])
        await ended(client, "t-rl", first["run_id"])
        refused = await ended(client, "t-rl", second["run_id"])
        assert refused["__error__"]["error"] == "NotInterruptedError", refused
        assert calls == [second["run_id"]] * 2
        events = await db.events_after(second["run_id"], 0)
        assert [e["event"] for e in events].count("error") == 1, events


async def test_a_cancelled_runs_end_recorded_again_counts_its_tokens_once(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled run's end meets 'database is locked' once and is written again: /metrics
    counts what its finished steps spent once."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "slow").touch()  # `first` runs, `slow` waits
    source = HELD_GRAPH.replace("__HOLD__", repr(str(hold)))
    metrics.reset()
    async with serving_graph(settings, tmp_path, monkeypatch, "held_l", source) as (client, app):
        db = app.state.services.db
        await client.post("/threads", json={"thread_id": "t-cl", "graph_id": "held_l"})
        body = {"assistant_id": "held_l", "input": {}}
        run_id = (await client.post("/threads/t-cl/runs", json=body)).json()["run_id"]
        await wait_for_usage(client, "t-cl", "first")
        calls = locked_once(db, monkeypatch)
        cancel = await client.post(
            f"/threads/t-cl/runs/{run_id}/cancel", params={"action": "interrupt", "wait": True}
        )
        assert cancel.status_code == 204, cancel.text
        assert calls == [run_id, run_id]
        row = await db.get_run(run_id)
        assert row["status"] == "interrupted" and sorted(row["usage"]) == ["first"], row
    assert tokens("first") == 10


async def test_a_run_whose_end_could_not_be_recorded_is_taken_up_again(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database stays unavailable for longer than a lease while the end is recorded: the
    process gives up on it, and its own sweep hands the run to a next attempt once the lease
    has expired (it used to skip runs of its own process for good). The next attempt finds
    the run's checkpoints and records the end."""
    quick = settings.model_copy(update={"run_lease_s": 0.6, "run_sweep_interval_s": 0.1})
    async with serving_graph(quick, tmp_path, monkeypatch, "ask", ASK_GRAPH) as (client, app):
        db = app.state.services.db
        real_finish = db.finish_run
        failing = True

        async def unavailable(*args: Any, **kw: Any) -> Any:
            if failing:
                raise sqlite3.OperationalError("database is locked")
            return await real_finish(*args, **kw)

        monkeypatch.setattr(db, "finish_run", unavailable)
        await client.post("/threads", json={"thread_id": "t-u", "graph_id": "ask"})
        run = (
            await client.post("/threads/t-u/runs", json={"assistant_id": "ask", "input": {}})
        ).json()
        executor = app.state.services.executor
        for _ in range(300):  # the first attempt gives up
            if executor.active == 0 and (await db.get_run(run["run_id"]))["attempt"] == 1:
                break
            await asyncio.sleep(0.02)
        failing = False
        await ended(client, "t-u", run["run_id"])
        row = await db.get_run(run["run_id"])
        assert (row["status"], row["attempt"]) == ("interrupted", 2), row
        assert (await client.get("/threads/t-u")).json()["status"] == "interrupted"


async def test_runs_released_by_graceful_shutdowns_are_not_given_up_as_dead(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RUN_MAX_ATTEMPTS gives up on a run whose workers keep dying; a run released to the queue
    by graceful shutdowns (a rolling deploy, twice here) is not one of those: the next server
    finishes it (it used to end `error`, "gave up after 2 attempts whose worker stopped")."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "slow").touch()  # `first` runs, `slow` waits
    source = HELD_GRAPH.replace("__HOLD__", repr(str(hold)))
    quick = settings.model_copy(update={"shutdown_grace_s": 0.1, "run_max_attempts": 1})

    def server() -> Any:
        return serving_graph(quick, tmp_path, monkeypatch, "held_r", source)

    async with server() as (client, _):
        await client.post("/threads", json={"thread_id": "t-rel", "graph_id": "held_r"})
        body = {"assistant_id": "held_r", "input": {}}
        run_id = (await client.post("/threads/t-rel/runs", json=body)).json()["run_id"]
        await wait_for_usage(client, "t-rel", "first")  # checkpointed; `slow` waits
    async with server() as (client, app):  # attempt 2 waits at `slow` too, and is released
        for _ in range(500):
            if (await app.state.services.db.get_run(run_id))["attempt"] == 2:
                break
            await asyncio.sleep(0.01)
    (hold / "slow").unlink()
    async with server() as (client, app):
        finished = await ended(client, "t-rel", run_id)
        assert "__error__" not in finished, finished
        row = await app.state.services.db.get_run(run_id)
        assert (row["status"], row["attempt"], row["error"]) == ("interrupted", 3, None), row
        assert sorted(row["usage"]) == ["first", "slow"], row["usage"]
        shown = (await client.get(f"/threads/t-rel/runs/{run_id}")).json()["kwargs"]
        assert "released" not in shown  # the server's own bookkeeping


async def test_a_run_cancelled_by_the_process_going_away_is_released_not_interrupted(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C makes uvicorn quit at once: `asyncio.run` cancels every task, the runs'
    included, with no cancel requested. Such a run goes back to the queue and resumes on the
    next start (it used to be recorded `interrupted`, "cancelled", as if a client had cancelled
    it, and was never resumed)."""
    hold = tmp_path / "hold"
    hold.mkdir()
    (hold / "slow").touch()  # `first` runs, `slow` waits
    source = HELD_GRAPH.replace("__HOLD__", repr(str(hold)))
    async with serving_graph(settings, tmp_path, monkeypatch, "held_q", source) as (client, app):
        db, executor = app.state.services.db, app.state.services.executor
        await client.post("/threads", json={"thread_id": "t-q2", "graph_id": "held_q"})
        body = {"assistant_id": "held_q", "input": {}}
        run_id = (await client.post("/threads/t-q2/runs", json=body)).json()["run_id"]
        await wait_for_usage(client, "t-q2", "first")
        task = executor._tasks[run_id]
        task.cancel()  # what the event loop's teardown does; no reason given
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
        row = await db.get_run(run_id)
        assert (row["status"], row["error"], row["attempt"]) == ("pending", None, 1), row
    (hold / "slow").unlink()
    async with serving_graph(settings, tmp_path, monkeypatch, "held_q", source) as (client, app):
        finished = await ended(client, "t-q2", run_id)
        assert "__error__" not in finished, finished
        row = await app.state.services.db.get_run(run_id)
        assert (row["status"], row["attempt"]) == ("interrupted", 2), row  # stopped at `ask`
        assert row["error"] is None


async def test_two_requests_that_create_one_new_thread_both_run(api: Any) -> None:
    """`if_not_exists: create` twice at once on one new id, by one caller: one creates the
    thread, the other's run joins it (queued), instead of a 409 'taken' for the caller's own
    thread."""
    client, _ = api
    body = {
        "assistant_id": "supervisor",
        "input": {"messages": [{"role": "user", "content": "Write a blog post about shoes"}]},
        "if_not_exists": "create",
    }
    a, b = await asyncio.gather(
        client.post("/threads/t-new/runs", json=body), client.post("/threads/t-new/runs", json=body)
    )
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    for r in (a, b):
        assert "__error__" not in await ended(client, "t-new", r.json()["run_id"])
    assert len((await client.get("/threads/t-new/runs")).json()) == 2


async def test_another_tenants_thread_id_is_never_checked_against_its_state(
    api: Any,
) -> None:
    """`if_not_exists: create` on an id another tenant holds: the caller has no such thread, so
    its request is never checked against the other tenant's state (a pending approval, the
    shape of its answer) — it is refused as a taken id, the same whatever that thread holds."""
    client, app = api
    as_principal(app, "acme", "editor")
    await client.post("/threads", json={"thread_id": "t-acme"})
    asked = await client.post(
        "/threads/t-acme/runs/wait",
        json={
            "assistant_id": "supervisor",
            "input": {"messages": [{"role": "user", "content": PUBLISH_REQUEST}]},
        },
    )
    assert "__interrupt__" in asked.json()
    await client.post("/threads", json={"thread_id": "t-acme-idle"})
    as_principal(app, "globex", "editor")
    bodies = {
        "request": {"input": {"messages": [{"role": "user", "content": "Write a blog post"}]}},
        "answer": {"command": {"resume": {"type": "edit"}}},  # an answer that fits no approval
    }
    answers: dict[tuple[str, str], tuple[int, str]] = {}
    for thread_id in ("t-acme", "t-acme-idle", "t-nobody"):
        for kind, body in bodies.items():
            r = await client.post(
                f"/threads/{thread_id}/runs",
                json={"assistant_id": "supervisor", "if_not_exists": "create", **body},
            )
            answers[kind, thread_id] = (r.status_code, r.text.replace(thread_id, "ID"))
    taken = (409, '{"detail":"thread id \'ID\' is taken: choose another"}')
    assert answers["request", "t-acme"] == answers["request", "t-acme-idle"] == taken, answers
    # nothing to answer: as on an id nobody holds, whatever waits on the other tenant's thread
    assert answers["answer", "t-acme"][0] == 409, answers
    assert (
        answers["answer", "t-acme"]
        == answers["answer", "t-acme-idle"]
        == answers["answer", "t-nobody"]
    ), answers
    chat = await client.post("/chat", json={"message": "Write a blog post", "thread_id": "t-acme"})
    assert chat.status_code == 409 and "taken" in chat.json()["detail"], chat.text
