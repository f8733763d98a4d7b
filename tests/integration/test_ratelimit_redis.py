"""Rate limits shared through Redis (REDIS_URL), and a limiter whose storage is down lets requests
through with a warning. Needs Redis on 127.0.0.1:6379 (skipped with the reason otherwise)."""

from __future__ import annotations

import logging
import os
import socket
import uuid

import pytest

from app.local_llm import free_port
from app.server.ratelimit import RateLimiter

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("REDIS_TEST_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_url() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            pass
    except OSError as exc:
        print(f"\nSKIP Redis tests: {exc}")
        pytest.skip(f"Redis unavailable on 127.0.0.1:6379: {exc}")
    return REDIS_URL


async def test_two_server_processes_share_one_budget_per_key(redis_url: str) -> None:
    identity = f"key:{uuid.uuid4().hex}"  # fresh counters whatever earlier runs left in Redis
    first, second = (
        RateLimiter("3/minute", redis_url=redis_url),
        RateLimiter("3/minute", redis_url=redis_url),
    )
    assert first.backend == "redis"
    assert [await first.check_request(identity) for _ in range(2)] == [None, None]
    assert await second.check_request(identity) is None
    wait = await second.check_request(identity)
    assert wait is not None and 1 <= wait <= 60
    assert await first.check_request(identity) is not None
    assert await first.check_request(f"key:{uuid.uuid4().hex}") is None  # another key


async def test_storage_failure_lets_requests_through_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limiter = RateLimiter("1/minute", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING):
        assert await limiter.check_request("ip:127.0.0.1") is None
        assert await limiter.check_request("ip:127.0.0.1") is None
    warnings = [r for r in caplog.records if "rate limiting is off" in r.getMessage()]
    assert len(warnings) == 1 and "REDIS_URL" in warnings[0].getMessage()
