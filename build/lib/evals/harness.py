"""Runs one conversation through the real `app.runner.Runner` and records what happened: events
(with the harness's approval decisions spliced in), the trajectory, tool calls, token use, time,
and publish-before-approval violations (from events and the outbox table)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from app.bootstrap import open_runner
from app.models import ModelFactory
from app.runner import Runner
from app.settings import Settings
from evals.capture import start_recording
from evals.datasets import Decision, Turn
from graphs.publishing import pending_platform
from tools.platforms import check_post

MAX_APPROVALS = 20
_OUTBOX_COUNT = re.compile(r"(\d+) item\(s\) in the outbox")


@asynccontextmanager
async def open_eval_runner(
    settings: Settings,
    *,
    factory: ModelFactory | None = None,
    runner_cls: type[Runner] = Runner,
) -> AsyncIterator[Runner]:
    """`app.bootstrap.open_runner` on a migrated store, with optional test doubles."""
    async with open_runner(settings, migrate=True, factory=factory, runner_cls=runner_cls) as r:
        yield r


@dataclass
class Transcript:
    thread_id: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[str] = field(default_factory=list)
    usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # publish before approval
    latency_s: float = 0.0
    error: str | None = None

    def turn_events(self, turn: int) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("turn") == turn]


def resume_value(decision: Decision, request: dict[str, Any], feedback: str) -> dict[str, Any]:
    """The agent-inbox answer for a scripted decision."""
    if decision == "edit":
        args = request["action_request"]["args"]
        body = str(args.get("body") or "")
        edited = "Edited: " + body
        platform = pending_platform(request)
        if platform and not check_post(edited, platform).ok:
            edited = body
        return {"type": "edit", "args": {"body": edited}}
    if decision == "respond":
        return {"type": "respond", "args": feedback}
    return {"type": decision}


def add_usage(total: dict[str, dict[str, Any]], usage: dict[str, dict[str, Any]]) -> None:
    for agent, u in usage.items():
        t = total.setdefault(
            agent, {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
        )
        for key in ("calls", "input_tokens", "output_tokens", "cost_usd"):
            t[key] += u.get(key, 0)
        t["cost_usd"] = round(t["cost_usd"], 8)


async def _check_outbox(
    runner: Runner, tr: Transcript, approved: set[tuple[str, int]], seen: set[int]
) -> None:
    rows = await runner.storage.db.list_outbox(thread_id=tr.thread_id)
    for row in rows:
        if row["id"] in seen:
            continue
        seen.add(row["id"])
        if (row["artifact_id"], int(row["version"])) not in approved:
            tr.violations.append(
                f"outbox row {row['artifact_id']} v{row['version']} written before its approval"
            )
    tr.outbox = rows


def _check_events(tr: Transcript, events: list[dict[str, Any]], answered: bool) -> None:
    """A publishing step reporting outbox items in a segment no approval answer started."""
    if answered:
        return
    for e in events:
        if e["type"] == "agent_done" and e["agent"] == "publishing":
            m = _OUTBOX_COUNT.search(e.get("summary", ""))
            if m and int(m.group(1)) > 0:
                tr.violations.append(f"publishing step {e['step']} scheduled items unasked")


async def run_conversation(
    runner: Runner, turns: Sequence[Turn], context: dict[str, Any] | None = None
) -> Transcript:
    """Send each turn on one thread and answer its approvals with the turn's decisions."""
    tr = Transcript()
    recorder = start_recording()
    approved: set[tuple[str, int]] = set()
    seen_rows: set[int] = set()
    started = time.perf_counter()

    async def segment(turn_no: int, stream: AsyncIterator[dict[str, Any]], answered: bool) -> None:
        events = []
        async for event in stream:
            if event["type"] == "token":
                continue
            event = {**event, "turn": turn_no, "t": round(time.perf_counter() - started, 4)}
            events.append(event)
            if event["type"] == "run":
                tr.thread_id = event["thread_id"]
            elif event["type"] == "usage":
                add_usage(tr.usage, event["usage"])
        tr.events += events
        _check_events(tr, events, answered)
        await _check_outbox(runner, tr, approved, seen_rows)

    try:
        for n, turn in enumerate(turns):
            await segment(n, runner.send(tr.thread_id or None, turn.request, context), False)
            decisions = list(turn.decisions)
            for _ in range(MAX_APPROVALS):
                view = await runner.view(tr.thread_id)
                if view.status != "interrupted":
                    break
                request = view.interrupts[0]["value"][0]
                decision: Decision = decisions.pop(0) if decisions else "accept"
                args = request["action_request"]["args"]
                aid, version = str(args["artifact_id"]), int(args["version"])
                if decision == "accept":
                    approved.add((aid, version))
                elif decision == "edit":
                    approved.add((aid, version + 1))
                tr.events.append(
                    {
                        "type": "decision",
                        "decision": decision,
                        "artifact_id": aid,
                        "version": version,
                        "turn": n,
                        "t": round(time.perf_counter() - started, 4),
                    }
                )
                value = resume_value(decision, request, turn.feedback)
                await segment(n, runner.resume(tr.thread_id, value, context), True)
            else:
                raise RuntimeError(f"more than {MAX_APPROVALS} approvals in one turn")
    except Exception as exc:  # noqa: BLE001 - a failing case is a result, not a harness error
        tr.error = f"{type(exc).__name__}: {exc}"[:500]
    tr.tool_calls = list(recorder.calls)
    tr.latency_s = round(time.perf_counter() - started, 4)
    return tr


def trajectory_of(events: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Groups of tokens: `plan:<action>`, each wave of sub-agents started together,
    `approval:<decision>`, `final`. A step re-started on resume is not a new step."""
    groups: list[list[str]] = []
    wave: list[str] | None = None
    open_steps: set[str] = set()
    for e in events:
        kind = e["type"]
        if kind == "plan":
            groups.append([f"plan:{e.get('action')}"])
            wave = None
        elif kind == "agent_start":
            step = f"{e.get('turn', 0)}:{e.get('step')}"
            if step in open_steps:
                continue
            open_steps.add(step)
            if wave is None:
                wave = []
                groups.append(wave)
            wave.append(str(e["agent"]))
        elif kind == "agent_done":
            open_steps.discard(f"{e.get('turn', 0)}:{e.get('step')}")
            wave = None
        elif kind == "decision":
            groups.append([f"approval:{e['decision']}"])
            wave = None
        elif kind == "final":
            groups.append(["final"])
            wave = None
    return [sorted(g) for g in groups]


def agents_run(events: Sequence[dict[str, Any]]) -> list[str]:
    return [str(e["agent"]) for e in events if e["type"] == "agent_start"]
