"""Per-run settings (`context_schema`): brand, voice, audience, platforms, limits, model overrides.

Context is never checkpointed, so nothing secret is ever written to the checkpoint store; it is
passed again with each run (the CLI and server keep it with the thread's own records).
"""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.settings import check_agent_names
from tools.platforms import UnknownPlatformError, get_rules, known_platforms


class MarketingContext(BaseModel):
    """Per-run settings for every graph (LangGraph `context_schema`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    brand_name: str = Field("Acme", min_length=1, max_length=120)
    brand_voice: str = Field(
        "confident, warm and concrete; short sentences; no hype", max_length=2000
    )
    audience: str = Field("people who might buy the product", max_length=2000)
    banned_terms: list[str] = Field(default_factory=list, max_length=200)
    keywords: list[str] = Field(
        default_factory=list, max_length=50, description="Terms the copy should cover."
    )
    platforms: list[str] = Field(
        default_factory=lambda: ["linkedin", "x"],
        description="Social platforms allowed for this run (see tools/platform_rules.toml).",
    )
    timezone: str = Field("UTC", description="IANA zone used to read times like 'Tuesday 9am'.")
    model_overrides: dict[str, str] = Field(
        default_factory=dict, description='Per-agent model names for this run: {"content": "..."}.'
    )
    max_revisions: int = Field(2, ge=0, le=10, description="Content self-revision rounds.")
    score_threshold: float = Field(0.7, ge=0.0, le=1.0)
    max_research_rounds: int = Field(2, ge=1, le=6, description="Tool-calling rounds.")
    max_replans: int = Field(1, ge=0, le=5)

    @field_validator("platforms")
    @classmethod
    def _known_platforms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one platform is required")
        try:
            return list(dict.fromkeys(get_rules(p).name for p in value))
        except UnknownPlatformError as exc:  # the rejected value is not echoed (may be a secret)
            raise ValueError(f"unknown platform; known platforms: {', '.join(exc.known)}") from None

    @field_validator("model_overrides")
    @classmethod
    def _known_agents(cls, value: dict[str, str]) -> dict[str, str]:
        return check_agent_names(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("unknown time zone (use an IANA name such as 'Europe/Paris')") from exc
        return value


def context_of(runtime: Runtime[Any] | None) -> MarketingContext:
    """The run's context, or the defaults when a run was started without one (e.g. Studio)."""
    ctx = getattr(runtime, "context", None)
    if isinstance(ctx, MarketingContext):
        return ctx
    if isinstance(ctx, dict):
        return MarketingContext(**ctx)
    return MarketingContext()


__all__ = ["MarketingContext", "context_of", "known_platforms"]
