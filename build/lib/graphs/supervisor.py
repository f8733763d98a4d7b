"""Supervisor: plan (structured output) -> delegate ready steps to sub-agent subgraphs (`Send`,
independent steps in parallel) -> review -> answer. Follow-up turns on a thread build on the
artifacts and brief already in its state."""

from __future__ import annotations

import json
from typing import Any, Literal

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Command, RetryPolicy, Send

from app.llm import ModelOutputError, ask_structured, ask_text
from graphs import content, publishing, research, social
from graphs.context import MarketingContext, context_of
from graphs.heuristic_plan import heuristic_plan
from graphs.planning import normalize_plan, resolve_publish_time
from graphs.schemas import Plan
from graphs.state import (
    RESET,
    AgentInput,
    Artifact,
    StepResult,
    SupervisorInput,
    SupervisorState,
)
from prompts import render, task_block

AGENT_NODES = ("research", "content", "social", "publishing")
HISTORY_MESSAGES = 8
DECLINE_TEXT = (
    "I can help with marketing work — research briefs, blog posts, emails, landing pages, social "
    "posts and scheduling them — but not with this request."
)

# transient failures (network, rate limits, 5xx) are retried; validation errors are not
_RETRY = RetryPolicy(max_attempts=3, initial_interval=1.0, backoff_factor=2.0)


def _text(message: AnyMessage) -> str:
    content_ = message.content
    if isinstance(content_, str):
        return content_
    return " ".join(
        part.get("text", "") if isinstance(part, dict) else str(part) for part in content_
    )


def _artifact_index(artifacts: dict[str, Artifact]) -> dict[str, dict[str, Any]]:
    return {
        a["id"]: {
            "kind": a["kind"],
            "platform": a["platform"],
            "status": a["status"],
            "version": a["version"],
            "preview": a["body"][:80],
        }
        for a in artifacts.values()
    }


# ---------------------------------------------------------------------------------------------
# plan
# ---------------------------------------------------------------------------------------------

MAKERS = ("research", "content", "social")


def keyword_plan(
    request: str, index: dict[str, dict[str, Any]], ctx: MarketingContext, state: SupervisorState
) -> Plan:
    """The deterministic planner, used when a model's plan is unusable or degenerate."""
    return heuristic_plan(
        request,
        artifacts=index,
        allowed_platforms=ctx.platforms,
        has_brief=bool(state.get("brief")),
    )


