"""The server on Postgres against input Postgres cannot store: a NUL character in an id (a path
id is a 404, a body id a 422 — both were 500s from psycopg.DataError) and a lone surrogate
(refused at the boundary; one a graph produces is stored escaped in the event log)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from app.server.events import encode_event
from app.settings import Settings
from app.storage import migrate
from tests.helpers import served

pytestmark = pytest.mark.integration

RUN = {"assistant_id": "supervisor", "input": {"messages": ["hi"]}}


@pytest.fixture
async def pg_api(pg_dsn: str, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    s = Settings(
        model_provider="scripted", data_dir=tmp_path / "data", database_url=SecretStr(pg_dsn)
    )
    await migrate(s)
    async with served(s, workers=0, raise_app_exceptions=False) as (client, app):
        assert (await client.post("/threads", json={"thread_id": "t-1"})).status_code == 200
        yield client, app


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/threads/a%00b", None, 404),
        ("GET", "/threads/a%00b/state", None, 404),
        ("GET", "/threads/t-1/runs/a%00b", None, 404),
        ("POST", "/threads/a%00b/runs", RUN, 404),
        ("GET", "/keys/a%00b", None, 404),
        ("POST", "/threads/search", {"ids": ["a\u0000b"]}, 422),
        (
            "POST",
            "/threads/t-1/state/checkpoint",
            {"checkpoint": {"checkpoint_id": "a\u0000"}},
            422,
        ),
        ("GET", "/threads/t-1/history?before=a%00b", None, 422),
        # JSON text escapes the character: metadata with one is stored and read back
        ("POST", "/threads", {"metadata": {"k": "a\u0000b"}}, 200),
        ("PATCH", "/threads/t-1", {"metadata": {"k": "a\u0000b"}}, 200),
    ],
)
async def test_a_nul_in_an_id_is_a_4xx_on_postgres(
    pg_api: Any, method: str, path: str, body: object, expected: int
) -> None:
    client, _ = pg_api
    r = await client.request(method, path, json=body)
    assert r.status_code == expected, r.text
    assert (await client.post("/threads/search", json={})).status_code == 200


async def test_lone_surrogates_are_refused_in_input_and_stored_escaped_in_events(
    pg_api: Any,
) -> None:
    """A lone surrogate in a run's input is a 422 with nothing queued (it failed the run: the
    event log could not encode it); one a graph produces is stored as its JSON escape."""
    client, app = pg_api
    raw = b'{"assistant_id":"supervisor","input":{"messages":["hi \\ud800"]}}'
    r = await client.post(
        "/threads/t-1/runs", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "surrogate" in r.json()["detail"], r.text
    assert (await client.get("/threads/t-1/runs")).json() == []
    db = app.state.services.db
    text = encode_event("values", {"t": "x \udc80"})  # what the run's worker appends
    (event_id,) = await db.append_events("r-s", [("values", text)])
    (row,) = await db.events_after("r-s", event_id - 1, limit=10)
    assert json.loads(row["data"]) == {"t": "x \udc80"}
