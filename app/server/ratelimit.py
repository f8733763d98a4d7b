"""Rate limits with the `limits` library (moving window): in process memory by default, in Redis
when `REDIS_URL` is set (so several server processes share one budget per key).

Two budgets: requests per API key (per client IP in open mode) — `RATE_LIMIT` — and failed
authentications per client IP — `AUTH_FAILURE_RATE_LIMIT` — so guessing keys is slow and cannot
turn into one database lookup per guess. A storage failure (Redis down) lets requests through and
logs a warning (at most once a minute): the limiter protects the server, it must not take it down.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse_many
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

log = logging.getLogger(__name__)


class RateLimiter:
    def __init__(
        self,
        request_limit: str | None,
        auth_failure_limit: str | None = None,
        redis_url: str | None = None,
    ) -> None:
        if redis_url:
            storage = storage_from_string(f"async+{redis_url}", wrap_exceptions=True)
            self.backend = "redis"
        else:
            storage = storage_from_string("async+memory://")
            self.backend = "memory"
        self._strategy = MovingWindowRateLimiter(storage)
        self.request_limits: list[RateLimitItem] = (
            parse_many(request_limit) if request_limit else []
        )
        self.auth_failure_limits: list[RateLimitItem] = (
            parse_many(auth_failure_limit) if auth_failure_limit else []
        )
        self._last_warning = 0.0

    def describe(self) -> str:
        limits = "; ".join(str(item) for item in self.request_limits) or "no request limit"
        return f"rate limit: {limits} per API key ({self.backend})"

    async def check_request(self, identity: str) -> int | None:
        """Count one request for `identity`; None when allowed, else seconds to wait."""
        return await self._hit(self.request_limits, "req", identity)

    async def check_auth_failure(self, client: str) -> int | None:
        """Count one failed authentication from `client`; None when allowed, else seconds to wait."""
        return await self._hit(self.auth_failure_limits, "authfail", client)

    async def auth_failures_exhausted(self, client: str) -> int | None:
        """Without counting anything: None while `client` may fail to authenticate again, else
        seconds to wait (checked before a presented key is looked up, so a throttled client's
        guesses cost no database read)."""
        wait: int | None = None
        for item in self.auth_failure_limits:
            try:
                if await self._strategy.test(item, "authfail", client):
                    continue
                stats = await self._strategy.get_window_stats(item, "authfail", client)
            except StorageError as exc:
                self._warn(exc)
                return None
            wait = max(wait or 0, max(1, math.ceil(stats.reset_time - time.time())))
        return wait

    async def _hit(self, items: list[RateLimitItem], namespace: str, identity: str) -> int | None:
        wait: int | None = None
        for item in items:
            try:
                if await self._strategy.hit(item, namespace, identity):
                    continue
                stats = await self._strategy.get_window_stats(item, namespace, identity)
            except StorageError as exc:
                self._warn(exc)
                return None
            seconds = max(1, math.ceil(stats.reset_time - time.time()))
            wait = max(wait or 0, seconds)
        return wait

    def _warn(self, exc: StorageError) -> None:
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning(
                "rate limiting is off while its %s storage fails (%s): check REDIS_URL",
                self.backend,
                type(exc.storage_error).__name__,
            )
