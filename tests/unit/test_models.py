"""The one model factory: provider choice, per-agent models, fallbacks, usage and cost."""

from __future__ import annotations

import socket

import pytest
import pytest_socket
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.runnables.fallbacks import RunnableWithFallbacks
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from app.llm import ModelOutputError, ask_structured
from app.models import ModelConfigError, ModelFactory, resolve_provider, set_model_factory
from app.scripted import ScriptedChatModel
from app.settings import Settings
from app.usage import cost_usd, usage_from_message
from graphs.schemas import Plan


def test_unit_tests_cannot_reach_the_network() -> None:
    with pytest.raises(pytest_socket.SocketBlockedError):
        socket.create_connection(("example.com", 80), timeout=1)


def test_auto_prefers_openai_when_configured(tmp_path: object) -> None:
    assert resolve_provider(Settings(model_provider="auto", openai_api_key="sk-x"))[0] == "openai"
    assert (
        resolve_provider(
            Settings(model_provider="auto", openai_base_url="http://127.0.0.1:11434/v1")
        )[0]
        == "openai"
    )


def test_auto_without_key_uses_local_if_installed_else_says_it_is_scripted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.models.local_extra_installed", lambda: True)
    assert resolve_provider(Settings(model_provider="auto"))[0] == "local"
    monkeypatch.setattr("app.models.local_extra_installed", lambda: False)
    provider, reason = resolve_provider(Settings(model_provider="auto"))
    assert provider == "scripted" and "SCRIPTED" in reason


def test_openai_without_key_or_url_is_a_clear_error() -> None:
    with pytest.raises(ModelConfigError, match="OPENAI_API_KEY or OPENAI_BASE_URL"):
        resolve_provider(Settings(model_provider="openai"))


def test_one_chatopenai_code_path_with_per_agent_models_and_fallbacks() -> None:
    s = Settings(
        model_provider="openai",
        openai_api_key="sk-test",
        openai_base_url="http://127.0.0.1:9/v1",
        model_name="gpt-4o-mini",
        agent_models={"content": "gpt-4o"},
        model_fallbacks=["gpt-4.1-mini", "gpt-4o-mini"],
    )
    f = ModelFactory(s)
    assert f.model_name("content") == "gpt-4o"
    assert f.model_name("social") == "gpt-4o-mini"
    assert f.model_name("social", {"social": "gpt-5-mini"}) == "gpt-5-mini"
    chain = f.chat("content")
    assert isinstance(chain, RunnableWithFallbacks)
    names = [chain.runnable.model_name] + [fb.model_name for fb in chain.fallbacks]  # type: ignore[attr-defined]
    assert names == ["gpt-4o", "gpt-4.1-mini", "gpt-4o-mini"]
    assert all(isinstance(m, ChatOpenAI) for m in [chain.runnable, *chain.fallbacks])
    assert str(chain.runnable.openai_api_base) == "http://127.0.0.1:9/v1"  # type: ignore[attr-defined]
    assert "sk-test" not in repr(chain)


def test_fallbacks_string_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_FALLBACKS", "a, b")
    assert Settings().model_fallbacks == ["a", "b"]
    monkeypatch.setenv("AGENT_MODELS", '{"writer": "x"}')
    with pytest.raises(ValueError, match="unknown agent"):
        Settings()


def test_usage_and_cost_come_from_the_price_table() -> None:
    assert cost_usd("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert cost_usd("unknown-model", 10, 10) == 0.0
    msg = AIMessage(
        "hi",
        usage_metadata={"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500},
        response_metadata={"model_name": "gpt-4o"},
    )
    u = usage_from_message("content", msg, "fallback")["content"]
    assert (u["calls"], u["input_tokens"], u["output_tokens"], u["models"]) == (
        1,
        1000,
        500,
        ["gpt-4o"],
    )
    assert u["cost_usd"] == pytest.approx(1000 / 1e6 * 2.5 + 500 / 1e6 * 10)


class Unanswerable(BaseModel):
    value: int


async def test_structured_output_gives_a_typed_error_when_the_model_cannot_comply() -> None:
    previous = set_model_factory(ModelFactory(Settings(model_provider="scripted")))
    try:
        plan, usage = await ask_structured(
            "supervisor",
            Plan,
            [HumanMessage("<task>\nrequest: write a blog post about our TerraRun shoe\n</task>")],
        )
        assert plan.action == "execute" and usage["supervisor"]["calls"] == 1
        with pytest.raises(ModelOutputError, match="no valid Unanswerable"):
            await ask_structured("supervisor", Unanswerable, [HumanMessage("anything")])
    finally:
        set_model_factory(previous)


async def test_scripted_model_streams_tokens_and_reports_usage() -> None:
    chunks = [
        c
        async for c in ScriptedChatModel().astream(
            [HumanMessage("<task>\nproduced: blog\n</task>")]
        )
    ]
    assert len(chunks) > 3
    text = "".join(str(c.content) for c in chunks)
    assert text.startswith("[scripted answer]")
    assert chunks[-1].usage_metadata and chunks[-1].usage_metadata["output_tokens"] > 0


async def test_scripted_latency_setting_delays_each_call() -> None:
    """SCRIPTED_LATENCY_MS simulates model time (for load tests): each call waits at least that."""
    import time

    from app.scripted import ScriptedChatModel

    f = ModelFactory(Settings(model_provider="scripted", scripted_latency_ms=50))
    model = f.chat("supervisor")
    assert isinstance(model, ScriptedChatModel) and model.latency_s == 0.05
    started = time.perf_counter()
    await model.ainvoke("hello")
    assert time.perf_counter() - started >= 0.05
    with pytest.raises(ValueError):
        Settings(scripted_latency_ms=-1)
