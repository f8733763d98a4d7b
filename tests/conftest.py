"""Shared fixtures. Unit tests run with the network blocked (pytest-socket, see `pytest_collection_modifyitems`);
tests marked `integration` may use loopback services."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_socket

os.environ.setdefault("LANGSMITH_TRACING", "false")
os.environ.setdefault("LANGSMITH_TEST_TRACKING", "false")

from app.scripted import SCRIPTED_CALLS
from app.settings import Settings, reset_settings_cache


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is None:
        pytest_socket.disable_socket(allow_unix_socket=True)
    else:
        pytest_socket.socket_allow_hosts(["127.0.0.1", "localhost", "::1"], allow_unix_socket=True)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    pytest_socket.enable_socket()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test gets its own DATA_DIR, the scripted model and no real keys from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MODEL_PROVIDER", "scripted")
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TAVILY_API_KEY", "DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    reset_settings_cache()
    SCRIPTED_CALLS.clear()
    yield
    reset_settings_cache()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(model_provider="scripted", data_dir=tmp_path / "data")


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[tuple[Any, Any]]:
    """(client, app): an httpx client on the whole server app in this process, started."""
    from tests.helpers import served

    async with served(settings) as both:
        yield both


@pytest.fixture
async def runner(settings: Settings) -> AsyncIterator[object]:
    from app.bootstrap import open_runner

    async with open_runner(settings) as r:
        yield r


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    from tests.pg import server_dsn

    try:
        with server_dsn() as dsn:
            yield dsn
    except (RuntimeError, OSError) as exc:
        print(f"\nSKIP Postgres tests: {exc}")
        pytest.skip(f"PostgreSQL unavailable: {exc}")


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    from tests.pg import fresh_database

    with fresh_database(pg_admin_dsn) as dsn:
        yield dsn
