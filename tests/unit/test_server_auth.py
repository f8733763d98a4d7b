"""API keys over HTTP: who may call what, open mode, revocation, the /keys routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import apikeys
from app.db import AppDB, open_sqlite_db
from app.server import metrics
from app.server.auth import InsecureBindError, KeyAuthenticator, is_loopback_host, startup_check
from app.settings import Settings
from tests.security_app import build_app

RUN = {"assistant_id": "supervisor", "input": {"messages": []}}


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "model_provider": "scripted",
        "data_dir": tmp_path / "data",
        "rate_limit": None,
        "auth_failure_rate_limit": None,
    }
    return Settings(**(base | overrides))  # type: ignore[arg-type]


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[AppDB]:
    opened, conn = await open_sqlite_db(tmp_path / "app.sqlite")
    await opened.migrate()
    yield opened
    await conn.close()


def client_for(settings: Settings, db: AppDB, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    app = build_app(settings, db)
    transport = httpx.ASGITransport(app=app, client=(ip, 50000), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def x_api_key(key: str) -> dict[str, str]:
    return {"x-api-key": key}


# ---------------------------------------------------------------------------------------------
# open mode and start-up
# ---------------------------------------------------------------------------------------------


async def test_without_keys_every_caller_is_admin_of_default(tmp_path: Path, db: AppDB) -> None:
    async with client_for(make_settings(tmp_path), db) as client:
        # a key sent anyway (SDKs send LANGSMITH_API_KEY) is ignored in open mode
        for headers in ({}, x_api_key("lsv2_pt_something")):
            who = await client.get("/whoami", headers=headers)
            assert who.status_code == 200
            assert who.json() == {"tenant": "default", "role": "admin", "key_id": None}
        assert (await client.get("/keys")).status_code == 200


async def test_startup_check_allows_open_mode_only_on_loopback(db: AppDB) -> None:
    line = await startup_check(db, "127.0.0.1")
    assert "OPEN MODE" in line and "loopback" in line and "mkt keys create" in line
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.com"):
        with pytest.raises(InsecureBindError, match=r"mkt keys create --role admin --tenant"):
            await startup_check(db, host)
    await apikeys.create_key(db, role="admin", tenant="acme")
    assert "1 active API key" in await startup_check(db, "0.0.0.0")


def test_loopback_hosts() -> None:
    assert all(map(is_loopback_host, ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback_host, ["0.0.0.0", "::", "10.0.0.1", "my-host", ""]))


async def test_public_server_whose_keys_are_all_revoked_does_not_turn_open(
    tmp_path: Path, db: AppDB
) -> None:
    key, token = await apikeys.create_key(db, role="admin", tenant="acme")
    await startup_check(db, "0.0.0.0")
    settings = make_settings(tmp_path, api_key_cache_s=0)
    async with client_for(settings, db, ip="203.0.113.7") as client:
        assert (await client.get("/whoami", headers=bearer(token))).status_code == 200
        await apikeys.revoke_key(db, key.key_id)
        refused = await client.get("/whoami")
        assert refused.status_code == 401
        assert "no active API keys" in refused.json()["detail"]
        assert "mkt keys create" in refused.json()["detail"]


# ---------------------------------------------------------------------------------------------
# keys, roles
# ---------------------------------------------------------------------------------------------


async def test_missing_unknown_and_malformed_keys_get_401(tmp_path: Path, db: AppDB) -> None:
    metrics.reset()
    await apikeys.create_key(db, role="viewer", tenant="acme")
    _, forged = apikeys.new_token()  # well-formed, never stored
    async with client_for(make_settings(tmp_path), db) as client:
        missing = await client.get("/whoami")
        assert missing.status_code == 401
        assert "missing API key" in missing.json()["detail"]
        assert "x-api-key" in missing.json()["detail"]
        assert missing.headers["www-authenticate"].startswith("Bearer")
        for headers in (x_api_key(forged), bearer("not-a-key"), {"Authorization": "Basic abc"}):
            response = await client.get("/whoami", headers=headers)
            assert response.status_code == 401, headers
            assert set(response.json()) == {"detail"}
    exposition = metrics.render()[0].decode()
    assert 'mkt_auth_failures_total{reason="unknown"} 2.0' in exposition
    assert 'mkt_auth_failures_total{reason="missing"} 2.0' in exposition


async def test_both_header_styles_identify_the_key(tmp_path: Path, db: AppDB) -> None:
    key, token = await apikeys.create_key(db, role="editor", tenant="acme", name="ci")
    async with client_for(make_settings(tmp_path), db) as client:
        for headers in (x_api_key(token), bearer(token), {"authorization": f"bearer {token}"}):
            who = await client.get("/whoami", headers=headers)
            assert who.json() == {"tenant": "acme", "role": "editor", "key_id": key.key_id}


async def test_roles_viewer_reads_editor_runs_admin_manages_keys(tmp_path: Path, db: AppDB) -> None:
    _, viewer = await apikeys.create_key(db, role="viewer", tenant="acme")
    _, editor = await apikeys.create_key(db, role="editor", tenant="acme")
    _, admin = await apikeys.create_key(db, role="admin", tenant="acme")
    async with client_for(make_settings(tmp_path), db) as client:
        assert (await client.get("/threads", headers=x_api_key(viewer))).status_code == 200
        denied = await client.post("/threads/t1/runs", json=RUN, headers=x_api_key(viewer))
        assert denied.status_code == 403
        assert denied.json() == {
            "detail": "this API key's role is viewer; this needs the editor role"
        }
        ran = await client.post("/threads/t1/runs", json=RUN, headers=x_api_key(editor))
        assert ran.status_code == 200
        assert (await client.get("/keys", headers=x_api_key(editor))).status_code == 403
        assert (await client.post("/threads/t1/runs", json=RUN, headers=bearer(admin))).is_success
        assert (await client.get("/keys", headers=bearer(admin))).status_code == 200


async def test_revoked_key_stops_working_within_the_cache_time(tmp_path: Path, db: AppDB) -> None:
    key, token = await apikeys.create_key(db, role="editor", tenant="acme")
    await apikeys.create_key(db, role="admin", tenant="acme")  # keep the server out of open mode
    clock = [1000.0]
    app = build_app(make_settings(tmp_path), db)
    app.state.key_auth = KeyAuthenticator(db, ttl_s=2.0, timer=lambda: clock[0])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/whoami", headers=x_api_key(token))).status_code == 200
        # revoked by another process (mkt keys revoke): this process still has it cached ...
        await apikeys.revoke_key(db, key.key_id)
        clock[0] += 1.9
        assert (await client.get("/whoami", headers=x_api_key(token))).status_code == 200
        clock[0] += 0.2  # ... for at most API_KEY_CACHE_S
        revoked = await client.get("/whoami", headers=x_api_key(token))
        assert revoked.status_code == 401
        assert f"API key {key.key_id} was revoked" in revoked.json()["detail"]


async def test_requests_that_miss_the_cache_together_share_one_read(
    db: AppDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of requests arriving with the cache empty (or expired) makes one database read,
    not one each; a caller that gives up does not cancel the others' read."""
    key, token = await apikeys.create_key(db, role="viewer", tenant="acme")
    reads = {"count": 0, "verify": 0}
    count, verify = db.count_active_api_keys, apikeys.verify_token

    async def slow_count() -> int:
        reads["count"] += 1
        await asyncio.sleep(0.05)
        return await count()

    async def slow_verify(db_: AppDB, token_: str) -> Any:
        reads["verify"] += 1
        await asyncio.sleep(0.05)
        return await verify(db_, token_)

    monkeypatch.setattr(db, "count_active_api_keys", slow_count)
    monkeypatch.setattr(apikeys, "verify_token", slow_verify)
    auth = KeyAuthenticator(db, ttl_s=2.0)
    quitter = asyncio.create_task(auth.active_key_count())
    await asyncio.sleep(0.01)
    quitter.cancel()  # gives up while the read is in flight
    counts = await asyncio.gather(*(auth.active_key_count() for _ in range(50)))
    found = await asyncio.gather(*(auth.lookup(token) for _ in range(50)))
    assert counts == [1] * 50 and reads["count"] == 1
    assert {k.key_id for k in found if k is not None} == {key.key_id} and None not in found
    assert reads["verify"] == 1
    auth.invalidate()  # a change made here: the next requests read again, once
    await asyncio.gather(*(auth.active_key_count() for _ in range(5)))
    assert reads["count"] == 2

    # a read that began before a change is not cached after it: a key revoked here while its
    # lookup was in flight is not taken for valid for the cache's lifetime
    async def read_then_linger(db_: AppDB, token_: str) -> Any:
        found = await verify(db_, token_)
        await asyncio.sleep(0.05)
        return found

    monkeypatch.setattr(apikeys, "verify_token", read_then_linger)
    auth.invalidate()
    stale = asyncio.create_task(auth.lookup(token))
    await asyncio.sleep(0.02)  # in flight: it has read the key, active
    await apikeys.revoke_key(db, key.key_id)
    auth.invalidate()
    assert (await stale) is not None  # it answers its own callers ...
    fresh = await auth.lookup(token)  # ... but the next lookup reads again
    assert fresh is not None and not fresh.active


