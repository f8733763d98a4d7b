"""The server as the official `langgraph-sdk` client and LangGraph Studio see it, in-process (ASGI,
SQLite, scripted model): where its answers must match langgraph-api's (`langgraph dev`) for a
client written against that one to work unchanged."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from langgraph_sdk.client import LangGraphClient

from app.settings import Settings
from tests.helpers import PUBLISH_REQUEST, served


@pytest.fixture
async def sdk(settings: Settings) -> AsyncIterator[LangGraphClient]:
    """The SDK's own client over the app in this process (what `get_client(url=...)` builds,
    with an ASGI transport instead of a socket)."""
    async with served(settings) as (http, _):
        yield LangGraphClient(http)


async def _threads(sdk: LangGraphClient, n: int, **metadata: Any) -> list[str]:
    return [
        (await sdk.threads.create(thread_id=f"t-{i}", metadata=metadata))["thread_id"]
        for i in range(n)
    ]


# --- searches: pagination -----------------------------------------------------------------------
async def test_assistant_search_pages_with_the_sdks_next_cursor(sdk: LangGraphClient) -> None:
    """`assistants.search(response_format="object")` reads the next page's offset from the
    `X-Pagination-Next` header (langgraph-api sends it); without it a client that pages by `next`
    stops after the first page."""
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = await sdk.assistants.search(limit=2, offset=offset, response_format="object")
        seen += [a["graph_id"] for a in page["assistants"]]
        offset = int(page["next"]) if page["next"] is not None else None
    assert sorted(seen) == ["content", "publishing", "research", "social", "supervisor"]


async def test_thread_search_sends_the_pagination_headers(sdk: LangGraphClient) -> None:
    await _threads(sdk, 3, team="a")
    http = sdk.http.client
    first = await http.post("/threads/search", json={"limit": 2})
    assert len(first.json()) == 2
    assert first.headers["X-Pagination-Next"] == "2"
    assert first.headers["X-Pagination-Total"] == "3"
    last = await http.post("/threads/search", json={"limit": 2, "offset": 2})
    assert len(last.json()) == 1 and "X-Pagination-Next" not in last.headers
    assert last.headers["X-Pagination-Total"] == "3"
    # Studio (a browser) may read them
    cors = await http.post(
        "/threads/search", json={}, headers={"Origin": "https://smith.langchain.com"}
    )
    exposed = cors.headers["access-control-expose-headers"].lower()
    assert "x-pagination-next" in exposed and "x-pagination-total" in exposed


# --- searches: select, sort -------------------------------------------------------------------
async def test_thread_search_and_run_list_return_only_the_selected_fields(
    sdk: LangGraphClient,
) -> None:
    """`select` (threads.search, runs.list) answers with those fields only, as langgraph-api
    does; a field it does not know is a 422."""
    (tid,) = await _threads(sdk, 1, team="a")
    found = await sdk.threads.search(select=["thread_id", "status"])
    assert found == [{"thread_id": tid, "status": "idle"}]
    with_state = await sdk.threads.search(select=["thread_id", "values", "state_updated_at"])
    assert set(with_state[0]) == {"thread_id", "values", "state_updated_at"}
    bad = await sdk.http.client.post("/threads/search", json={"select": ["secret"]})
    assert bad.status_code == 422

    await sdk.runs.wait(tid, "research", input={"messages": [{"role": "user", "content": "hi"}]})
    runs = await sdk.runs.list(tid, select=["run_id", "status", "langsmith_session_name"])
    assert len(runs) == 1 and set(runs[0]) == {"run_id", "status"}
    bad = await sdk.http.client.get(f"/threads/{tid}/runs", params={"select": "secret"})
    assert bad.status_code == 422


async def test_threads_have_state_updated_at_and_sort_by_it(sdk: LangGraphClient) -> None:
    """`state_updated_at` is a thread field and a sort key the SDK names (`ThreadSortBy`): it was
    a 422. It is the time of the thread's newest checkpoint (its creation before it has one)."""
    first, second = await _threads(sdk, 2)
    new = await sdk.threads.get(first)
    assert new["state_updated_at"] == new["created_at"]
    await sdk.runs.wait(first, "research", input={"messages": [{"role": "user", "content": "hi"}]})
    ran = await sdk.threads.get(first)
    assert ran["state_updated_at"] == (await sdk.threads.get_state(first))["created_at"]
    assert ran["state_updated_at"] > new["state_updated_at"]
    ordered = await sdk.threads.search(sort_by="state_updated_at", sort_order="desc")
    assert [t["thread_id"] for t in ordered] == [first, second]


