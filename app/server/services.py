"""What the routes share: the open runner, graphs, executor; thread ownership; run creation with
the same validation the CLI uses (`app.runner.Runner`)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from langgraph.pregel import Pregel

from app.db import AppDB, ThreadBusyError
from app.redact import redact_obj
from app.runner import Runner, ThreadView
from app.server.auth import Principal
from app.server.events import StoredEvent
from app.server.executor import Executor
from app.server.registry import Registry
from app.server.schemas import RunCreate
from app.server.serde import dumps, jsonable
from app.server.turns import check_turn
from app.settings import Settings
from graphs.context import MarketingContext

BUSY_DETAIL = (
    "thread {tid} already has a run in progress: wait for it (join), cancel it, or send with "
    "multitask_strategy 'enqueue', 'interrupt' or 'rollback'"
)


class ThreadBusy(HTTPException):
    """409: `multitask_strategy` 'reject' and the thread has a run in progress."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(409, BUSY_DETAIL.format(tid=thread_id))
        self.thread_id = thread_id


@dataclass
class Services:
    runner: Runner
    registry: Registry
    executor: Executor
    settings: Settings

    @property
    def db(self) -> AppDB:
        return self.runner.storage.db


RETRY = {"Retry-After": "1"}  # a 503 while the server starts or stops


async def get_services(request: Request) -> Services:
    # async, though it awaits nothing: FastAPI runs a sync dependency in its thread pool, a
    # thread hop on every request
    svc: Services | None = getattr(request.app.state, "services", None)
    if svc is None:  # (the lifespan sets it once started, and clears it as it shuts down)
        raise HTTPException(
            503, "the server is starting up or shutting down; retry shortly", headers=RETRY
        )
    return svc


Svc = Annotated[Services, Depends(get_services)]


def not_found(kind: str, ident: str) -> HTTPException:
    return HTTPException(404, f"{kind} {ident!r} not found")


async def owned_thread(svc: Services, principal: Principal, thread_id: str) -> dict[str, Any]:
    """The caller's thread; another tenant's thread is indistinguishable from a missing one."""
    row = await svc.db.get_thread(thread_id, principal.tenant)
    if row is None:
        raise not_found("thread", thread_id)
    return row


async def owned_run(
    svc: Services, principal: Principal, thread_id: str, run_id: str
) -> dict[str, Any]:
    row = await svc.db.get_run(run_id, tenant=principal.tenant, thread_id=thread_id)
    if row is None:
        await owned_thread(svc, principal, thread_id)  # which of the two is missing
        raise not_found("run", run_id)
    return row  # a run of this tenant on this thread: the thread is the tenant's too


def graph_of(svc: Services, thread: dict[str, Any]) -> Pregel:
    graph_id = thread.get("graph_id") or "supervisor"
    return svc.registry.graph(graph_id if graph_id in svc.registry.graphs else "supervisor")


def created_from(
    view: ThreadView, row: dict[str, Any] | None, fork: str | None
) -> dict[str, Any] | None:
    """What the run's executor needs of the state the run starts from (the usage it adds to), as
    read here: it is used instead of a second read if, when the run is claimed, the thread is
    still at this checkpoint with no writes pending (`app.server.executor.start_usage`). Only
    a thread with no pending task and no run in progress qualifies (a run's pending writes, seen
    here, could be rolled back by the time this run starts, leaving the same checkpoint), and
    not a fork (it starts from an older checkpoint)."""
    busy = row is not None and row.get("status") == "busy"
    if view.status not in ("new", "idle") or busy or fork:
        return None
    return {"checkpoint_id": view.checkpoint_id, "usage": jsonable(view.values.get("usage") or {})}


