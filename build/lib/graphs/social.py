"""Social sub-agent: one post for one platform, within that platform's rules
(`tools/platform_rules.toml`), with hashtags."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command

from app.llm import ModelOutputError, ask_structured
from app.settings import get_settings
from graphs.context import MarketingContext, context_of
from graphs.learning import examples_block
from graphs.material import material
from graphs.schemas import SocialDraft
from graphs.state import AgentInput, AgentOutput, Artifact, StepResult, step_failed
from prompts import render, task_block
from tools.platforms import check_post, fit_post, get_rules
from tools.scoring import find_banned_terms

MAX_ATTEMPTS = 2


class SocialState(AgentInput, AgentOutput, total=False):
    draft: dict[str, Any] | None
    attempt: int
    problem: str
    error: str


def _platform(state: SocialState) -> str:
    revise = state.get("revise")
    return state.get("platform") or (revise["platform"] if revise else None) or "x"


async def write(
    state: SocialState, runtime: Runtime[MarketingContext]
) -> Command[Literal["check", "finish"]]:
    ctx = context_of(runtime)
    rules = get_rules(_platform(state))
    attempt = state.get("attempt", 0)
    feedback = state.get("problem") if attempt else state.get("feedback")
    examples = await examples_block(
        runtime,
        ctx,
        query="\n".join(x for x in (state.get("topic", ""), state.get("task", "")) if x),
        kind="post",
        platform=rules.name,
        artifact_id=state.get("artifact_id") or f"post-{rules.name}",
        k=get_settings().kb_examples_k,
    )
    prompt = render(
        "social_write",
        brand=ctx.brand_name,
        voice=ctx.brand_voice,
        audience=ctx.audience,
        banned=", ".join(ctx.banned_terms) or "(none)",
        platform_name=rules.display_name,
        max_chars=rules.max_chars,
        max_hashtags=rules.hashtag_cap if rules.hashtag_cap is not None else 5,
        style="; ".join(x for x in (rules.tone, rules.format_hints) if x) or "plain",
        task=task_block(
            agent="social",
            platform=rules.name,
            topic=state.get("topic", ""),
            brand=ctx.brand_name,
            keywords=list(ctx.keywords),
            max_chars=rules.max_chars,
            task=state.get("task", ""),
            feedback=feedback or None,
        ),
        material=material(state),
        examples=examples,
    )
    try:
        draft, usage = await ask_structured(
            "social", SocialDraft, prompt, overrides=ctx.model_overrides
        )
    except ModelOutputError as exc:
        return Command(goto="finish", update={"error": str(exc), "usage": exc.usage})
    return Command(
        goto="check", update={"draft": draft.model_dump(), "attempt": attempt + 1, "usage": usage}
    )


def check(
    state: SocialState, runtime: Runtime[MarketingContext]
) -> Command[Literal["write", "finish"]]:
    """Banned terms send the draft back once; length is fixed deterministically in `finish`."""
    ctx = context_of(runtime)
    draft = state.get("draft") or {}
    text = " ".join([draft.get("text", ""), *draft.get("hashtags", [])])
    banned = find_banned_terms(text, list(ctx.banned_terms))
    if banned and state.get("attempt", 1) < MAX_ATTEMPTS:
        return Command(
            goto="write",
            update={"problem": f"Remove these banned terms and rewrite: {', '.join(banned)}."},
        )
    return Command(goto="finish")


def finish(state: SocialState, runtime: Runtime[MarketingContext]) -> dict[str, Any]:
    ctx = context_of(runtime)
    step_id = state.get("step_id", "social")
    platform = get_rules(_platform(state)).name
    draft = state.get("draft")
    if not draft:
        return step_failed(
            step_id, "social", f"no usable {platform} post", state.get("error", "no draft")
        )
    body = fit_post(draft["text"], list(draft.get("hashtags") or []), platform)
    check_result = check_post(body, platform)
    banned = find_banned_terms(body, list(ctx.banned_terms))
    art_id = state.get("artifact_id") or f"post-{platform}"
    artifact = Artifact(
        id=art_id,
        kind="post",
        platform=platform,
        title=f"{get_rules(platform).display_name} post",
        body=body,
        hashtags=[h.lstrip("#") for h in draft.get("hashtags") or []],
        version=state.get("version", 1),
        agent="social",
        step_id=step_id,
        score=None,
        status="draft",
    )
    problems = list(check_result.problems) + ([f"banned terms {banned}"] if banned else [])
    summary = (
        f"{platform} post, {check_result.length}/{check_result.max_chars} characters, "
        f"{check_result.hashtags} hashtags"
    )
    if problems:  # never offered for approval; a retry writes the same artifact id again
        return step_failed(step_id, "social", summary, "; ".join(problems))
    result = StepResult(
        step_id=step_id, agent="social", status="done", summary=summary, artifact_ids=[art_id]
    )
    return {
        "artifacts": {art_id: artifact},
        "results": {step_id: result},
        "trace": [f"social:{step_id}"],
    }


builder = StateGraph(
    SocialState, context_schema=MarketingContext, input_schema=AgentInput, output_schema=AgentOutput
)
builder.add_node("write", write)
builder.add_node("check", check)
builder.add_node("finish", finish)
builder.add_edge(START, "write")
builder.add_edge("finish", END)

graph = builder.compile(name="social")