# --- assistants ---------------------------------------------------------------------------------
async def test_assistant_versions_list_the_one_version(sdk: LangGraphClient) -> None:
    """Studio's assistant view lists an assistant's versions (`POST .../versions`, a 404 before)
    and can pick one (`POST .../latest`). A default assistant has version 1 only."""
    sup = await sdk.assistants.get("supervisor")
    versions = await sdk.assistants.get_versions(sup["assistant_id"])
    assert [(v["assistant_id"], v["version"], v["graph_id"]) for v in versions] == [
        (sup["assistant_id"], 1, "supervisor")
    ]
    assert await sdk.assistants.get_versions("supervisor", metadata={"created_by": "x"}) == []
    assert await sdk.assistants.set_latest(sup["assistant_id"], 1) == sup
    missing = await sdk.http.client.post(
        f"/assistants/{sup['assistant_id']}/latest", json={"version": 2}
    )
    assert missing.status_code == 404
    unknown = await sdk.http.client.post("/assistants/nope/versions", json={})
    assert unknown.status_code == 404


# --- state --------------------------------------------------------------------------------------
async def test_state_update_answers_with_the_new_checkpoint_in_every_shape(
    sdk: LangGraphClient,
) -> None:
    """langgraph-api answers a state update with the new head as `checkpoint`, and (for older
    clients, which read them) as `configurable` and its id as `checkpoint_id`."""
    (tid,) = await _threads(sdk, 1)
    await sdk.runs.wait(tid, "research", input={"messages": [{"role": "user", "content": "hi"}]})
    out = await sdk.threads.update_state(tid, {"messages": []}, as_node="write_brief")
    head = (await sdk.threads.get_state(tid))["checkpoint"]
    assert out == {"checkpoint": head, "configurable": head, "checkpoint_id": head["checkpoint_id"]}


# --- threads: the graph and assistant of their runs -----------------------------------------------
async def test_a_run_names_its_graph_and_assistant_in_the_threads_metadata(
    sdk: LangGraphClient,
) -> None:
    """As langgraph-api: a run puts `graph_id` and `assistant_id` into its thread's metadata
    (the latest run's), so a search on them — how Studio and agent-chat-ui list a graph's threads —
    finds a thread created without them. A thread created by the run has them too."""
    await check_run_metadata(sdk, "reject")


async def check_run_metadata(sdk: LangGraphClient, multitask_strategy: str) -> None:
    """(Also on Postgres, where `enqueue` is one statement unless there is metadata to merge.)"""
    research = (await sdk.assistants.get("research"))["assistant_id"]
    content = (await sdk.assistants.get("content"))["assistant_id"]
    (tid,) = await _threads(sdk, 1, team="a")
    hi = {"messages": [{"role": "user", "content": "hi"}]}
    await sdk.runs.wait(tid, "research", input=hi, multitask_strategy=multitask_strategy)  # type: ignore[arg-type]
    assert (await sdk.threads.get(tid))["metadata"] == {
        "team": "a",
        "graph_id": "research",
        "assistant_id": research,
    }
    for query in ({"graph_id": "research"}, {"assistant_id": research}):
        assert [t["thread_id"] for t in await sdk.threads.search(metadata=query)] == [tid]
    await sdk.runs.wait(tid, content, input=hi)  # by id: the latest run's graph and assistant
    meta = (await sdk.threads.get(tid))["metadata"]
    assert (meta["graph_id"], meta["assistant_id"]) == ("content", content)

    await sdk.runs.wait("t-new", "research", input=hi, if_not_exists="create")
    meta = (await sdk.threads.get("t-new"))["metadata"]
    assert (meta["graph_id"], meta["assistant_id"]) == ("research", research)


