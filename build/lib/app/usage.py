"""Token usage per agent and its cost from the price table (`app/prices.toml`)."""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Any

from langchain_core.messages import AIMessage

from graphs.state import AgentUsage


@cache
def price_table() -> dict[str, dict[str, float]]:
    text = resources.files("app").joinpath("prices.toml").read_text(encoding="utf-8")
    models: dict[str, dict[str, float]] = tomllib.loads(text).get("models", {})
    return models


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> float:
    price = price_table().get(model)
    if price is None:
        return 0.0
    return round(
        input_tokens / 1e6 * price.get("input", 0.0)
        + output_tokens / 1e6 * price.get("output", 0.0),
        8,
    )


def is_priced(model: str) -> bool:
    return model in price_table()


def model_name_of(message: AIMessage, default: str) -> str:
    meta: dict[str, Any] = message.response_metadata or {}
    name = meta.get("model_name") or meta.get("model") or default
    return str(name)


def usage_from_message(
    agent: str, message: AIMessage | None, default_model: str
) -> dict[str, AgentUsage]:
    """One model call's usage as a `usage` channel update ({agent: AgentUsage})."""
    if message is None:
        return {}
    um: dict[str, Any] = dict(message.usage_metadata or {})
    model = model_name_of(message, default_model)
    tin = int(um.get("input_tokens", 0))
    tout = int(um.get("output_tokens", 0))
    return {
        agent: AgentUsage(
            calls=1,
            input_tokens=tin,
            output_tokens=tout,
            cost_usd=cost_usd(model, tin, tout),
            models=[model],
        )
    }
