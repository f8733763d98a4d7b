"""Who is calling: API keys, roles and tenants.

INTERFACE (stable, used by every route):
- `Principal(tenant, role, key_id)`; `principal.allows("editor")`.
- `require("viewer" | "editor" | "admin")` -> a FastAPI dependency returning the `Principal`,
  403 when the role is too low, 401 when a key is required and missing/unknown/revoked.
- `await startup_check(db, host)` -> a line for the start-up log, or raises `InsecureBindError`
  when no keys exist and `host` is not loopback (called by `create_app`'s lifespan / `mkt serve`).

Routes reach the app database as `request.app.state.db` (an `app.db.AppDB`, set by `create_app`).

Keys (`app/apikeys.py`) are sent as `x-api-key: mkt_...` or `Authorization: Bearer mkt_...`.
Roles: viewer reads; editor also creates runs and answers approvals; admin also manages keys.
Lookups are cached in process for `API_KEY_CACHE_S` seconds (2 by default), so a revoked key stops
working within that time without a database round-trip per request.

Open mode: while no active key exists, every caller is the admin of tenant `default`. That is
allowed only on a loopback bind: `startup_check` refuses to start otherwise, and a server that
started with keys on a public address and then lost them all (every key revoked) answers 401
instead of turning open.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

from cachetools import TTLCache
from fastapi import Depends, HTTPException, Request

from app import apikeys
from app.apikeys import ROLE_RANK, ApiKey, Role
from app.db import AppDB, utcnow
from app.server import metrics
from app.settings import Settings, get_settings

T = TypeVar("T")

OPEN_TENANT = "default"
CREATE_KEY_HINT = "mkt keys create --role admin --tenant NAME"
LAST_USED_RESOLUTION = timedelta(minutes=1)  # write last_used_at at most once a minute per key
_AUTH_HEADERS = {"WWW-Authenticate": 'Bearer realm="mkt"'}

__all__ = [
    "OPEN_TENANT",
    "ROLE_RANK",
    "InsecureBindError",
    "KeyAuthenticator",
    "Principal",
    "Role",
    "current_principal",
    "require",
    "startup_check",
]


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: Role
    key_id: str | None  # None in open mode (no keys configured)

    def allows(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    @property
    def is_open_mode(self) -> bool:
        return self.key_id is None


OPEN_PRINCIPAL = Principal(tenant=OPEN_TENANT, role="admin", key_id=None)


class InsecureBindError(RuntimeError):
    """Refusing to serve without API keys on a non-loopback address."""


class KeyAuthenticator:
    """Key lookups against one app database, cached briefly in process."""

    def __init__(
        self,
        db: AppDB,
        ttl_s: float = 2.0,
        max_entries: int = 10_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.ttl_s = ttl_s
        # token hash -> ApiKey | None (unknown keys are cached too: a flood of one bad key
        # costs one lookup per TTL)
        self._keys: TTLCache[str, ApiKey | None] = TTLCache(max_entries, ttl_s, timer=timer)
        self._active: TTLCache[str, int] = TTLCache(1, ttl_s, timer=timer)
        # lookups in flight: requests that miss the cache together share one database read
        self._loading: dict[str, asyncio.Task[Any]] = {}
        self._generation = 0  # moves on `invalidate`: reads begun before it are not cached

    async def _shared(self, key: str, load: Callable[[], Coroutine[Any, Any, T]]) -> T:
        task = self._loading.get(key)
        if task is None:
            task = asyncio.create_task(load(), name=f"auth:{key[:12]}")
            self._loading[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        # shielded: a caller that gives up does not cancel the others' read
        result: T = await asyncio.shield(task)
        return result

    def _forget(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._loading.get(key) is task:
            del self._loading[key]
        if not task.cancelled():
            task.exception()  # retrieved: its waiters got it, or all of them gave up

    async def active_key_count(self) -> int:
        count = self._active.get("n")
        if count is None:
            count = await self._shared("active", self._count_active)
        return count

    async def _count_active(self) -> int:
        generation = self._generation
        count = await self.db.count_active_api_keys()
        if self.ttl_s > 0 and generation == self._generation:
            self._active["n"] = count
        return count

    async def lookup(self, token: str) -> ApiKey | None:
        digest = apikeys.hash_token(token)
        if digest in self._keys:
            return self._keys[digest]
        return await self._shared("key:" + digest, lambda: self._verify(token, digest))

    def cached(self, token: str) -> bool:
        """Whether `lookup(token)` would answer without a database read."""
        return apikeys.hash_token(token) in self._keys

    async def _verify(self, token: str, digest: str) -> ApiKey | None:
        generation = self._generation
        key = await apikeys.verify_token(self.db, token)
        if key is not None and key.active and _stale(key.last_used_at):
            await self.db.touch_api_key(key.key_id, utcnow())
        if self.ttl_s > 0 and generation == self._generation:
            self._keys[digest] = key
        return key

    def invalidate(self) -> None:
        """Forget cached lookups (after this process created or revoked a key)."""
        self._keys.clear()
        self._active.clear()
        # reads begun before the change are neither shared nor cached after it
        self._loading.clear()
        self._generation += 1


def _stale(last_used_at: str | None) -> bool:
    if last_used_at is None:
        return True
    return utcnow() - datetime.fromisoformat(last_used_at) >= LAST_USED_RESOLUTION


def _settings(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


def authenticator(request: Request) -> KeyAuthenticator:
    """The app's authenticator, bound to `request.app.state.db` (created on first use)."""
    state = request.app.state
    db = getattr(state, "db", None)
    if not isinstance(db, AppDB):
        raise RuntimeError("app.state.db is not set: create_app must open the app database")
    auth = getattr(state, "key_auth", None)
    if not isinstance(auth, KeyAuthenticator) or auth.db is not db:
        auth = KeyAuthenticator(db, ttl_s=_settings(request).api_key_cache_s)
        state.key_auth = auth
    return auth