# --- runs ---------------------------------------------------------------------------------------
async def test_stateless_background_runs_and_batches(sdk: LangGraphClient) -> None:
    """`runs.create(None, ...)` (`POST /runs`) and `runs.create_batch` (`POST /runs/batch`) were
    404s. Each run gets a thread of its own; its result can be joined."""
    hi = {"messages": [{"role": "user", "content": "hi"}]}
    run = await sdk.runs.create(None, "research", input=hi)
    assert run["status"] == "pending" and run["thread_id"]
    result = await sdk.runs.join(run["thread_id"], run["run_id"])
    assert result["messages"][-1]["type"] == "ai"
    assert (await sdk.runs.get(run["thread_id"], run["run_id"]))["status"] == "success"

    batch = await sdk.runs.create_batch(
        [{"assistant_id": "research", "input": hi}, {"assistant_id": "content", "input": hi}]
    )
    assert [r["assistant_id"] for r in batch] == [
        (await sdk.assistants.get(g))["assistant_id"] for g in ("research", "content")
    ]
    assert len({r["thread_id"] for r in batch}) == 2
    for r in batch:
        await sdk.runs.join(r["thread_id"], r["run_id"])
    refused = await sdk.http.client.post(
        "/runs/batch", json=[{"assistant_id": "research", "input": hi}, {"assistant_id": "nope"}]
    )
    assert refused.status_code == 404
    assert len(await sdk.threads.search(metadata={"stateless": True}, limit=100)) == 3


async def test_assistants_have_the_ids_langgraph_dev_gives_them(sdk: LangGraphClient) -> None:
    """A graph's default assistant has the id langgraph-api gives it (so an id copied from Studio
    on `langgraph dev` works here); the id this server used before is still accepted, and a run
    started by it is recorded under the current one."""
    # langgraph_api.graph.NAMESPACE_GRAPH (importing it needs langgraph-api's settings)
    namespace = uuid.UUID("6ba7b821-9dad-11d1-80b4-00c04fd430c8")
    expected = str(uuid.uuid5(namespace, "supervisor"))
    assert (await sdk.assistants.get("supervisor"))["assistant_id"] == expected
    assert (await sdk.assistants.get(expected))["graph_id"] == "supervisor"
    former = str(uuid.uuid5(uuid.NAMESPACE_URL, "research"))
    assert (await sdk.assistants.get(former))["graph_id"] == "research"
    (tid,) = await _threads(sdk, 1)
    run = await sdk.runs.create(
        tid, former, input={"messages": [{"role": "user", "content": "hi"}]}
    )
    current = str(uuid.uuid5(namespace, "research"))
    assert run["assistant_id"] == current
    await sdk.runs.join(tid, run["run_id"])
    assert (await sdk.threads.get(tid))["metadata"]["assistant_id"] == current


async def test_a_copied_thread_has_the_state_history_and_pending_approval(
    sdk: LangGraphClient,
) -> None:
    """`threads.copy` (a 404 before): a new thread with the source's checkpoints — values,
    history, the approval waiting in the publishing subgraph — and metadata; it goes on on its
    own (accepting the approval there leaves the source waiting). On Postgres too:
    `tests/integration/test_server_compat_postgres.py`."""
    await check_thread_copy(sdk)


async def check_thread_copy(sdk: LangGraphClient) -> None:
    (tid,) = await _threads(sdk, 1, team="a")
    empty = await sdk.threads.copy(tid)  # no state yet
    assert empty["thread_id"] != tid and empty["values"] == {} and empty["status"] == "idle"
    await sdk.runs.wait(
        tid, "supervisor", input={"messages": [{"role": "user", "content": PUBLISH_REQUEST}]}
    )
    copy = await sdk.threads.copy(tid)
    cid = copy["thread_id"]
    assert copy["status"] == "interrupted" and copy["metadata"]["team"] == "a"
    source, copied = await sdk.threads.get_state(tid), await sdk.threads.get_state(cid)
    assert copied["values"] == source["values"] and copied["next"] == source["next"]
    assert copied["interrupts"] == source["interrupts"] != []
    assert copied["checkpoint"]["checkpoint_id"] == source["checkpoint"]["checkpoint_id"]
    assert copied["checkpoint"]["thread_id"] == cid
    sub = (await sdk.threads.get_state(cid, subgraphs=True))["tasks"][0]["state"]
    assert sub["next"] == ["approve"]
    history = await sdk.threads.get_history(tid, limit=100)
    assert [
        h["checkpoint"]["checkpoint_id"] for h in await sdk.threads.get_history(cid, limit=100)
    ] == [h["checkpoint"]["checkpoint_id"] for h in history]

    await sdk.runs.wait(cid, "supervisor", command={"resume": {"type": "accept"}})
    assert (await sdk.threads.get(cid))["status"] == "idle"
    assert (await sdk.threads.get(tid))["status"] == "interrupted"
    assert (await sdk.threads.get_state(tid))["checkpoint"] == source["checkpoint"]
    missing = await sdk.http.client.post("/threads/nope/copy")
    assert missing.status_code == 404

    # a stateless run's thread kept: its copy is an ordinary thread (not deleted once old)
    hi = {"messages": [{"role": "user", "content": "hi"}]}
    run = await sdk.runs.create(None, "research", input=hi, on_completion="keep")
    await sdk.runs.join(run["thread_id"], run["run_id"])
    kept = await sdk.threads.copy(run["thread_id"])
    assert "stateless" not in kept["metadata"] and kept["metadata"]["graph_id"] == "research"


