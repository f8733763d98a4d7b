"""API keys: creation, verification, listing and revocation (used by `mkt keys` and the server).

A key looks like `mkt_<key id: 12 hex>_<secret: 43 url-safe chars, 256 random bits>`. It is shown
once, at creation; the database keeps only its sha256 (a fast hash is right for random 256-bit
secrets: there is nothing to brute-force) next to the key id, name, role, tenant and timestamps.
Verification looks the row up by the key id embedded in the key and compares hashes in constant
time. The key id is public: `mkt keys list` shows it, logs keep it when they mask the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast, get_args

from app.db import AppDB
from app.errors import AppError

Role = Literal["viewer", "editor", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
ROLE_RANK: dict[str, int] = {"viewer": 0, "editor": 1, "admin": 2}
KEY_PREFIX = "mkt_"
_TOKEN = re.compile(r"mkt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_TENANT = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_NAME = 100


class InvalidKeyFieldError(AppError):
    status = 422


class ApiKeyNotFoundError(AppError):
    status = 404

    def __init__(self, key_id: str) -> None:
        super().__init__(f"API key {key_id!r} does not exist (see `mkt keys list`)")


@dataclass(frozen=True)
class ApiKey:
    """A stored key without its secret."""

    key_id: str
    name: str
    role: Role
    tenant: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ApiKey:
        return cls(
            key_id=row["key_id"],
            name=row["name"],
            role=cast(Role, row["role"]),
            tenant=row["tenant"],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            revoked_at=row["revoked_at"],
        )


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def key_id_of(token: str) -> str | None:
    """The key id inside a well-formed key, else None."""
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def new_token() -> tuple[str, str]:
    """(key id, key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise InvalidKeyFieldError(f"unknown role {role!r}; use one of: {', '.join(ROLES)}")
    return cast(Role, role)


def check_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise InvalidKeyFieldError(
            "invalid tenant: use 1-64 characters, lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return tenant


def check_name(name: str) -> str:
    name = name.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        raise InvalidKeyFieldError(f"key name must be printable and at most {MAX_NAME} characters")
    return name


async def create_key(db: AppDB, *, role: str, tenant: str, name: str = "") -> tuple[ApiKey, str]:
    """Store a new key; returns its record and the key itself (the only time it is visible)."""
    checked_role = check_role(role)
    checked_tenant = check_tenant(tenant)
    checked_name = check_name(name)
    key_id, token = new_token()
    row = await db.insert_api_key(
        key_id=key_id,
        key_hash=hash_token(token),
        name=checked_name,
        role=checked_role,
        tenant=checked_tenant,
    )
    return ApiKey.from_row(row), token


async def verify_token(db: AppDB, token: str) -> ApiKey | None:
    """The stored key (active or revoked) this token belongs to, or None when it is unknown."""
    key_id = key_id_of(token)
    if key_id is None:
        return None
    row = await db.get_api_key(key_id)
    if row is None or not hmac.compare_digest(row["key_hash"], hash_token(token)):
        return None
    return ApiKey.from_row(row)


async def list_keys(
    db: AppDB, *, tenant: str | None = None, include_revoked: bool = True
) -> list[ApiKey]:
    rows = await db.list_api_keys(tenant=tenant, include_revoked=include_revoked)
    return [ApiKey.from_row(r) for r in rows]


async def get_key(db: AppDB, key_id: str, *, tenant: str | None = None) -> ApiKey:
    """A key by id; with `tenant`, a key of another tenant is reported as not existing."""
    row = await db.get_api_key(key_id)
    if row is None or (tenant is not None and row["tenant"] != tenant):
        raise ApiKeyNotFoundError(key_id)
    return ApiKey.from_row(row)


async def revoke_key(db: AppDB, key_id: str, *, tenant: str | None = None) -> ApiKey:
    """Revoke a key (idempotent: revoking a revoked key returns it unchanged)."""
    await get_key(db, key_id, tenant=tenant)
    await db.revoke_api_key(key_id)
    return await get_key(db, key_id)