async def plan(
    state: SupervisorState, runtime: Runtime[MarketingContext]
) -> Command[Literal["dispatch", "answer"]]:
    ctx = context_of(runtime)
    messages = state.get("messages") or []
    humans = [m for m in messages if isinstance(m, HumanMessage)]
    request = _text(humans[-1]).strip() if humans else ""
    turn = state.get("turn", 0) + 1
    base: dict[str, Any] = {
        "turn": turn,
        "request": request,
        "results": {RESET: True},
        "replans": 0,
    }
    if not request:
        clarify = Plan(action="clarify", question="What would you like the team to do?")
        return Command(goto="answer", update={**base, "plan": clarify.model_dump()})
    artifacts = state.get("artifacts") or {}
    index = _artifact_index(artifacts)
    history = "\n".join(
        f"{'user' if isinstance(m, HumanMessage) else 'assistant'}: {_text(m)[:400]}"
        for m in messages[-HISTORY_MESSAGES:]
    )
    prompt = render(
        "supervisor_plan",
        platforms=", ".join(ctx.platforms),
        task=task_block(
            agent="supervisor",
            request=request,
            allowed_platforms=list(ctx.platforms),
            has_brief="yes" if state.get("brief") else "no",
            artifacts=json.dumps(index),
        ),
        history=history,
    )
    notes: list[str] = []
    usage: dict[str, Any] = {}
    try:
        proposed, usage = await ask_structured(
            "supervisor", Plan, prompt, overrides=ctx.model_overrides
        )
    except ModelOutputError as exc:
        notes.append(f"the model's plan was unusable ({exc}); used the keyword planner")
        usage = exc.usage
        proposed = keyword_plan(request, index, ctx, state)
    final, policy_notes = normalize_plan(proposed, ctx, index)
    # judged after the plan policies: a step they drop (e.g. a revision of an item that does not
    # exist) does not count, so a plan left with nothing to make is degenerate too
    if proposed.action == "execute" and not any(s.agent in MAKERS for s in final.steps):
        fallback = keyword_plan(request, index, ctx, state)
        if any(s.agent in MAKERS for s in fallback.steps):
            notes.append(
                "the model's plan produced none of the requested pieces; used the keyword planner"
            )
            final, policy_notes = normalize_plan(fallback, ctx, index)
    notes += policy_notes
    plan_dict = final.model_dump()
    plan_dict["notes"] = notes
    plan_dict["publish_at_iso"] = None
    if final.action == "execute" and final.publish_at:
        iso = resolve_publish_time(final.publish_at, ctx)
        if iso is None and any(s.agent == "publishing" for s in final.steps):
            ask = Plan(
                action="clarify",
                topic=final.topic,
                question=f"When exactly should I publish? I could not read {final.publish_at!r} "
                "as a date and time.",
            )
            return Command(goto="answer", update={**base, "plan": ask.model_dump(), "usage": usage})
        plan_dict["publish_at_iso"] = iso
    goto: Literal["dispatch", "answer"] = "dispatch" if final.action == "execute" else "answer"
    return Command(goto=goto, update={**base, "plan": plan_dict, "usage": usage})


# ---------------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------------


def _new_artifact_id(base_id: str, artifacts: dict[str, Artifact], taken: set[str]) -> str:
    candidate, n = base_id, 1
    while candidate in artifacts or candidate in taken:
        n += 1
        candidate = f"{base_id}-{n}"
    return candidate


def _follow_up_steps(
    step: dict[str, Any], result: StepResult, state: SupervisorState
) -> list[dict[str, Any]]:
    """`respond` feedback: rewrite each item with its agent, then ask approval again."""
    artifacts = state.get("artifacts") or {}
    rewrites = []
    for n, rev in enumerate(result.get("revisions") or [], start=1):
        art = artifacts[rev["artifact_id"]]
        rewrites.append(
            {
                "id": f"{step['id']}-rw{n}",
                "agent": art["agent"],
                "task": f"Rewrite {art['id']} following the reviewer's feedback.",
                "depends_on": [],
                "kind": art["kind"] if art["agent"] == "content" else None,
                "platform": art["platform"],
                "revise": art["id"],
                "feedback": rev["feedback"],
                "follows": step["id"],
            }
        )
    again = {
        "id": f"{step['id']}-again",
        "agent": "publishing",
        "task": step["task"],
        "depends_on": [r["id"] for r in rewrites],
        "kind": None,
        "platform": None,
        "revise": None,
        "follows": step["id"],
    }
    return [*rewrites, again]


