"""`mkt keys`: create (shown once), list (never secrets), revoke."""

from __future__ import annotations

import asyncio
import json

from typer.testing import CliRunner

from app import apikeys
from app.cli import app
from app.settings import get_settings
from app.storage import open_storage

cli = CliRunner()


def verify(token: str) -> apikeys.ApiKey | None:
    async def main() -> apikeys.ApiKey | None:
        async with open_storage(get_settings()) as storage:
            return await apikeys.verify_token(storage.db, token)

    return asyncio.run(main())


def test_keys_help_explains_roles_and_open_mode() -> None:
    result = cli.invoke(app, ["keys", "--help"])
    assert result.exit_code == 0
    for word in ("create", "list", "revoke", "viewer", "editor", "admin", "loopback"):
        assert word in result.output
    create_help = cli.invoke(app, ["keys", "create", "--help"])
    assert "--role" in create_help.output and "--tenant" in create_help.output


def test_create_prints_the_key_once_and_stores_only_its_hash() -> None:
    created = cli.invoke(
        app, ["keys", "create", "--role", "editor", "--tenant", "acme", "--name", "ci bot"]
    )
    assert created.exit_code == 0, created.output
    token = next(w for w in created.output.split() if w.startswith("mkt_"))
    assert "not shown again" in created.output
    key = verify(token)
    assert key is not None and (key.role, key.tenant, key.name) == ("editor", "acme", "ci bot")

    listed = cli.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0
    assert key.key_id in listed.output and "acme" in listed.output and "never" in listed.output
    assert token not in listed.output
    rows = json.loads(cli.invoke(app, ["keys", "list", "--json"]).output)
    assert [r["key_id"] for r in rows] == [key.key_id]
    assert set(rows[0]) == {
        "key_id", "name", "role", "tenant", "created_at", "last_used_at", "revoked_at"
    }  # fmt: skip
    database = get_settings().sqlite_path.read_bytes()
    assert token.encode() not in database
    assert apikeys.hash_token(token).encode() in database


def test_json_create_and_revoke() -> None:
    out = cli.invoke(app, ["keys", "create", "--role", "viewer", "--tenant", "globex", "--json"])
    created = json.loads(out.output)
    assert created["key"].startswith(f"mkt_{created['key_id']}_")
    revoked = cli.invoke(app, ["keys", "revoke", created["key_id"]])
    assert revoked.exit_code == 0 and f"revoked key {created['key_id']}" in revoked.output
    key = verify(created["key"])
    assert key is not None and key.revoked_at is not None
    assert json.loads(cli.invoke(app, ["keys", "list", "--active", "--json"]).output) == []
    everything = json.loads(cli.invoke(app, ["keys", "list", "--json"]).output)
    assert everything[0]["revoked_at"] == key.revoked_at


def test_bad_input_exits_2_naming_the_fix() -> None:
    role = cli.invoke(app, ["keys", "create", "--role", "owner", "--tenant", "acme"])
    assert role.exit_code == 2 and "unknown role 'owner'" in role.output
    assert "viewer, editor, admin" in role.output
    tenant = cli.invoke(app, ["keys", "create", "--role", "admin", "--tenant", "Acme Inc"])
    assert tenant.exit_code == 2 and "invalid tenant" in tenant.output
    missing = cli.invoke(app, ["keys", "revoke", "0123456789ab"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    assert "mkt keys list" in missing.output
    no_tenant = cli.invoke(app, ["keys", "create", "--role", "admin"])
    assert no_tenant.exit_code == 2 and "--tenant" in no_tenant.output
    empty = cli.invoke(app, ["keys", "list"])
    assert "no API keys" in empty.output and "mkt keys create" in empty.output


def test_revoke_takes_the_whole_key_and_never_echoes_its_secret() -> None:
    """A key pasted instead of its id revokes that key, and its secret is never printed — not
    even in the error for a key that does not exist (error output ends up in CI logs)."""
    out = cli.invoke(app, ["keys", "create", "--role", "viewer", "--tenant", "acme", "--json"])
    created = json.loads(out.output)
    revoked = cli.invoke(app, ["keys", "revoke", created["key"]])
    assert revoked.exit_code == 0, revoked.output
    assert f"revoked key {created['key_id']}" in revoked.output
    secret = created["key"][len(f"mkt_{created['key_id']}_") :]
    assert secret not in revoked.output
    key = verify(created["key"])
    assert key is not None and key.revoked_at is not None
    fake = "mkt_0123456789ab_" + "NotARealSecret".ljust(43, "x")
    unknown = cli.invoke(app, ["keys", "revoke", fake])
    assert unknown.exit_code == 2 and "'0123456789ab' does not exist" in unknown.output
    assert "NotARealSecret" not in unknown.output