# --- streams as Studio reads them ---------------------------------------------------------------
async def test_debug_checkpoint_events_name_their_checkpoints(sdk: LangGraphClient) -> None:
    """A `debug` checkpoint event carries `checkpoint` and `parent_checkpoint` objects besides
    `config`/`parent_config`, as langgraph-api sends them (Studio's debug view reads them); a
    subgraph task's state is named as its `checkpoint`."""
    (tid,) = await _threads(sdk, 1)
    payloads = [
        p.data["payload"]
        async for p in sdk.runs.stream(
            tid,
            "supervisor",
            input={"messages": [{"role": "user", "content": PUBLISH_REQUEST}]},
            stream_mode="debug",
        )
        if p.event == "debug" and p.data["type"] == "checkpoint"
    ]
    first, last = payloads[0], payloads[-1]
    assert first["parent_checkpoint"] is None
    assert first["checkpoint"]["checkpoint_id"] == first["config"]["configurable"]["checkpoint_id"]
    assert last["checkpoint"] == (await sdk.threads.get_state(tid))["checkpoint"]
    assert last["parent_checkpoint"]["checkpoint_id"] == payloads[-2]["checkpoint"]["checkpoint_id"]
    assert all(p["checkpoint"]["thread_id"] == tid for p in payloads)
    # the publishing subgraph, waiting for the approval: its task names the subgraph checkpoint
    (waiting,) = last["tasks"]
    assert "state" not in waiting and waiting["checkpoint"]["checkpoint_ns"].startswith(
        "publishing:"
    )


# --- Studio, from the browser -------------------------------------------------------------------
@pytest.mark.parametrize(
    "origin", ["https://smith.langchain.com", "https://eu.smith.langchain.com"]
)
async def test_studio_in_either_langsmith_region_may_call_the_api(
    sdk: LangGraphClient, origin: str
) -> None:
    """By default Studio may call the API from LangSmith's US and its EU region (the EU Studio's
    requests were refused by the browser: no CORS headers for its origin)."""
    preflight = await sdk.http.client.options(
        "/assistants/search",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key",
            "Access-Control-Request-Private-Network": "true",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert preflight.headers["access-control-allow-private-network"] == "true"
    found = await sdk.http.client.post("/assistants/search", json={}, headers={"Origin": origin})
    assert found.headers["access-control-allow-origin"] == origin


async def test_assistant_writes_are_refused_saying_why(sdk: LangGraphClient) -> None:
    """Creating, changing or deleting an assistant (Studio's "new assistant", the SDK's
    assistants.create/update/delete) is a 422 that says assistants are read-only here (it was a
    404 "Not Found" or a 405)."""
    from langgraph_sdk.errors import UnprocessableEntityError

    sup = (await sdk.assistants.get("supervisor"))["assistant_id"]
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: sdk.assistants.create("supervisor", name="mine"),
        lambda: sdk.assistants.update(sup, name="mine"),
        lambda: sdk.assistants.delete(sup),
    ]
    for call in calls:
        with pytest.raises(UnprocessableEntityError, match="read-only"):
            await call()
    assert (await sdk.assistants.get(sup))["name"] == "supervisor"


async def test_a_metadata_filter_matches_part_of_a_nested_object(sdk: LangGraphClient) -> None:
    """As langgraph-api filters (Postgres' `@>` on objects): `{"user": {"id": 1}}` finds a thread
    whose metadata `user` holds more keys; a key the thread lacks never matches, not even with
    a null value."""
    await sdk.threads.create(thread_id="t-nested", metadata={"user": {"id": 1, "name": "a"}})
    await sdk.threads.create(thread_id="t-other", metadata={"user": {"id": 2}})
    found = await sdk.threads.search(metadata={"user": {"id": 1}})
    assert [t["thread_id"] for t in found] == ["t-nested"]
    assert await sdk.threads.count(metadata={"user": {"id": 1}}) == 1
    assert await sdk.threads.search(metadata={"user": {"id": 1, "name": "b"}}) == []
    assert await sdk.threads.search(metadata={"team": None}) == []