def token_from(request: Request) -> str | None:
    """The key from `x-api-key`, else from `Authorization: Bearer`."""
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _client(request: Request) -> str:
    return request.client.host if request.client else "local"


def _too_many_failures(wait: int) -> HTTPException:
    metrics.rate_limited()
    return HTTPException(
        429,
        f"too many requests with invalid API keys from this address; retry in {wait} s",
        headers={"Retry-After": str(wait)},
    )


async def _refuse(request: Request, reason: str, message: str) -> HTTPException:
    """401 — or 429 when this client has failed too often (key guessing)."""
    metrics.auth_failed(reason)
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None and reason in ("unknown", "revoked"):
        wait = await limiter.check_auth_failure(_client(request))
        if wait is not None:
            return _too_many_failures(wait)
    return HTTPException(401, message, headers=_AUTH_HEADERS)


async def _throttled(request: Request, auth: KeyAuthenticator, token: str) -> HTTPException | None:
    """429 before the lookup when this client's failure budget is spent and the key is not in
    the cache: a throttled client's guesses cost no database read (a cached key costs none)."""
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is None or not limiter.auth_failure_limits or auth.cached(token):
        return None
    wait = await limiter.auth_failures_exhausted(_client(request))
    if wait is None:
        return None
    metrics.auth_failed("throttled")
    return _too_many_failures(wait)


async def current_principal(request: Request) -> Principal:
    """The caller, from its API key (or the open-mode admin while no keys exist)."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    auth = authenticator(request)
    if await auth.active_key_count() == 0:
        host = _bind_hosts.get(auth.db)
        if host is not None and not is_loopback_host(host):
            raise await _refuse(
                request,
                "no_keys",
                f"this server is bound to {host} and has no active API keys, so it serves "
                f"nobody: create one on the server with `{CREATE_KEY_HINT}`",
            )
        principal = OPEN_PRINCIPAL  # presented keys are ignored (SDKs send LangSmith keys)
    else:
        token = token_from(request)
        if token is None:
            raise await _refuse(
                request,
                "missing",
                "missing API key: send it as the x-api-key header or as "
                f"'Authorization: Bearer <key>' (an admin creates keys with `{CREATE_KEY_HINT}`)",
            )
        throttled = await _throttled(request, auth, token)
        if throttled is not None:
            raise throttled
        key = await auth.lookup(token)
        if key is None:
            raise await _refuse(
                request,
                "unknown",
                "unknown API key: check that it was copied whole (mkt_<id>_<secret>); "
                f"an admin creates keys with `{CREATE_KEY_HINT}`",
            )
        if not key.active:
            raise await _refuse(
                request,
                "revoked",
                f"API key {key.key_id} was revoked at {key.revoked_at}; ask an admin for a new "
                f"one (`{CREATE_KEY_HINT}`)",
            )
        principal = Principal(tenant=key.tenant, role=key.role, key_id=key.key_id)
    request.state.principal = principal
    return principal


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    if role not in ROLE_RANK:
        raise ValueError(f"unknown role {role!r}; use one of {list(ROLE_RANK)}")

    async def dependency(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.allows(role):
            raise HTTPException(
                403, f"this API key's role is {principal.role}; this needs the {role} role"
            )
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


# ---------------------------------------------------------------------------------------------
# start-up
# ---------------------------------------------------------------------------------------------

# the address each app database is served on, recorded by startup_check (see module docstring)
_bind_hosts: weakref.WeakKeyDictionary[AppDB, str] = weakref.WeakKeyDictionary()


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; a wildcard (0.0.0.0, ::) or any other name
    is not loopback."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def startup_check(db: AppDB, host: str) -> str:
    """The auth line for the start-up log; raises `InsecureBindError` for an open server on a
    non-loopback address."""
    _bind_hosts[db] = host
    active = await db.count_active_api_keys()
    if active:
        return (
            f"auth: {active} active API key(s); requests need x-api-key or "
            "'Authorization: Bearer' (roles: viewer < editor < admin)"
        )
    if is_loopback_host(host):
        return (
            f"auth: OPEN MODE - no API keys configured, so every caller is admin of tenant "
            f"'{OPEN_TENANT}'; allowed only because the server is bound to loopback ({host}). "
            f"Create keys with `{CREATE_KEY_HINT}`"
        )
    raise InsecureBindError(
        f"refusing to serve on {host} without API keys: anyone who can reach it would be admin. "
        f"Create a key first with `{CREATE_KEY_HINT}`, or bind to 127.0.0.1"
    )
