"""The SDK-compatibility checks whose storage matters, on Postgres (`AsyncPostgresSaver` keeps
channel values apart from checkpoints): in-process app, scripted model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from langgraph_sdk.client import LangGraphClient
from pydantic import SecretStr

from app.settings import Settings
from app.storage import migrate
from tests.helpers import served
from tests.unit.test_server_compat import check_run_metadata, check_thread_copy

pytestmark = pytest.mark.integration


@pytest.fixture
async def pg_sdk(pg_dsn: str, tmp_path: Path) -> AsyncIterator[LangGraphClient]:
    s = Settings(
        model_provider="scripted", data_dir=tmp_path / "data", database_url=SecretStr(pg_dsn)
    )
    await migrate(s)
    async with served(s, workers=0) as (http, _):
        yield LangGraphClient(http)


async def test_a_copied_thread_has_the_state_history_and_pending_approval(
    pg_sdk: LangGraphClient,
) -> None:
    await check_thread_copy(pg_sdk)


@pytest.mark.parametrize("multitask_strategy", ["enqueue", "reject"])
async def test_a_run_names_its_graph_and_assistant_in_the_threads_metadata(
    pg_sdk: LangGraphClient, multitask_strategy: str
) -> None:
    await check_run_metadata(pg_sdk, multitask_strategy)
