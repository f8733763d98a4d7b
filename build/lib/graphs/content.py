"""Content sub-agent: long-form copy (blog, email, landing page) in the brand voice; scores each
draft with offline heuristics and revises while the score is under the threshold."""

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
from graphs.schemas import LongFormDraft
from graphs.state import AgentInput, AgentOutput, Artifact, StepResult, step_failed
from prompts import render, task_block
from tools.scoring import score_content


class ContentState(AgentInput, AgentOutput, total=False):
    draft: dict[str, str] | None
    report: dict[str, Any] | None
    attempt: int
    error: str


def _kind(state: ContentState) -> str:
    revise = state.get("revise")
    return state.get("kind") or (revise["kind"] if revise else "blog")


def _keywords(state: ContentState, ctx: MarketingContext) -> list[str]:
    return list(ctx.keywords) or ([state["topic"]] if state.get("topic") else [])


async def write(
    state: ContentState, runtime: Runtime[MarketingContext]
) -> Command[Literal["score", "finish"]]:
    ctx = context_of(runtime)
    attempt = state.get("attempt", 0)
    report = state.get("report") or {}
    feedback = " ".join(report.get("feedback") or []) if attempt else (state.get("feedback") or "")
    previous = state.get("draft")
    kind = _kind(state)
    examples = await examples_block(
        runtime,
        ctx,
        query="\n".join(x for x in (state.get("topic", ""), state.get("task", "")) if x),
        kind=kind,
        platform=None,
        artifact_id=state.get("artifact_id") or kind,
        k=get_settings().kb_examples_k,
    )
    prompt = render(
        "content_write",
        brand=ctx.brand_name,
        voice=ctx.brand_voice,
        audience=ctx.audience,
        banned=", ".join(ctx.banned_terms) or "(none)",
        keywords=", ".join(_keywords(state, ctx)) or "(none)",
        task=task_block(
            agent="content",
            kind=kind,
            topic=state.get("topic", ""),
            brand=ctx.brand_name,
            keywords=_keywords(state, ctx),
            task=state.get("task", ""),
            feedback=feedback or None,
            previous_draft="yes" if previous else None,
        ),
        material=material(state)
        + (f"\n\nYour previous draft:\n{previous['body']}" if previous else ""),
        examples=examples,
    )
    try:
        draft, usage = await ask_structured(
            "content", LongFormDraft, prompt, overrides=ctx.model_overrides
        )
    except ModelOutputError as exc:
        # keep the best draft we have (if any); the failed attempts' tokens still count
        return Command(goto="finish", update={"error": str(exc), "usage": exc.usage})
    return Command(
        goto="score", update={"draft": draft.model_dump(), "attempt": attempt + 1, "usage": usage}
    )


def score(
    state: ContentState, runtime: Runtime[MarketingContext]
) -> Command[Literal["write", "finish"]]:
    ctx = context_of(runtime)
    draft = state["draft"] or {"body": ""}
    report = score_content(
        draft["body"],
        kind=_kind(state),
        keywords=_keywords(state, ctx),
        banned_terms=list(ctx.banned_terms),
        threshold=ctx.score_threshold,
    )
    revisions_done = state.get("attempt", 1) - 1
    if not report.passed and revisions_done < ctx.max_revisions:
        return Command(goto="write", update={"report": report.model_dump()})
    return Command(goto="finish", update={"report": report.model_dump()})


def finish(state: ContentState) -> dict[str, Any]:
    step_id = state.get("step_id", "content")
    draft = state.get("draft")
    if not draft:
        return step_failed(step_id, "content", "no usable draft", state.get("error", "no draft"))
    report = state.get("report") or {}
    if not report.get("word_count"):
        return step_failed(
            step_id, "content", "the draft has no words", "empty draft from the model"
        )
    kind = _kind(state)
    art_id = state.get("artifact_id") or kind
    artifact = Artifact(
        id=art_id,
        kind=kind,  # type: ignore[typeddict-item]
        platform=None,
        title=draft["title"],
        body=draft["body"],
        hashtags=[],
        version=state.get("version", 1),
        agent="content",
        step_id=step_id,
        score=report.get("score"),
        status="draft",
    )
    banned = report.get("banned_terms_found") or []
    ok = bool(report.get("passed"))
    summary = (
        f"{kind.replace('_', ' ')} '{draft['title']}' ({report.get('word_count', 0)} words, score "
        f"{report.get('score', 0):.2f}, {state.get('attempt', 1) - 1} revision(s))"
    )
    if not ok:
        summary += " — below the quality threshold" + (
            f"; banned terms: {banned}" if banned else ""
        )
    if banned:  # never offered for approval; a retry writes the same artifact id again
        return step_failed(step_id, "content", summary, f"contains banned terms {banned}")
    return {
        "artifacts": {art_id: artifact},
        "results": {
            step_id: StepResult(
                step_id=step_id,
                agent="content",
                status="done",
                summary=summary,
                artifact_ids=[art_id],
            )
        },
        "trace": [f"content:{step_id}"],
    }


builder = StateGraph(
    ContentState,
    context_schema=MarketingContext,
    input_schema=AgentInput,
    output_schema=AgentOutput,
)
builder.add_node("write", write)
builder.add_node("score", score)
builder.add_node("finish", finish)
builder.add_edge(START, "write")
builder.add_edge("finish", END)

graph = builder.compile(name="content")
