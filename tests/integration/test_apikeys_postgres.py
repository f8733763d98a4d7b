"""API keys on Postgres: `mkt db migrate` creates the table, `mkt keys` and the HTTP auth layer use
it the same way as on SQLite."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app import apikeys
from app.cli import app as cli_app
from app.db import postgres_db
from app.settings import Settings, reset_settings_cache
from app.storage import make_pool
from tests.security_app import build_app

pytestmark = pytest.mark.integration


async def use_over_http(dsn: str, created: dict[str, Any], settings: Settings) -> None:
    pool = make_pool(dsn, 4)
    await pool.open(wait=True, timeout=15)
    try:
        db = postgres_db(pool)
        assert await db.count_active_api_keys() == 1
        # a second key: with none active the server would be open (loopback only)
        await apikeys.create_key(db, role="admin", tenant="acme")
        transport = httpx.ASGITransport(app=build_app(settings, db))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            bearer = {"Authorization": f"Bearer {created['key']}"}
            who = await client.get("/whoami", headers=bearer)
            assert who.json() == {"tenant": "acme", "role": "editor", "key_id": created["key_id"]}
            assert (await client.get("/whoami")).status_code == 401
            await apikeys.revoke_key(db, created["key_id"])
            revoked = await client.get("/whoami", headers={"x-api-key": created["key"]})
            assert revoked.status_code == 401 and "was revoked" in revoked.json()["detail"]
        key = await apikeys.get_key(db, created["key_id"])
        assert key.last_used_at is not None and key.revoked_at is not None
        assert await db.count_active_api_keys() == 1
    finally:
        await pool.close()


def test_keys_on_postgres_from_cli_to_http(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_dsn)
    reset_settings_cache()
    cli = CliRunner()
    migrated = cli.invoke(cli_app, ["db", "migrate"])
    assert migrated.exit_code == 0, migrated.output
    out = cli.invoke(cli_app, ["keys", "create", "--role", "editor", "--tenant", "acme", "--json"])
    assert out.exit_code == 0, out.output
    created = json.loads(out.output)
    settings = Settings(
        model_provider="scripted",
        data_dir=tmp_path / "data",
        rate_limit=None,
        auth_failure_rate_limit=None,
        api_key_cache_s=0,
    )
    asyncio.run(use_over_http(pg_dsn, created, settings))
    listed = json.loads(cli.invoke(cli_app, ["keys", "list", "--json"]).output)
    assert [bool(k["revoked_at"]) for k in listed if k["key_id"] == created["key_id"]] == [True]
    assert len(listed) == 2
