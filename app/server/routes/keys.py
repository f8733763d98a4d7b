"""`/keys`: API key management over HTTP, for admins (the CLI equivalent is `mkt keys`).

An admin key manages the keys of its own tenant; another tenant's keys do not exist for it (404),
and creating one for another tenant is refused (403) — that is done on the server with
`mkt keys create`. In open mode (no keys yet, loopback only) the caller is the operator and may
create keys for any tenant; the first key created ends open mode.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from app import apikeys
from app.apikeys import ApiKey, Role
from app.server.auth import Principal, authenticator, require

router = APIRouter(prefix="/keys", tags=["keys"])

Admin = Annotated[Principal, Depends(require("admin"))]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Field(description="viewer (reads), editor (runs, approvals), admin (keys).")
    tenant: str | None = Field(
        None,
        description="Tenant of the new key; default the caller's. Lowercase letters, digits, "
        "'.', '_', '-'.",
    )
    name: str = Field("", max_length=apikeys.MAX_NAME, description="A label for people.")


class KeyInfo(BaseModel):
    key_id: str
    name: str
    role: Role
    tenant: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyInfo:
        return cls(**key.public())


class KeyCreated(KeyInfo):
    key: str = Field(description="The API key itself. Shown only in this response: store it now.")


def _scope(principal: Principal) -> str | None:
    """The tenant whose keys the caller manages (None = all, the open-mode operator)."""
    return None if principal.is_open_mode else principal.tenant


@router.post("", status_code=201, response_model=KeyCreated)
async def create_key(body: KeyCreate, request: Request, principal: Admin) -> KeyCreated:
    """Create a key. The response is the only place the key itself ever appears."""
    scope = _scope(principal)
    # checked first: a rejected name is not echoed (the 403 below names a well-formed one)
    tenant = apikeys.check_tenant(body.tenant) if body.tenant else principal.tenant
    if scope is not None and tenant != scope:
        raise HTTPException(
            403,
            f"an admin key manages keys of its own tenant ({scope}); create keys for tenant "
            f"{tenant!r} on the server with `mkt keys create --tenant {tenant}`",
        )
    key, token = await apikeys.create_key(
        request.app.state.db, role=body.role, tenant=tenant, name=body.name
    )
    authenticator(request).invalidate()
    return KeyCreated(**key.public(), key=token)


@router.get("", response_model=list[KeyInfo])
async def list_keys(
    request: Request,
    principal: Admin,
    include_revoked: Annotated[bool, Query(description="Also list revoked keys.")] = True,
) -> list[KeyInfo]:
    """Keys of the caller's tenant (never their secrets)."""
    keys = await apikeys.list_keys(
        request.app.state.db, tenant=_scope(principal), include_revoked=include_revoked
    )
    return [KeyInfo.of(k) for k in keys]


@router.get("/{key_id}", response_model=KeyInfo)
async def get_key(key_id: str, request: Request, principal: Admin) -> KeyInfo:
    return KeyInfo.of(await apikeys.get_key(request.app.state.db, key_id, tenant=_scope(principal)))


@router.delete("/{key_id}", response_model=KeyInfo)
async def revoke_key(key_id: str, request: Request, principal: Admin) -> KeyInfo:
    """Revoke a key: it stops working within API_KEY_CACHE_S seconds on every server process
    (at once on this one). Revoking a revoked key changes nothing."""
    key = await apikeys.revoke_key(request.app.state.db, key_id, tenant=_scope(principal))
    authenticator(request).invalidate()
    return KeyInfo.of(key)
