"""Research sub-agent: tool-calling rounds (knowledge base, web search when configured, URL fetch),
then a brief whose citations are checked against the sources actually gathered."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from langgraph.types import Command

from app.llm import ModelOutputError, ask_structured
from app.models import aget_model_factory
from app.usage import usage_from_message
from graphs.context import MarketingContext, context_of
from graphs.schemas import BriefDraft
from graphs.state import (
    AgentInput,
    Brief,
    KeyPoint,
    ResearchOutput,
    Source,
    StepResult,
    step_failed,
)
from prompts import data_block, render, task_block
from tools.research_tools import research_tools


class ResearchState(AgentInput, ResearchOutput, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    rounds: int
    notes: list[str]


def _task(state: ResearchState) -> str:
    return state.get("task") or state.get("request") or ""


async def gather(
    state: ResearchState, runtime: Runtime[MarketingContext]
) -> Command[Literal["tools", "write_brief"]]:
    ctx = context_of(runtime)
    tools, notes = research_tools()
    rounds = state.get("rounds", 0)
    if rounds >= ctx.max_research_rounds:
        return Command(goto="write_brief", update={"notes": notes})
    names = [t.name for t in tools]
    messages: list[AnyMessage] = list(state.get("messages") or [])
    if not messages:
        web_hint = (
            "search the web for what people say"
            if "web_search" in names
            else "(web search is not available)"
        )
        messages = render(
            "research_agent",
            web_hint=web_hint,
            task=task_block(agent="research", topic=state.get("topic", ""), task=_task(state)),
        )  # type: ignore[assignment]
    factory = await aget_model_factory()
    model = factory.with_tools(
        "research",
        tools,
        tool_choice="any" if rounds == 0 else "auto",
        overrides=ctx.model_overrides,
    )
    reply = await model.ainvoke(messages, config={"tags": ["agent:research"]})
    usage = usage_from_message(
        "research", reply, factory.model_name("research", ctx.model_overrides)
    )
    new_messages = [*messages[len(state.get("messages") or []) :], reply]
    has_calls = isinstance(reply, AIMessage) and bool(reply.tool_calls)
    return Command(
        goto="tools" if has_calls else "write_brief",
        update={"messages": new_messages, "rounds": rounds + 1, "notes": notes, "usage": usage},
    )


async def run_tools(state: ResearchState) -> dict[str, Any]:
    """Execute the last message's tool calls; unknown or unavailable tools get an error result."""
    tools, _ = research_tools()
    by_name = {t.name: t for t in tools}
    last = state["messages"][-1]
    out: list[ToolMessage] = []
    for call in getattr(last, "tool_calls", []):
        tool = by_name.get(call["name"])
        if tool is None:
            out.append(
                ToolMessage(
                    content=f"Tool {call['name']!r} is not available.",
                    tool_call_id=call["id"] or call["name"],
                    name=call["name"],
                    artifact=[],
                    status="error",
                )
            )
            continue
        message = await tool.ainvoke({**call, "type": "tool_call"})
        out.append(message)
    return {"messages": out}


def collect_sources(messages: list[AnyMessage]) -> list[Source]:
    """Number the gathered sources S1..Sn, one per URL/title."""
    seen: set[str] = set()
    sources: list[Source] = []
    for m in messages:
        if not isinstance(m, ToolMessage) or not isinstance(m.artifact, list):
            continue
        for item in m.artifact:
            key = item.get("url") or item.get("title", "")
            if key in seen:
                continue
            seen.add(key)
            sources.append(
                Source(
                    id=f"S{len(sources) + 1}",
                    title=str(item.get("title", "")),
                    url=str(item.get("url", "")),
                    snippet=str(item.get("snippet", "")),
                    origin=item.get("origin", "knowledge_base"),
                )
            )
    return sources


def _sources_text(sources: list[Source]) -> str:
    if not sources:
        return "(no sources were found)"
    parts = [
        f'<source id="{s["id"]}" title="{s["title"].replace(chr(34), "")}" url="{s["url"]}">\n'
        f"{s['snippet']}\n</source>"
        for s in sources
    ]
    return data_block("research sources", "\n".join(parts))


async def write_brief(state: ResearchState, runtime: Runtime[MarketingContext]) -> dict[str, Any]:
    ctx = context_of(runtime)
    step_id = state.get("step_id", "research")
    topic = state.get("topic", "") or _task(state)[:80]
    sources = collect_sources(state.get("messages") or [])
    notes = list(state.get("notes") or [])
    if not sources:
        notes.append("no sources found: the brief's points are unsourced and need checking")
    prompt = render(
        "research_brief",
        task=task_block(agent="research", topic=topic, brand=ctx.brand_name, task=_task(state)),
        sources=_sources_text(sources),
    )
    try:
        draft, usage = await ask_structured(
            "research", BriefDraft, prompt, overrides=ctx.model_overrides
        )
    except ModelOutputError as exc:
        return {**step_failed(step_id, "research", "research failed", str(exc)), "usage": exc.usage}
    valid = {s["id"] for s in sources}
    points = [
        KeyPoint(point=p.point, source_ids=[i for i in p.source_ids if i in valid])
        for p in draft.key_points
    ]
    summary = re.sub(
        r"\[(S\d+)\]", lambda m: m.group(0) if m.group(1) in valid else "", draft.summary
    )
    brief = Brief(
        topic=topic,
        summary=summary.strip(),
        key_points=points,
        sources=sources,
        notes=notes,
    )
    cited = sorted(
        {i for p in points for i in p["source_ids"]} | set(re.findall(r"S\d+", summary)) & valid
    )
    return {
        "brief": brief,
        "usage": usage,
        "results": {
            step_id: StepResult(
                step_id=step_id,
                agent="research",
                status="done",
                summary=f"brief with {len(points)} key points citing {len(cited)} of "
                f"{len(sources)} sources" + (f"; {'; '.join(notes)}" if notes else ""),
                artifact_ids=[],
            )
        },
        "trace": [f"research:{step_id}"],
    }


builder = StateGraph(
    ResearchState,
    context_schema=MarketingContext,
    input_schema=AgentInput,
    output_schema=ResearchOutput,
)
builder.add_node("gather", gather)
builder.add_node("tools", run_tools)
builder.add_node("write_brief", write_brief)
builder.add_edge(START, "gather")
builder.add_edge("tools", "gather")
builder.add_edge("write_brief", END)

graph = builder.compile(name="research")

__all__ = ["collect_sources", "graph"]
