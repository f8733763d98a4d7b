"""API keys end to end: `mkt keys create` then `mkt serve` on Postgres, driven by the official
`langgraph-sdk` client with `api_key=` (sent as `x-api-key`). Tenant B sees none of tenant A's
threads or runs (404 everywhere, nothing in search results); a viewer reads but cannot start a
run; a request without a key is refused once keys exist; the server binds beyond loopback only
with keys."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.serving import MKT, Server, migrate, start_server, stop_server, user
from tests.integration.serving import server_env as _env

langgraph_sdk = pytest.importorskip("langgraph_sdk")
from langgraph_sdk.errors import NotFoundError, PermissionDeniedError  # noqa: E402

pytestmark = pytest.mark.integration


def create_key(env: dict[str, str], role: str, tenant: str) -> str:
    out = subprocess.run(
        [
            *MKT,
            "keys",
            "create",
            "--role",
            role,
            "--tenant",
            tenant,
            "--name",
            f"{tenant}-{role}",
            "--json",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return str(json.loads(out.stdout.strip().splitlines()[-1])["key"])


@pytest.fixture(scope="module")
def keyed(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from tests.pg import fresh_database

    tmp = tmp_path_factory.mktemp("server-auth")
    with fresh_database(pg_admin_dsn) as dsn:
        env = _env(dsn, tmp / "data")
        migrate(env)
        keys = {
            "a_editor": create_key(env, "editor", "tenant-a"),
            "a_viewer": create_key(env, "viewer", "tenant-a"),
            "b_editor": create_key(env, "editor", "tenant-b"),
        }
        srv = start_server(env, tmp / "server.log")
        try:
            yield {"server": srv, "keys": keys, "env": env}
        except BaseException:
            print(srv.log())
            raise
        finally:
            stop_server(srv)


async def assert_404(call: Any) -> None:
    """The SDK raises NotFoundError for most routes and a plain HTTPStatusError for some (join)."""
    with pytest.raises((NotFoundError, httpx.HTTPStatusError)) as caught:
        await call
    if isinstance(caught.value, httpx.HTTPStatusError):
        assert caught.value.response.status_code == 404


def sdk(server: Server, key: str | None) -> Any:
    return langgraph_sdk.get_client(url=server.url, api_key=key)


async def test_tenant_b_cannot_see_tenant_a_and_a_viewer_cannot_start_a_run(
    keyed: dict[str, Any],
) -> None:
    server, keys = keyed["server"], keyed["keys"]
    a, viewer, b = (
        sdk(server, keys["a_editor"]),
        sdk(server, keys["a_viewer"]),
        sdk(server, keys["b_editor"]),
    )
    thread = await a.threads.create(metadata={"campaign": "terrarun"})
    tid = thread["thread_id"]
    run = await a.runs.wait(
        tid, "supervisor", input=user("Research what runners say about carbon-plated trail shoes")
    )
    assert run is not None
    runs = await a.runs.list(tid)
    assert runs and runs[0]["thread_id"] == tid
    rid = runs[0]["run_id"]

    # tenant B: every route answers 404, search shows nothing of A's
    for call in (
        lambda: b.threads.get(tid),
        lambda: b.threads.get_state(tid),
        lambda: b.threads.get_history(tid),
        lambda: b.threads.update(tid, metadata={"x": 1}),
        lambda: b.runs.list(tid),
        lambda: b.runs.get(tid, rid),
        lambda: b.runs.join(tid, rid),
        lambda: b.runs.create(tid, "supervisor", input=user("hijack this thread")),
        lambda: b.threads.delete(tid),
    ):
        await assert_404(call())

    async def join_stream() -> None:
        async for _ in b.runs.join_stream(tid, rid):
            pass

    await assert_404(join_stream())
    assert tid not in {t["thread_id"] for t in await b.threads.search(limit=100)}
    assert tid not in {
        t["thread_id"] for t in await b.threads.search(metadata={"campaign": "terrarun"})
    }

    # the viewer of tenant A reads, but cannot start a run or change state
    assert (await viewer.threads.get(tid))["thread_id"] == tid
    assert (await viewer.threads.get_state(tid))["values"]["messages"]
    with pytest.raises(PermissionDeniedError):
        await viewer.runs.create(tid, "supervisor", input=user("Write a blog post"))
    with pytest.raises(PermissionDeniedError):
        await viewer.threads.create()
    assert [r["run_id"] for r in await a.runs.list(tid)] == [rid]  # nothing was queued

    # A still owns it, untouched by B's attempts
    assert (await a.threads.get(tid))["metadata"].get("campaign") == "terrarun"


async def test_requests_without_a_valid_key_are_refused(keyed: dict[str, Any]) -> None:
    server = keyed["server"]
    async with httpx.AsyncClient(base_url=server.url) as http:
        missing = await http.post("/threads", json={})
        assert missing.status_code == 401 and "key" in missing.json()["detail"].lower()
        unknown = await http.post("/threads", json={}, headers={"x-api-key": "mkt_000000000000_x"})
        assert unknown.status_code == 401
        assert (await http.get("/ok")).status_code == 200  # liveness stays open


def test_serve_refuses_a_public_bind_without_keys(pg_dsn: str, tmp_path: Path) -> None:
    env = _env(pg_dsn, tmp_path / "data")
    migrate(env)
    proc = subprocess.run(
        [*MKT, "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "mkt keys create" in proc.stderr
