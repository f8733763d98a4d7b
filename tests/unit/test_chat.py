"""The plain SSE chat endpoint (`/chat`) in-process (ASGI, SQLite, scripted model): the events the
README documents, approvals (a repeated answer never answers the next item), reconnection with
`Last-Event-ID`, tenants and roles."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.server.app import create_app
from app.settings import Settings
from tests.helpers import CAMPAIGN, PUBLISH_REQUEST, http_scope, served
from tests.unit.test_server_api import as_principal, sse_events

README = Path(__file__).resolve().parents[2] / "README.md"


async def chat(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = await client.post(url, json=body)
    assert r.status_code == 200, r.text
    return sse_events(r.text)


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["event"] == kind]


async def outbox(app: Any) -> list[Any]:
    return list(await app.state.services.db.list_outbox())


async def test_a_repeated_approval_answer_never_answers_the_next_item(api: Any) -> None:
    """The campaign asks for approval of one item after another. An answer that names the
    approval it answers (`interrupt_id`, from the `approval` event) is refused with 409 once
    that approval was answered, and the next item still waits: a retried "accept" must not
    schedule an item nobody has seen."""
    client, app = api
    events = await chat(client, "/chat", {"message": CAMPAIGN, "thread_id": "camp"})
    first = of_type(events, "approval")[0]["interrupt_id"]
    answer = {"answer": {"type": "accept"}, "interrupt_id": first}
    events = await chat(client, "/chat/camp/approval", answer)
    assert of_type(events, "end")[0]["status"] == "interrupted"
    second = of_type(events, "approval")[0]["interrupt_id"]
    assert second != first

    again = await client.post("/chat/camp/approval", json=answer)
    assert again.status_code == 409, again.text
    assert "already answered" in again.json()["detail"] and second in again.json()["detail"]
    state = (await client.get("/threads/camp/state")).json()
    assert [i["id"] for i in state["interrupts"]] == [second]

    asked = [first, second]  # every approval answered once, each by its id
    while of_type(events, "end")[0]["status"] == "interrupted":
        pending = of_type(events, "approval")[0]["interrupt_id"]
        events = await chat(
            client, "/chat/camp/approval", {"answer": {"type": "accept"}, "interrupt_id": pending}
        )
        asked += [a["interrupt_id"] for a in of_type(events, "approval")]
    assert of_type(events, "end")[0]["status"] == "success"
    assert len(await outbox(app)) == len(set(asked)) == len(asked)


async def test_an_interrupt_id_of_no_approval_is_refused(api: Any) -> None:
    client, _ = api
    await chat(client, "/chat", {"message": PUBLISH_REQUEST, "thread_id": "one"})
    r = await client.post(
        "/chat/one/approval", json={"answer": {"type": "accept"}, "interrupt_id": "nope"}
    )
    assert r.status_code == 409 and "already answered" in r.json()["detail"]
    r = await client.post(
        "/chat/one/approval", json={"answer": {"type": "accept"}, "interrupt_id": 5}
    )
    assert r.status_code == 422 and "body.interrupt_id" in r.json()["detail"]
    r = await client.post(
        "/chat/one/approval", json={"answer": {"type": "accept"}, "interrupt_id": "x" * 201}
    )
    assert r.status_code == 422 and "at most 200 characters" in r.json()["detail"]
    r = await client.post("/chat/one/approval", json={"answer": "accept"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("body.answer: ") and '{"type": "accept"}' in detail


def test_a_queued_answer_is_checked_against_the_approval_pending_when_it_starts() -> None:
    """The executor checks a queued run again when it starts (`check_turn`): the interrupt id
    the chat answer carries is part of that check."""
    from app.errors import StaleApprovalError
    from app.runner import ThreadView
    from app.server.turns import check_turn
    from graphs.context import MarketingContext

    view = ThreadView(
        "t", True, "interrupted", interrupts=[{"id": "b", "value": [{"question": "?"}]}]
    )
    check_turn(view, None, {"resume": {"type": "accept"}, "interrupt_id": "b"}, MarketingContext())
    with pytest.raises(StaleApprovalError, match="'a' on thread 't' was already answered"):
        check_turn(
            view, None, {"resume": {"type": "accept"}, "interrupt_id": "a"}, MarketingContext()
        )


async def test_a_dropped_chat_stream_resumes_from_last_event_id(api: Any) -> None:
    """`GET /chat/{thread_id}/stream` (the `Location` of every chat stream) replays the events
    after `Last-Event-ID` — exactly the ones the dropped stream had still to send — then the
    `final` text and `end`; without the header, all of them."""
    client, _ = api
    r = await client.post("/chat", json={"message": PUBLISH_REQUEST, "thread_id": "drop"})
    assert r.status_code == 200
    run_id = of_type(sse_events(r.text), "run")[0]["run_id"]
    assert r.headers["location"] == f"/chat/drop/stream?run_id={run_id}"
    answer = of_type(sse_events(r.text), "approval")[0]["interrupt_id"]
    r = await client.post(
        "/chat/drop/approval", json={"answer": {"type": "accept"}, "interrupt_id": answer}
    )
    original = sse_events(r.text)
    with_ids = [e for e in original if e.get("id")]
    assert len(with_ids) > 4 and of_type(original, "final")[0]["text"]

    cut = with_ids[len(with_ids) // 2]["id"]  # the last event the client saw
    again = await client.get(r.headers["location"], headers={"Last-Event-ID": cut})
    assert again.status_code == 200 and again.headers["location"] == r.headers["location"]
    resumed = sse_events(again.text)
    assert resumed[0]["event"] == "run"  # which run this is (no id: it moves no cursor)
    expected = [e for e in original if e.get("id") and int(e["id"]) > int(cut)]
    assert [e for e in resumed if e.get("id")] == expected
    assert [e["data"] for e in resumed if not e.get("id")] == [
        e["data"] for e in original if not e.get("id")
    ]  # run, final, end

    latest = await client.get("/chat/drop/stream")  # the thread's latest run, from the start
    assert sse_events(latest.text) == original


async def test_chat_stream_tenants_roles_and_unknown_ids(api: Any) -> None:
    client, app = api
    r = await client.post("/chat", json={"message": PUBLISH_REQUEST, "thread_id": "mine"})
    run_id = of_type(sse_events(r.text), "run")[0]["run_id"]
    await client.post("/threads", json={"thread_id": "empty"})
    for url in ("/chat/nope/stream", "/chat/mine/stream?run_id=nope", "/chat/empty/stream"):
        assert (await client.get(url)).status_code == 404, url
    as_principal(app, "default", "viewer")  # reading a stream is a viewer's right
    assert (await client.get(f"/chat/mine/stream?run_id={run_id}")).status_code == 200
    for url, body in (
        ("/chat", {"message": "hello"}),
        ("/chat/mine/approval", {"answer": {"type": "accept"}}),
    ):  # ... posting is not
        r = await client.post(url, json=body)
        assert r.status_code == 403 and "editor" in r.json()["detail"], url
    as_principal(app, "other", "admin")
    for url in ("/chat/mine/stream", f"/chat/mine/stream?run_id={run_id}"):
        r = await client.get(url)
        assert r.status_code == 404 and "not found" in r.json()["detail"], url
    r = await client.post("/chat/mine/approval", json={"answer": {"type": "accept"}})
    assert r.status_code == 404


async def test_final_is_the_runs_own_answer_on_a_later_reconnect(api: Any) -> None:
    """`final` is the answer the run produced (from its own events), not the thread's newest
    message: reconnecting to an earlier run after a later one answered gives the earlier text,
    and so does a reconnect after its tokens were sent."""
    client, _ = api
    first = await chat(
        client, "/chat", {"message": "Write a blog post about TerraRun", "thread_id": "f"}
    )
    run_id = of_type(first, "run")[0]["run_id"]
    text = of_type(first, "final")[0]["text"]
    later = await chat(
        client, "/chat", {"message": "Write an email about TerraRun", "thread_id": "f"}
    )
    assert of_type(later, "final")[0]["text"] != text
    last_id = [e["id"] for e in first if e.get("id")][-1]
    for headers in ({}, {"Last-Event-ID": last_id}):
        again = sse_events(
            (await client.get(f"/chat/f/stream?run_id={run_id}", headers=headers)).text
        )
        assert of_type(again, "final") == [{"type": "final", "text": text}]
        assert of_type(again, "end")[0]["status"] == "success"


async def test_conflicts_tell_a_chat_client_what_it_can_do(settings: Settings) -> None:
    """The 409s name the chat endpoint's own remedies: a run in progress -> follow it with
    GET /chat/{id}/stream (a chat body has no `multitask_strategy`, which the SDK routes' message
    suggested); a pending approval -> POST /chat/{id}/approval (not `mkt chat`)."""
    async with served(settings.model_copy(update={"scripted_latency_ms": 300})) as (client, _):
        await client.post("/threads", json={"thread_id": "busy"})
        r = await client.post(
            "/threads/busy/runs",
            json={"assistant_id": "supervisor", "input": {"messages": [PUBLISH_REQUEST]}},
        )
        assert r.status_code == 200, r.text
        for url, body in (
            ("/chat", {"message": "hello", "thread_id": "busy"}),
            ("/chat/busy/approval", {"answer": {"type": "accept"}}),
        ):
            r = await client.post(url, json=body)
            assert r.status_code == 409, r.text
            detail = r.json()["detail"]
            assert "GET /chat/busy/stream" in detail and "multitask_strategy" not in detail
        await client.get("/chat/busy/stream")  # to its end: waiting for the approval
        r = await client.post("/chat", json={"message": "hello", "thread_id": "busy"})
        assert r.status_code == 409 and "POST /chat/busy/approval" in r.json()["detail"]


def documented_events() -> dict[str, Any]:
    """The chat event table of the README: event type -> its example `data`, as JSON (`…`
    elisions dropped, `{…}` read as `{}`, `"a" | "b"` alternatives as the first)."""
    section = README.read_text().split("### Chat endpoint", 1)[1].split("\n## ", 1)[0]
    examples: dict[str, Any] = {}
    for kind, example in re.findall(r"^\| `(\w+)` \| `(\{.*?\})`", section, flags=re.M):
        text = example.replace("{…}", "{}").replace("\\|", "|")
        text = re.sub(r",\s*…", "", text)
        text = re.sub(r'("[^"]*")(\s*\|\s*"[^"]*")+', r"\1", text)
        examples[kind] = json.loads(text)
    return examples


def same_keys(documented: Any, sent: Any, where: str) -> None:
    """`sent` has exactly the documented keys, recursively where the README shows them."""
    if isinstance(documented, dict) and documented:
        assert isinstance(sent, dict) and set(sent) == set(documented), (where, sent)
        for key, value in documented.items():
            same_keys(value, sent[key], f"{where}.{key}")
    elif isinstance(documented, list) and documented and sent:
        same_keys(documented[0], sent[0], f"{where}[0]")


async def test_every_documented_event_is_sent_as_documented(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each event type in the README's table is sent, with exactly the keys its example shows
    (nested ones too), and the stream sends no type the table leaves out."""
    from graphs import supervisor

    documented = documented_events()
    assert set(documented) == {
        "run", "plan", "agent_start", "agent_done", "token", "approval", "final", "error", "end"
    }  # fmt: skip
    client, _ = api
    events = await chat(client, "/chat", {"message": PUBLISH_REQUEST, "thread_id": "doc"})
    pending = of_type(events, "approval")[0]["interrupt_id"]
    events += await chat(
        client, "/chat/doc/approval", {"answer": {"type": "accept"}, "interrupt_id": pending}
    )

    def broken(state: Any) -> Any:
        raise ValueError("the answer cannot be written")

    monkeypatch.setattr(supervisor, "_facts", broken)  # the answer node fails
    failed = await chat(
        client, "/chat", {"message": "Write a blog post about TerraRun", "thread_id": "doc"}
    )
    assert of_type(failed, "end")[0]["status"] == "error" and not of_type(failed, "final")
    events += failed

    assert {e["event"] for e in events} == set(documented)
    for e in events:
        assert e["data"]["type"] == e["event"]
        same_keys(documented[e["event"]], e["data"], e["event"])
    statuses = {d["status"] for d in of_type(events, "end")}
    assert statuses == {"interrupted", "success", "error"}


