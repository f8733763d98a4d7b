"""The publishing sub-agent on its own: approval requests, resume values, outbox idempotency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from app.db import AppDB, open_sqlite_db
from app.settings import Settings
from app.storage import set_active_db
from graphs import publishing
from graphs.context import MarketingContext
from graphs.state import Artifact


def item(aid: str, platform: str | None, body: str, kind: str = "post") -> Artifact:
    return Artifact(
        id=aid,
        kind=kind,
        platform=platform,
        title=f"{aid} title",
        body=body,
        hashtags=[],  # type: ignore[typeddict-item]
        version=1,
        agent="social" if platform else "content",
        step_id=aid,
        score=0.8,
        status="draft",
    )


ITEMS = [
    item("post-x", "x", "Meet TerraRun. #TerraRun"),
    item("blog", None, "Long blog text.", "blog"),
]


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[AppDB]:
    app_db, conn = await open_sqlite_db(settings.sqlite_path)
    await app_db.migrate()
    set_active_db(app_db)
    yield app_db
    set_active_db(None)
    await conn.close()


@pytest.fixture
def graph() -> Any:
    return publishing.builder.compile(checkpointer=InMemorySaver())


CFG = {"configurable": {"thread_id": "pub-1"}}
INPUT = {"step_id": "publish", "items": ITEMS, "publish_at": "2026-11-24T09:00+01:00"}


async def pending(graph: Any) -> list[Any]:
    return list((await graph.aget_state(CFG)).interrupts)


async def test_each_item_gets_one_agent_inbox_request(graph: Any, db: AppDB) -> None:
    await graph.ainvoke(INPUT, CFG, context=MarketingContext())
    [intr] = await pending(graph)
    assert isinstance(intr.value, list) and len(intr.value) == 1
    req = intr.value[0]
    assert req["action_request"]["action"] == "publish_post"
    assert req["action_request"]["args"]["artifact_id"] == "post-x"
    assert req["action_request"]["args"]["scheduled_at"] == "2026-11-24T09:00+01:00"
    assert "Length" in req["description"] and "/280" in req["description"]
    assert await db.list_outbox() == [], "nothing is written before approval"

    await graph.ainvoke(Command(resume={"type": "accept"}), CFG, context=MarketingContext())
    [intr] = await pending(graph)
    assert intr.value[0]["action_request"]["action"] == "publish_blog"
    assert await db.list_outbox() == [], "still nothing: approvals come first, then the writes"

    out = await graph.ainvoke(Command(resume=[{"type": "accept"}]), CFG, context=MarketingContext())
    rows = await db.list_outbox()
    assert sorted((r["artifact_id"], r["platform"], r["scheduled_at"]) for r in rows) == [
        ("blog", "blog", "2026-11-24T08:00:00+00:00"),
        ("post-x", "x", "2026-11-24T08:00:00+00:00"),
    ]
    assert out["results"]["publish"]["status"] == "done"
    assert {s["artifact_id"] for s in out["scheduled"]} == {"post-x", "blog"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"type": "edit"}, "needs args"),
        ({"type": "edit", "args": {"title": "no body"}}, "non-empty 'body'"),
        ({"type": "respond"}, "respond"),
        ({"type": "publish"}, "unknown response type"),
        ("yes", "expected a response"),
        ([{"type": "accept"}, {"type": "accept"}], "list of 2"),
        ({"type": "edit", "args": {"body": "x" * 400}}, "breaks the platform rules"),
        ({"type": "edit", "args": {"body": "ok", "scheduled_at": "soonish"}}, "ISO-8601"),
    ],
)
async def test_malformed_resume_value_re_asks_the_same_item_with_the_error(
    graph: Any, db: AppDB, bad: Any, message: str
) -> None:
    await graph.ainvoke(INPUT, CFG, context=MarketingContext())
    await graph.ainvoke(Command(resume=bad), CFG, context=MarketingContext())
    [intr] = await pending(graph)
    req = intr.value[0]
    assert req["action_request"]["args"]["artifact_id"] == "post-x"
    assert "could not be used" in req["description"] and message in req["description"]
    assert await db.list_outbox() == []
    # and a good answer afterwards proceeds normally
    await graph.ainvoke(Command(resume={"type": "ignore"}), CFG, context=MarketingContext())
    assert (await pending(graph))[0].value[0]["action_request"]["args"]["artifact_id"] == "blog"


async def test_respond_and_ignore_write_nothing(graph: Any, db: AppDB) -> None:
    await graph.ainvoke(INPUT, CFG, context=MarketingContext())
    await graph.ainvoke(
        Command(resume={"type": "respond", "args": "too salesy"}), CFG, context=MarketingContext()
    )
    out = await graph.ainvoke(Command(resume={"type": "ignore"}), CFG, context=MarketingContext())
    assert await db.list_outbox() == []
    result = out["results"]["publish"]
    assert result["status"] == "needs_revision"
    assert result["revisions"] == [{"artifact_id": "post-x", "feedback": "too salesy"}]
    assert out["artifacts"]["blog"]["status"] == "rejected"


async def test_outbox_write_happens_once_when_the_node_re_runs(graph: Any, db: AppDB) -> None:
    await graph.ainvoke(INPUT, CFG, context=MarketingContext())
    await graph.ainvoke(Command(resume={"type": "accept"}), CFG, context=MarketingContext())
    await graph.ainvoke(Command(resume={"type": "accept"}), CFG, context=MarketingContext())
    first = await db.list_outbox()
    assert len(first) == 2

    # replay from the checkpoint just before `enqueue`: the node runs again, as after a crash
    history = [s async for s in graph.aget_state_history(CFG)]
    before = next(s for s in history if s.next == ("enqueue",))
    out = await graph.ainvoke(None, before.config, context=MarketingContext())
    again = await db.list_outbox()
    assert [(r["id"], r["idempotency_key"]) for r in again] == [
        (r["id"], r["idempotency_key"]) for r in first
    ]
    assert sorted(s["outbox_id"] for s in out["scheduled"]) == sorted(r["id"] for r in first)


async def test_outbox_enqueue_is_idempotent_and_supersedes_older_versions(db: AppDB) -> None:
    from datetime import UTC, datetime

    when = datetime(2026, 11, 24, 9, tzinfo=UTC)
    kwargs: dict[str, Any] = dict(
        thread_id="t",
        artifact_id="post-x",
        platform="x",
        kind="post",
        title="",
        body="v1",
        scheduled_at=when,
    )
    row1, created1 = await db.enqueue(version=1, **kwargs)
    row1b, created1b = await db.enqueue(version=1, **kwargs)
    assert (created1, created1b) == (True, False) and row1["id"] == row1b["id"]
    _, created2 = await db.enqueue(version=2, **{**kwargs, "body": "v2"})
    assert created2
    rows = await db.list_outbox(thread_id="t")
    assert [(r["version"], r["status"]) for r in rows] == [(1, "superseded"), (2, "scheduled")]


async def test_dry_run_publisher_publishes_due_items_exactly_once(db: AppDB) -> None:
    from datetime import UTC, datetime, timedelta

    from tools.publishers import DryRunPublisher

    now = datetime(2026, 11, 24, 9, tzinfo=UTC)
    base: dict[str, Any] = dict(
        thread_id="t", platform="x", kind="post", title="", body="b", version=1
    )
    await db.enqueue(artifact_id="due", scheduled_at=now - timedelta(minutes=1), **base)
    await db.enqueue(artifact_id="later", scheduled_at=now + timedelta(days=1), **base)
    pub = DryRunPublisher(db)
    first = await pub.publish_due(now)
    second = await pub.publish_due(now)
    assert [r["artifact_id"] for r in first] == ["due"] and second == []
    statuses = {r["artifact_id"]: r["status"] for r in await db.list_outbox()}
    assert statuses == {"due": "published", "later": "scheduled"}
