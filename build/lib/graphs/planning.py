"""Plan policies applied to every plan, whoever wrote it (a model or the keyword planner):
allowed platforms, one research step, dependencies on research and on what gets published,
re-approval of revised items that were already scheduled, and the publish time."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from graphs.context import MarketingContext
from graphs.schemas import Plan, PlanStep
from tools.platforms import UnknownPlatformError, get_rules


def resolve_publish_time(
    phrase: str, ctx: MarketingContext, now: datetime | None = None
) -> str | None:
    """'Tuesday 9am' -> ISO time in the run's zone (future-preferring), or None if unreadable."""
    import dateparser

    tz = ZoneInfo(ctx.timezone)
    base = (now or datetime.now(tz)).astimezone(tz).replace(tzinfo=None)
    parsed = dateparser.parse(
        phrase,
        languages=["en"],
        settings={
            "PREFER_DATES_FROM": "future",
            "RELATIVE_BASE": base,
            "RETURN_AS_TIMEZONE_AWARE": False,
        },
    )
    if parsed is None:
        try:
            parsed = datetime.fromisoformat(phrase)
        except ValueError:
            return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.isoformat(timespec="minutes")


def normalize_plan(
    plan: Plan, ctx: MarketingContext, artifacts: Mapping[str, Mapping[str, Any]]
) -> tuple[Plan, list[str]]:
    """Return the plan the supervisor will run and notes on what was changed and why."""
    if plan.action != "execute":
        return plan, []
    notes: list[str] = []
    steps: list[PlanStep] = []
    for step in plan.steps:
        if step.agent == "social":
            try:
                platform = get_rules(step.platform or "").name
            except UnknownPlatformError:
                notes.append(f"dropped step {step.id}: unknown platform {step.platform!r}")
                continue
            if platform not in ctx.platforms:
                notes.append(
                    f"dropped step {step.id}: {platform} is not enabled for this brand "
                    f"(platforms: {', '.join(ctx.platforms)})"
                )
                continue
            step = step.model_copy(update={"platform": platform})
        if step.revise and step.revise not in artifacts:
            notes.append(f"step {step.id}: nothing called {step.revise!r} to revise; writing anew")
            step = step.model_copy(update={"revise": None})
        steps.append(step)

    research = [s for s in steps if s.agent == "research"]
    if len(research) > 1:
        keep = research[0]
        merged = keep.model_copy(update={"task": " ".join(s.task for s in research)})
        dropped = {s.id for s in research[1:]}
        steps = [merged if s.id == keep.id else s for s in steps if s.id not in dropped]
        steps = [
            s.model_copy(
                update={"depends_on": [keep.id if d in dropped else d for d in s.depends_on]}
            )
            for s in steps
        ]
        notes.append("merged research steps into one")
    known = {s.id for s in steps}
    producers = [s.id for s in steps if s.agent in ("content", "social")]
    fixed: list[PlanStep] = []
    for s in steps:
        deps = [d for d in dict.fromkeys(s.depends_on) if d in known and d != s.id]
        if s.agent in ("content", "social") and research and research[0].id not in deps:
            deps.append(research[0].id)
        if s.agent == "publishing" and not deps:
            if not producers:
                notes.append(f"dropped step {s.id}: nothing in the plan for it to publish")
                continue
            deps = producers
        fixed.append(s.model_copy(update={"depends_on": deps}))
    steps = fixed
    # a revised item that is currently scheduled must be approved again to replace it
    republish = [
        s.id for s in steps if s.revise and artifacts.get(s.revise, {}).get("status") == "scheduled"
    ]
    if republish and not any(s.agent == "publishing" for s in steps):
        steps.append(
            PlanStep(
                id="publish",
                agent="publishing",
                task="Approve the revised items that replace scheduled ones.",
                depends_on=republish,
            )
        )
        notes.append("revised items were scheduled: added an approval step to replace them")
    if not steps:
        return (
            Plan(
                action="clarify",
                topic=plan.topic,
                question="None of the requested pieces can be produced with the current settings "
                "(" + "; ".join(notes) + "). What should I make instead?",
                reasoning="every step was dropped",
            ),
            notes,
        )
    return Plan.model_validate(
        {**plan.model_dump(), "steps": [s.model_dump() for s in steps]}
    ), notes
