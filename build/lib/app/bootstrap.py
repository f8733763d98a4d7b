"""Process start-up shared by the CLI and the server: settings, model factory, storage, knowledge
base, runner."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from app.knowledge import open_knowledge_base
from app.models import ModelFactory, set_model_factory
from app.runner import Runner
from app.settings import Settings, get_settings, reset_settings_cache
from app.storage import open_storage, set_active_db


def apply_provider_override(provider: str | None) -> Settings:
    """`--provider` wins over MODEL_PROVIDER for this process."""
    if provider:
        os.environ["MODEL_PROVIDER"] = provider
        reset_settings_cache()
    return get_settings()


@asynccontextmanager
async def open_runner(
    settings: Settings | None = None,
    *,
    migrate: bool = False,
    factory: ModelFactory | None = None,
    runner_cls: type[Runner] = Runner,
    knowledge_base: bool = True,
    eager_knowledge_base: bool = False,
    knowledge_base_wait_s: float = 0.0,
    say: Callable[[str], None] | None = None,
) -> AsyncIterator[Runner]:
    """Install the model factory, open storage and the knowledge base (lazily unless
    `eager_knowledge_base`; see `app.knowledge`) for one process (or one eval run); a test may
    pass its own factory or Runner class."""
    s = settings or get_settings()
    factory = factory or ModelFactory(s)
    previous = set_model_factory(factory)
    try:
        async with AsyncExitStack() as stack:
            if knowledge_base:
                await stack.enter_async_context(
                    open_knowledge_base(
                        s, eager=eager_knowledge_base, wait_s=knowledge_base_wait_s, say=say
                    )
                )
            storage = await stack.enter_async_context(open_storage(s, migrate=migrate))
            runner = runner_cls(storage, factory)
            try:
                yield runner
            finally:
                set_active_db(None)
    finally:
        factory.close()
        set_model_factory(previous)
