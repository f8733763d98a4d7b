"""Runs the supervisor on a thread: validates input at the boundary, streams normalised events,
records threads and runs, and continues unfinished threads from their last checkpoint.

Used by the CLI (and by the HTTP server). Validation happens before anything touches the graph, so
bad input leaves the thread's state exactly as it was.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.types import Command, StreamMode
from pydantic import ValidationError

from app.errors import (
    EmptyRequestError,
    InvalidContextError,
    NotInterruptedError,
    PendingApprovalError,
    ResumeValueError,
    ThreadNotFoundError,
)
from app.leases import keep_lease, new_owner, start_run_with_lease
from app.models import ModelFactory
from app.settings import get_settings
from app.storage import Storage, set_active_db, settle_checkpointer
from graphs.context import MarketingContext
from graphs.publishing import check_edit, pending_platform
from graphs.schemas import EditResponse, InvalidResumeError, parse_human_response
from graphs.supervisor import AGENT_NODES, builder

RECURSION_LIMIT = 250
STREAM_MODES: list[StreamMode] = ["tasks", "messages"]
# run status -> thread status; a cancelled run leaves an unfinished thread (`mkt chat --thread`)
THREAD_STATUS = {"success": "idle", "interrupted": "interrupted", "cancelled": "unfinished"}
MAX_REQUEST_CHARS = 20_000


def parse_context(values: dict[str, Any] | None) -> MarketingContext:
    try:
        return MarketingContext(**(values or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'context'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidContextError(f"invalid run context: {problems}") from exc


@dataclass
class ThreadView:
    thread_id: str
    exists: bool
    status: str  # idle | interrupted | unfinished | new
    next: tuple[str, ...] = ()
    interrupts: list[dict[str, Any]] = field(default_factory=list)  # [{"id", "value"}]
    values: dict[str, Any] = field(default_factory=dict)
    checkpoint_id: str = ""  # the root checkpoint read ("" for none)

    @property
    def last_request(self) -> str:
        humans = [m for m in self.values.get("messages", []) if isinstance(m, HumanMessage)]
        return str(humans[-1].content).strip() if humans else ""


class Runner:
    def __init__(self, storage: Storage, factory: ModelFactory) -> None:
        self.storage = storage
        self.factory = factory
        self.graph = builder.compile(checkpointer=storage.checkpointer, name="supervisor")
        set_active_db(storage.db)

    @staticmethod
    def config(thread_id: str) -> RunnableConfig:
        return {"configurable": {"thread_id": thread_id}, "recursion_limit": RECURSION_LIMIT}

    async def view(
        self, thread_id: str, graph: Any = None, checkpoint_id: str | None = None
    ) -> ThreadView:
        """The thread as the supervisor (or `graph`, a served graph on the same checkpointer)
        sees it, at its head or at `checkpoint_id` (not found there: `checkpoint_id` "")."""
        config = self.config(thread_id)
        if checkpoint_id:
            config["configurable"]["checkpoint_id"] = checkpoint_id
        snap = await (graph or self.graph).aget_state(config)
        checkpoint_id = str(
            ((snap.config or {}).get("configurable") or {}).get("checkpoint_id") or ""
        )
        if snap.created_at is None:  # no checkpoint read
            checkpoint_id = ""
        if not snap.values and not snap.next:
            return ThreadView(thread_id, exists=False, status="new", checkpoint_id=checkpoint_id)
        interrupts = [{"id": i.id, "value": i.value} for i in snap.interrupts]
        # `tasks`, not `next`: tasks whose writes were saved before a crash are not in `next`
        status = "interrupted" if interrupts else ("unfinished" if snap.tasks else "idle")
        return ThreadView(
            thread_id,
            True,
            status,
            tuple(snap.next),
            interrupts,
            dict(snap.values),
            checkpoint_id,
        )

    async def context_for(
        self,
        thread_id: str,
        overrides: dict[str, Any] | None,
        saved: dict[str, Any] | None = None,
    ) -> MarketingContext:
        """The thread's saved context (read unless given) with `overrides` applied (validated)."""
        if saved is None:
            row = await self.storage.db.get_thread(thread_id)
            saved = row["context"] if row else {}
        return parse_context({**saved, **(overrides or {})})

    # --- validation shared by the CLI and the HTTP server ------------------------------------------
    @staticmethod
    def check_request_text(request: str) -> str:
        text = (request or "").strip()
        if not text:
            raise EmptyRequestError()
        if len(text) > MAX_REQUEST_CHARS:
            raise InvalidContextError(f"the request is longer than {MAX_REQUEST_CHARS} characters")
        return text

    @staticmethod
    def check_new_turn(view: ThreadView) -> None:
        """A new request may not skip a pending approval."""
        if view.status == "interrupted":
            raise PendingApprovalError(view.thread_id)

    @classmethod
    def check_resume(cls, view: ThreadView, value: Any, ctx: MarketingContext) -> None:
        """A resume needs a pending interrupt; approval answers are validated against it."""
        if not view.exists:
            raise ThreadNotFoundError(view.thread_id)
        if view.status != "interrupted":
            raise NotInterruptedError(view.thread_id)
        pending = view.interrupts[0]["value"]
        if (
            isinstance(pending, list)
            and pending
            and isinstance(pending[0], dict)
            and "action_request" in pending[0]
        ):
            cls.validate_resume(value, pending, ctx)

    # --- entry points -----------------------------------------------------------------------------
    async def send(
        self, thread_id: str | None, request: str, context: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """A new user turn (a new thread when `thread_id` is None)."""
        text = self.check_request_text(request)
        thread_id = thread_id or str(uuid.uuid4())
        ctx = await self.context_for(thread_id, context)
        view = await self.view(thread_id)
        self.check_new_turn(view)
        await self.storage.db.touch_thread(
            thread_id, title=text[:120], status="busy", context=ctx.model_dump()
        )
        payload = {"messages": [{"role": "user", "content": text}]}
        async for event in self._run(thread_id, payload, ctx, view):
            yield event

    async def resume(
        self, thread_id: str, value: Any, context: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Answer the pending approval (accept / edit / respond / ignore, or a list of one)."""
        view = await self.view(thread_id)
        ctx = await self.context_for(thread_id, context)
        self.check_resume(view, value, ctx)
        await self.storage.db.touch_thread(thread_id, status="busy")
        async for event in self._run(thread_id, Command(resume=value), ctx, view):
            yield event

    async def continue_unfinished(
        self, thread_id: str, context: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Continue a run that stopped mid-way (crash, kill -9, Ctrl-C) from its last checkpoint."""
        view = await self.view(thread_id)
        if view.status != "unfinished":
            return
        ctx = await self.context_for(thread_id, context)
        yield {"type": "resumed", "thread_id": thread_id, "next": list(view.next)}
        async for event in self._run(thread_id, None, ctx, view):
            yield event

    @staticmethod
    def validate_resume(value: Any, pending: Any, ctx: MarketingContext) -> None:
        try:
            response = parse_human_response(value)
            if isinstance(response, EditResponse):
                check_edit(response, pending_platform(pending[0]), ctx.timezone)
        except InvalidResumeError as exc:
            raise ResumeValueError(str(exc)) from exc

    # --- the run loop -------------------------------------------------------------------------------
    async def _run(
        self, thread_id: str, payload: Any, ctx: MarketingContext, before: ThreadView
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream one run; `before` is the thread as read just before it (for usage deltas)."""
        run_id = str(uuid.uuid4())
        owner = new_owner()
        lease_s = get_settings().run_lease_s
        db = self.storage.db
        await start_run_with_lease(
            db, run_id, thread_id, self.factory.info().describe(), owner, lease_s
        )
        yield {"type": "run", "run_id": run_id, "thread_id": thread_id}
        status = "error"
        error: str | None = None
        view: ThreadView | None = None
        me = asyncio.current_task()

        def stop(*_: Any) -> None:  # cancelled over the API, or the lease was taken over
            if me is not None:
                me.cancel()

        try:
            async with keep_lease(db, run_id, owner, lease_s, stop, stop):
                async for event in self._stream(thread_id, payload, ctx):
                    yield event
            view = await self.view(thread_id)
            status = "interrupted" if view.status == "interrupted" else "success"
            for intr in view.interrupts[:1]:
                yield {"type": "approval", "interrupt_id": intr["id"], "request": intr["value"][0]}
            if status == "success":
                messages = view.values.get("messages") or []
                yield {"type": "final", "text": str(messages[-1].content) if messages else ""}
        except (KeyboardInterrupt, asyncio.CancelledError, GeneratorExit):
            status = "cancelled"  # stopped by the user or the caller: resumable from its checkpoint
            raise
        except BaseException as exc:  # recorded and re-raised, never swallowed
            error = f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            if status == "cancelled":  # a checkpoint write cut before its commit holds SQLite
                await settle_checkpointer(self.storage.checkpointer)
            after = view or await self.view(thread_id)
            usage = _usage_delta(before.values.get("usage") or {}, after.values.get("usage") or {})
            await self.storage.db.finish_run(run_id, status, usage, error, owner=owner)
            await self.storage.db.touch_thread(
                thread_id,
                status=THREAD_STATUS.get(status, "error"),
            )
        yield {"type": "usage", "usage": usage}

    async def _stream(
        self, thread_id: str, payload: Any, ctx: MarketingContext
    ) -> AsyncIterator[dict[str, Any]]:
        stream = self.graph.astream(
            payload,
            self.config(thread_id),
            context=ctx,
            stream_mode=STREAM_MODES,
            subgraphs=True,
            durability="sync",
        )
        async for part in stream:
            ns, mode, chunk = cast(tuple[tuple[str, ...], str, Any], part)
            if ns:
                continue
            for event in progress_events(mode, chunk):
                yield event


def progress_events(mode: str, chunk: Any) -> list[dict[str, Any]]:
    """Supervisor-level progress for people (plan, agent start/done, answer tokens) from one
    `tasks` or `messages` stream chunk; works on live objects and on their JSON form (the
    server's chat endpoint reads them back from the event log)."""
    if mode == "tasks" and chunk.get("name") in AGENT_NODES:
        if "input" in chunk:
            inp = chunk["input"] or {}
            return [
                {
                    "type": "agent_start",
                    "agent": chunk["name"],
                    "step": inp.get("step_id"),
                    "task": inp.get("task", ""),
                }
            ]
        if not chunk.get("interrupts") and chunk.get("error") is None:
            return [
                {
                    "type": "agent_done",
                    "agent": chunk["name"],
                    "step": res["step_id"],
                    "status": res["status"],
                    "summary": res["summary"],
                }
                for res in (chunk.get("result") or {}).get("results", {}).values()
            ]
    elif mode == "tasks" and chunk.get("name") == "plan" and "result" in chunk:
        plan = (chunk.get("result") or {}).get("plan") or {}
        return [
            {
                "type": "plan",
                "action": plan.get("action"),
                "steps": [
                    {"id": s["id"], "agent": s["agent"], "depends_on": s["depends_on"]}
                    for s in plan.get("steps") or []
                ],
                "publish_at": plan.get("publish_at_iso"),
                "notes": plan.get("notes") or [],
            }
        ]
    elif mode == "messages":
        message, meta = chunk
        if isinstance(message, dict):
            is_chunk = message.get("type") == "AIMessageChunk"
            content = message.get("content")
        else:
            is_chunk = isinstance(message, AIMessageChunk)
            content = message.content
        if meta.get("langgraph_node") == "answer" and is_chunk and content:
            return [{"type": "token", "text": str(content)}]
    return []


def _usage_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    for agent, u in after.items():
        b = before.get(agent) or {
            "calls": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "cost_usd": 0.0,
        }
        d = {
            "calls": u["calls"] - b["calls"],
            "input_tokens": u["input_tokens"] - b["input_tokens"],
            "output_tokens": u["output_tokens"] - b["output_tokens"],
            "cost_usd": round(u["cost_usd"] - b["cost_usd"], 8),
            "models": u["models"],
        }
        if d["calls"]:
            delta[agent] = d
    return delta