async def create_run(
    svc: Services,
    principal: Principal,
    thread_id: str | None,
    body: RunCreate,
    *,
    interrupt_id: str | None = None,
) -> dict[str, Any]:
    """Validate and queue a run (the executor picks it up). `thread_id=None` is a stateless run
    on a new thread of its own. A resume with `interrupt_id` answers that approval only: when
    another one is pending (that one was answered) it is refused, at creation and again when a
    queued run starts (`app.server.turns.check_turn`)."""
    if not svc.executor.accepting:
        raise HTTPException(
            503, "the server is shutting down: retry against the next one", headers=RETRY
        )
    graph_id = svc.registry.resolve(body.assistant_id)
    if graph_id is None:
        raise not_found("assistant", body.assistant_id)
    graph = svc.registry.graph(graph_id)
    db = svc.db
    stateless = thread_id is None  # a new thread of its own
    # as langgraph-api: a stateless run's thread goes when the run is over, unless "keep"
    on_completion = body.on_completion or "delete"
    create_thread = stateless
    thread_id = thread_id or str(uuid.uuid4())
    row: dict[str, Any] | None = None
    # a run from an older checkpoint than the thread's head: it is checked against that one
    fork = body.checkpoint_id or (body.checkpoint.checkpoint_id if body.checkpoint else None)
    if stateless:  # a new id: nothing to read
        view = ThreadView(thread_id, exists=False, status="new")
    else:  # both reads at once (the view is not used unless the thread is the caller's)
        row, view = await asyncio.gather(
            db.get_thread(thread_id, principal.tenant), svc.runner.view(thread_id, graph, fork)
        )
    if not create_thread and row is None:
        if body.if_not_exists != "create":
            raise not_found("thread", thread_id)
        create_thread = True
        # a new thread for the caller (another tenant's state, if the id is taken, is not
        # theirs to be checked against: the creation below answers 409)
        view = ThreadView(thread_id, exists=False, status="new")
    if fork and view.checkpoint_id != fork:
        raise HTTPException(404, f"checkpoint {fork!r} not found on thread {thread_id!r}")

    ctx: MarketingContext | None = None
    if getattr(graph, "context_schema", None) is MarketingContext:
        saved = row["context"] if row else {}
        ctx = await svc.runner.context_for(thread_id, body.context, saved)  # 422 names the field
    command = body.command.model_dump(exclude_unset=True) if body.command else None
    if command is not None and interrupt_id is not None:
        command["interrupt_id"] = interrupt_id  # (the executor builds its Command from the rest)
    check_turn(view, body.input, command, ctx)  # and again if it waits behind another run
    if body.input is None and body.command is None and not view.exists:
        raise HTTPException(
            422, "input: required (the thread has no state yet, so there is nothing to continue)"
        )

    kwargs: dict[str, Any] = {
        "input": body.input,
        "command": command,
        "stream_mode": body.modes(),
        "stream_subgraphs": body.stream_subgraphs,
        # credentials a client put in its config are masked: the run record and the checkpoints
        # (LangGraph copies configurable keys into their metadata) never hold them
        "config": redact_obj(body.config.model_dump(exclude_none=True)) if body.config else None,
        "context": body.context,
        "interrupt_before": body.interrupt_before,
        "interrupt_after": body.interrupt_after,
        "durability": body.durability,
        "checkpoint_id": fork,
        "on_disconnect": body.on_disconnect,
        # the run executes with the context it was created with, wherever and whenever it runs
        "resolved_context": ctx.model_dump() if ctx is not None else None,
        "created_from": created_from(view, row, fork),
    }
    # the graph's assistant, by its id (whether the client named it by graph, id or former id)
    assistant_id = svc.registry.assistant(graph_id)["assistant_id"]
    # as langgraph-api: the thread's metadata names the graph and assistant of its latest run
    # (Studio and agent-chat-ui list a graph's threads by searching on them)
    ran_by = {"graph_id": graph_id, "assistant_id": assistant_id}
    if create_thread:  # only once the request is valid: bad input leaves nothing behind
        metadata: dict[str, Any] = dict(ran_by)
        if stateless:
            metadata["stateless"] = True
            metadata["on_completion"] = on_completion
        existing, created = await db.create_thread(
            thread_id, tenant=principal.tenant, metadata=metadata, graph_id=graph_id
        )
        # not created: taken, unless by the caller's own request a moment ago (`if_not_exists`
        # racing on one new id): the run then joins that thread like any other
        if not created and (stateless or existing.get("tenant") != principal.tenant):
            raise HTTPException(409, f"thread id {thread_id!r} is taken: choose another")
    # the checkpoint the run was checked against; a queued run that starts at another one is
    # checked again (`app.server.turns`). A fork starts where it says, whatever the head
    kwargs["checked_at"] = None if fork else view.checkpoint_id
    run_id = str(uuid.uuid4())
    first_event = ("metadata", dumps({"run_id": run_id, "attempt": 1}))
    try:
        run, active = await db.enqueue_run(
            run_id=run_id,
            thread_id=thread_id,
            tenant=principal.tenant,
            assistant_id=assistant_id,
            graph_id=graph_id,
            kwargs=kwargs,
            metadata=redact_obj(body.metadata or {}),
            multitask_strategy=body.multitask_strategy,
            # the first event (the SDK learns the run id from it) is stored with the run, before
            # any worker can start it: the run's events have one writer at a time, in id order
            events=[first_event],
            # later runs on the thread reuse the context it was given
            thread_context=ctx.model_dump() if ctx is not None and body.context else None,
            # once per thread (unless its assistant changes), with the run, under its lock
            thread_metadata=ran_by
            if row is not None and any(row["metadata"].get(k) != v for k, v in ran_by.items())
            else None,
            metadata_read=row["metadata"] if row is not None else None,
        )
    except ThreadBusyError:
        raise ThreadBusy(thread_id) from None
    # stored and committed: a stream of this new run may send it without reading it back
    # a stateless run's thread is erased by whoever delivers its end (stream, wait), else by
    # the executor's prune once it is old
    run["erase_thread"] = stateless and on_completion == "delete"
    run["first_events"] = [
        StoredEvent(i, name, data)
        for i, (name, data) in zip(run.pop("event_ids"), [first_event], strict=True)
    ]
    if body.multitask_strategy in ("interrupt", "rollback"):
        for other in active:
            await svc.executor.cancel(other, body.multitask_strategy)
    svc.executor.wake()
    return run
