"""Who is calling: API keys, roles and tenants.

INTERFACE (stable, used by every route):
- `Principal(tenant, role, key_id)`; `principal.allows("editor")`.
- `require("viewer" | "editor" | "admin")` -> a FastAPI dependency returning the `Principal`,
  403 when the role is too low, 401 when a key is required and missing/unknown.

- `await startup_check(db, host)` -> a line for the start-up log, or raises `InsecureBindError`
  when no keys exist and `host` is not loopback (called by `create_app`'s lifespan / `mkt serve`).

Routes reach the app database as `request.app.state.db` (an `app.db.AppDB`, set by `create_app`).

Until keys are implemented this module runs in open mode: every caller is the admin of tenant
`default` (the server only allows open mode on loopback).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request

Role = Literal["viewer", "editor", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "editor": 1, "admin": 2}
OPEN_TENANT = "default"


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: Role
    key_id: str | None  # None in open mode (no keys configured)

    def allows(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


async def current_principal(request: Request) -> Principal:
    """The caller. Open mode for now (see module docstring)."""
    return Principal(tenant=OPEN_TENANT, role="admin", key_id=None)


class InsecureBindError(RuntimeError):
    """Refusing to serve without API keys on a non-loopback address."""


async def startup_check(db: object, host: str) -> str:
    """Open mode for now; the keys implementation checks the key table and the bind address."""
    return "auth: open mode (no API keys configured) - every caller is admin of tenant 'default'"


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.allows(role):
            raise HTTPException(403, f"this API key's role is {principal.role}; {role} is needed")
        return principal

    return dependency