async def test_a_cancelled_chat_run_ends_interrupted_without_an_approval(
    settings: Settings,
) -> None:
    """As the README says: a cancelled run's chat stream ends `interrupted` with no `approval`
    before it and no `final`."""
    async with served(settings.model_copy(update={"scripted_latency_ms": 300})) as (client, _):
        streaming = asyncio.create_task(
            client.post("/chat", json={"message": CAMPAIGN, "thread_id": "cx"})
        )
        for _ in range(200):
            runs = (await client.get("/threads/cx/runs")).json() if not streaming.done() else []
            if isinstance(runs, list) and runs and runs[0]["status"] == "running":
                break
            await asyncio.sleep(0.02)
        r = await client.post(f"/threads/cx/runs/{runs[0]['run_id']}/cancel?wait=true")
        assert r.status_code in (200, 202, 204), r.text
        events = sse_events((await streaming).text)
    assert of_type(events, "end")[0]["status"] == "interrupted"
    assert not of_type(events, "approval") and not of_type(events, "final")


async def test_the_run_carries_on_when_the_chat_client_goes_away(settings: Settings) -> None:
    """A client that disconnects after the first event does not stop the run: it reaches its
    approval, and the chat stream reconnected later has the whole of it."""
    app = create_app(settings.model_copy(update={"scripted_latency_ms": 100}))
    async with app.router.lifespan_context(app):
        body = json.dumps({"message": PUBLISH_REQUEST, "thread_id": "gone"}).encode()
        first_chunk = asyncio.Event()
        sent: list[dict[str, Any]] = []
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await first_chunk.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                first_chunk.set()

        scope = http_scope(
            "POST", "/chat", [(b"content-type", b"application/json"), (b"host", b"test")]
        )
        await asyncio.wait_for(app(scope, receive, send), timeout=60)
        assert sent[0]["status"] == 200
        streamed = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        assert b"event: run" in streamed and b"event: end" not in streamed  # cut early

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            events = sse_events((await client.get("/chat/gone/stream")).text)  # to its end
            assert of_type(events, "end")[0]["status"] == "interrupted"
            assert of_type(events, "approval")
            assert (await client.get("/threads/gone")).json()["status"] == "interrupted"