def _payload(step: dict[str, Any], state: SupervisorState, taken: set[str]) -> AgentInput:
    plan_ = state.get("plan") or {}
    artifacts = state.get("artifacts") or {}
    results = state.get("results") or {}
    dep_artifacts = [
        artifacts[aid]
        for d in step["depends_on"]
        if d in results and results[d]["status"] == "done"
        for aid in results[d]["artifact_ids"]
        if aid in artifacts
    ]
    payload = AgentInput(
        task=step["task"],
        step_id=step["id"],
        request=state.get("request", ""),
        topic=plan_.get("topic") or "",
        brief=state.get("brief"),
    )
    if step.get("feedback"):
        payload["feedback"] = step["feedback"]
    if step["agent"] in ("content", "social"):
        revise = artifacts.get(step.get("revise") or "")
        if revise:
            payload["revise"] = revise
            payload["artifact_id"] = revise["id"]
            payload["version"] = revise["version"] + 1
        else:
            base_id = (
                step.get("kind") or "blog"
                if step["agent"] == "content"
                else f"post-{step['platform']}"
            )
            payload["artifact_id"] = _new_artifact_id(base_id.replace("_", "-"), artifacts, taken)
            payload["version"] = 1
        taken.add(payload["artifact_id"])
        if step.get("kind"):
            payload["kind"] = step["kind"]
        if step.get("platform"):
            payload["platform"] = step["platform"]
        # social posts draw on long-form pieces of this plan, or of earlier turns
        long_form = [a for a in dep_artifacts if a["kind"] != "post"] or (
            [a for a in artifacts.values() if a["kind"] != "post" and a["status"] != "rejected"]
            if step["agent"] == "social"
            else []
        )
        payload["sources"] = long_form[:2]
    elif step["agent"] == "publishing":
        payload["items"] = [a for a in dep_artifacts if a["status"] != "rejected"]
        payload["publish_at"] = plan_.get("publish_at_iso")
    return payload


def _own_failures(results: dict[str, StepResult]) -> list[str]:
    """Steps that failed themselves (not skipped because a dependency failed)."""
    return [
        r["step_id"]
        for r in results.values()
        if r["status"] == "failed" and not r.get("error", "").startswith("skipped")
    ]


def dispatch(
    state: SupervisorState,
    runtime: Runtime[MarketingContext],
) -> Command[Literal["research", "content", "social", "publishing", "review"]]:
    plan_ = dict(state.get("plan") or {})
    steps: list[dict[str, Any]] = list(plan_.get("steps") or [])
    results: dict[str, StepResult] = dict(state.get("results") or {})
    update: dict[str, Any] = {}

    # publishing asked for rewrites: extend the plan once per publishing step
    for step in list(steps):
        res = results.get(step["id"])
        if (
            res
            and res["status"] == "needs_revision"
            and not any(s.get("follows") == step["id"] for s in steps)
        ):
            steps += _follow_up_steps(step, res, state)
    if len(steps) != len(plan_.get("steps") or []):
        plan_["steps"] = steps
        update["plan"] = plan_
        state = {**state, "plan": plan_}

    # a failed step goes to review (and is retried) before anything that depends on it runs
    if _own_failures(results) and state.get("replans", 0) < context_of(runtime).max_replans:
        return Command(goto="review", update=update)

    # steps whose (non-publishing) dependencies failed are skipped, transitively
    skipped: dict[str, StepResult] = {}
    changed = True
    while changed:
        changed = False
        for step in steps:
            if step["id"] in results or step["id"] in skipped or step["agent"] == "publishing":
                continue
            bad = [
                d
                for d in step["depends_on"]
                if (d in results and results[d]["status"] == "failed")
                or (d in skipped and skipped[d]["status"] == "failed")
            ]
            if bad:
                skipped[step["id"]] = StepResult(
                    step_id=step["id"],
                    agent=step["agent"],
                    status="failed",
                    summary=f"skipped: {', '.join(bad)} failed",
                    artifact_ids=[],
                    error="skipped: dependency failed",
                )
                changed = True
    if skipped:
        update["results"] = skipped
        results.update(skipped)

    ready = [
        s for s in steps if s["id"] not in results and all(d in results for d in s["depends_on"])
    ]
    if not ready:
        return Command(goto="review", update=update)
    taken: set[str] = set()
    sends = [Send(s["agent"], _payload(s, state, taken)) for s in ready]
    return Command(goto=sends, update=update)


# ---------------------------------------------------------------------------------------------
# review and answer
# ---------------------------------------------------------------------------------------------