async def test_key_use_is_recorded_without_a_write_per_request(tmp_path: Path, db: AppDB) -> None:
    key, token = await apikeys.create_key(db, role="viewer", tenant="acme")
    assert key.last_used_at is None
    async with client_for(make_settings(tmp_path, api_key_cache_s=0), db) as client:
        await client.get("/whoami", headers=x_api_key(token))
        first = (await apikeys.get_key(db, key.key_id)).last_used_at
        assert first is not None
        await client.get("/whoami", headers=x_api_key(token))
        assert (await apikeys.get_key(db, key.key_id)).last_used_at == first


# ---------------------------------------------------------------------------------------------
# /keys
# ---------------------------------------------------------------------------------------------


async def test_admin_manages_keys_of_its_own_tenant_over_http(tmp_path: Path, db: AppDB) -> None:
    _, admin = await apikeys.create_key(db, role="admin", tenant="acme")
    other, _ = await apikeys.create_key(db, role="editor", tenant="globex")
    async with client_for(make_settings(tmp_path), db) as client:
        created = await client.post(
            "/keys", json={"role": "editor", "name": "writer bot"}, headers=x_api_key(admin)
        )
        assert created.status_code == 201
        body = created.json()
        assert body["tenant"] == "acme" and body["role"] == "editor"
        new_key = body["key"]
        assert apikeys.key_id_of(new_key) == body["key_id"]
        ran = await client.post("/threads/t1/runs", json=RUN, headers=x_api_key(new_key))
        assert ran.json()["by"] == body["key_id"]

        listed = (await client.get("/keys", headers=x_api_key(admin))).json()
        assert {k["tenant"] for k in listed} == {"acme"}
        assert all("key" not in k and "key_hash" not in k for k in listed)
        assert new_key not in (await client.get("/keys", headers=x_api_key(admin))).text

        cross = await client.post(
            "/keys", json={"role": "admin", "tenant": "globex"}, headers=x_api_key(admin)
        )
        assert cross.status_code == 403 and "mkt keys create --tenant globex" in cross.text
        hidden = await client.delete(f"/keys/{other.key_id}", headers=x_api_key(admin))
        assert hidden.status_code == 404
        assert (
            await client.get(f"/keys/{other.key_id}", headers=x_api_key(admin))
        ).status_code == 404

        revoked = await client.delete(f"/keys/{body['key_id']}", headers=x_api_key(admin))
        assert revoked.status_code == 200 and revoked.json()["revoked_at"]
        # this process forgets its cache at once
        after = await client.post("/threads/t1/runs", json=RUN, headers=x_api_key(new_key))
        assert after.status_code == 401