def review(
    state: SupervisorState, runtime: Runtime[MarketingContext]
) -> Command[Literal["dispatch", "answer"]]:
    """Retry steps that failed on their own while the re-plan budget lasts (dispatch comes here
    as soon as a step fails, so dependents wait for the retry); otherwise answer."""
    ctx = context_of(runtime)
    results = state.get("results") or {}
    if _own_failures(results) and state.get("replans", 0) < ctx.max_replans:
        keep = {k: v for k, v in results.items() if v["status"] != "failed"}
        return Command(
            goto="dispatch",
            update={"results": {RESET: True, **keep}, "replans": state.get("replans", 0) + 1},
        )
    return Command(goto="answer")


def _facts(state: SupervisorState) -> tuple[list[str], list[str], list[str]]:
    results = state.get("results") or {}
    artifacts = state.get("artifacts") or {}
    produced, scheduled, problems = [], [], []
    for r in results.values():
        for aid in r["artifact_ids"]:
            art = artifacts.get(aid)
            if art and r["agent"] in ("content", "social"):
                score = f", score {art['score']:.2f}" if art.get("score") is not None else ""
                produced.append(f"{aid} v{art['version']} ({art['kind']}{score})")
        if r["agent"] == "research" and r["status"] == "done":
            produced.append("research brief")
        if r["status"] == "failed":
            problems.append(f"{r['step_id']}: {r.get('error') or r['summary']}")
    this_turn = {
        aid for r in results.values() if r["agent"] == "publishing" for aid in r["artifact_ids"]
    }
    for item in state.get("scheduled") or []:
        if item["artifact_id"] in this_turn and item["status"] == "scheduled":
            scheduled.append(
                f"{item['artifact_id']} v{item['version']} on {item['platform']} at {item['scheduled_at']}"
            )
    for aid in sorted(this_turn):
        if aid in artifacts and artifacts[aid]["status"] == "rejected":
            problems.append(f"{aid}: ignored at approval, not scheduled")
    return list(dict.fromkeys(produced)), scheduled, problems


async def answer(state: SupervisorState, runtime: Runtime[MarketingContext]) -> dict[str, Any]:
    ctx = context_of(runtime)
    plan_ = state.get("plan") or {}
    action = plan_.get("action")
    if action == "clarify":
        return {
            "messages": [
                AIMessage(plan_.get("question") or "Could you say more?", name="supervisor")
            ]
        }
    if action == "decline":
        return {"messages": [AIMessage(DECLINE_TEXT, name="supervisor")]}
    produced, scheduled, problems = _facts(state)
    prompt = render(
        "supervisor_answer",
        task=task_block(
            agent="supervisor",
            request=state.get("request", ""),
            produced=produced or ["nothing"],
            scheduled=scheduled or ["nothing"],
            problems=problems or None,
        ),
    )
    reply, usage = await ask_text(
        "supervisor", prompt, overrides=ctx.model_overrides, tags=["final_answer"]
    )
    details = ["", "- **Produced:** " + ("; ".join(produced) or "nothing")]
    details.append("- **Scheduled:** " + ("; ".join(scheduled) or "nothing"))
    if problems:
        details.append("- **Problems:** " + "; ".join(problems))
    notes = plan_.get("notes") or []
    if notes:
        details.append("- **Notes:** " + "; ".join(notes))
    text = str(reply.content).strip() + "\n" + "\n".join(details)
    return {"messages": [AIMessage(text, name="supervisor")], "usage": usage}


builder = StateGraph(SupervisorState, context_schema=MarketingContext, input_schema=SupervisorInput)
builder.add_node("plan", plan)
builder.add_node("dispatch", dispatch)
builder.add_node("research", research.graph, retry_policy=_RETRY)
builder.add_node("content", content.graph, retry_policy=_RETRY)
builder.add_node("social", social.graph, retry_policy=_RETRY)
builder.add_node("publishing", publishing.graph)
builder.add_node("review", review)
builder.add_node("answer", answer)
builder.add_edge(START, "plan")
for agent in AGENT_NODES:
    builder.add_edge(agent, "dispatch")
builder.add_edge("answer", END)

graph = builder.compile(name="supervisor")