async def test_first_key_created_in_open_mode_ends_open_mode(tmp_path: Path, db: AppDB) -> None:
    async with client_for(make_settings(tmp_path), db) as client:
        created = await client.post("/keys", json={"role": "admin", "tenant": "acme"})
        assert created.status_code == 201
        assert (await client.get("/whoami")).status_code == 401
        who = await client.get("/whoami", headers=x_api_key(created.json()["key"]))
        assert who.json()["tenant"] == "acme"


async def test_key_fields_are_validated(tmp_path: Path, db: AppDB) -> None:
    async with client_for(make_settings(tmp_path), db) as client:
        bad_role = await client.post("/keys", json={"role": "owner", "tenant": "acme"})
        assert bad_role.status_code == 422 and "body.role" in bad_role.json()["detail"]
        bad_tenant = await client.post("/keys", json={"role": "viewer", "tenant": "Acme Corp"})
        assert bad_tenant.status_code == 422
        assert "invalid tenant" in bad_tenant.json()["detail"]
        assert "Acme Corp" not in bad_tenant.text  # rejected values are not echoed
    assert await apikeys.list_keys(db) == []


async def test_keys_are_stored_hashed(db: AppDB) -> None:
    key, token = await apikeys.create_key(db, role="viewer", tenant="acme")
    assert token.startswith(f"mkt_{key.key_id}_") and len(token) == 60
    row = await db.get_api_key(key.key_id)
    assert row is not None and token not in str(row)
    assert row["key_hash"] == apikeys.hash_token(token)
    assert await apikeys.verify_token(db, token) == key
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert await apikeys.verify_token(db, tampered) is None
