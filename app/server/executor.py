"""The run worker: executes queued runs in background tasks, never inside a response.

Runs are rows (`pending -> running -> success | error | interrupted`). A worker claims pending runs
under a lease (`app.leases`), renews it by heartbeat while the graph runs, appends every stream
event to the event log, and records the outcome. The database keeps one running run per thread
(partial unique index), so any number of workers in any number of processes can share the queue.
Runs whose lease expired, or whose process died on this host, go back to the queue (`sweep`) and
continue from their last checkpoint: the run id is stored in each checkpoint's metadata, so a new
attempt knows whether its input was already applied. Publishing stays exactly-once because the
outbox write is idempotent by key.

The same class runs in `mkt serve` (in-process, `--workers 0`) and in each `mkt worker` process
(`app.server.worker`); an API process whose runs execute in worker processes keeps one with
`execute=False`: it queues and cancels runs and wakes its streams, but claims nothing. A cancel
reaches the process running the run at once: directly in-process, else by the `CANCEL_CHANNEL`
notification (Postgres) or, without notifications (SQLite), at the run's next heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.constants import TAG_HIDDEN
from langgraph.pregel import Pregel
from langgraph.types import Command

from app.db import DB_ERRORS, LeaseLostError, utcnow
from app.errors import AppError
from app.leases import is_stale, keep_lease, lease_until, new_owner
from app.redact import is_sensitive_key, redact
from app.runner import RECURSION_LIMIT, Runner, _usage_delta, parse_context
from app.server import metrics
from app.server.events import EventBatcher, EventLog, RunSignals
from app.server.registry import Registry
from app.server.security import retryable
from app.server.turns import check_turn
from app.server.views import debug_event
from app.settings import Settings
from app.storage import settle_checkpointer
from graphs.context import MarketingContext
from tools.knowledge import DEFAULT_TENANT

log = logging.getLogger("mkt.server")
T = TypeVar("T")
# a background loop logs these and tries again next round
_RETRIED: tuple[type[Exception], ...] = (*DB_ERRORS, RuntimeError)


class RunGaveUpError(RuntimeError):
    pass


class RunRefusedError(RuntimeError):
    """A queued run that its thread no longer allows when it starts (`app.server.turns`): a
    new request while an approval waits, a resume with nothing to resume. It ends `error` with
    the reason, and the thread keeps its status."""

    def __init__(self, reason: AppError, thread_status: str) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.thread_status = thread_status


def thread_status_of(snapshot: Any) -> str:
    return "interrupted" if (snapshot.interrupts or snapshot.tasks) else "idle"


def run_config(run: dict[str, Any]) -> RunnableConfig:
    kw = run["kwargs"]
    user = kw.get("config") or {}
    configurable = {  # no credentials: LangGraph copies configurable keys into checkpoints
        k: v
        for k, v in (user.get("configurable") or {}).items()
        if not str(k).startswith("__") and not is_sensitive_key(str(k))
    }
    configurable["thread_id"] = run["thread_id"]
    # the knowledge base reads and writes only this tenant's points (`tools.knowledge.tenant_of`):
    # it comes from the run's owner (the caller's API key), never from the client's config
    configurable["tenant"] = run.get("tenant") or DEFAULT_TENANT
    config: RunnableConfig = {
        "configurable": configurable,
        "recursion_limit": int(user.get("recursion_limit") or RECURSION_LIMIT),
        "metadata": {
            **(run.get("metadata") or {}),
            "run_id": run["run_id"],
            "run_attempt": run["attempt"],
            "graph_id": run["graph_id"],
            "assistant_id": run["assistant_id"],
        },
    }
    # `langsmith:hidden` hides a task's updates, interrupts included, from the stream the run's
    # bookkeeping reads (`RunOutcome`): tags are for tracing, a client cannot hide steps
    tags = [t for t in user.get("tags") or () if t != TAG_HIDDEN]
    if tags:
        config["tags"] = tags
    return config


def start_usage(run: dict[str, Any]) -> dict[str, Any] | None:
    """The usage before the run (the base of what it records), when it is known without a read:
    as the run's creation read it (`app.server.services.created_from`), if its first claim found
    the thread still at that checkpoint with no writes pending on any head — the state was then
    that checkpoint's values, unchanged — else as its first attempt read and stored it
    (`usage_base`). A later attempt (after a crash or a shutdown) starts from the same base: the
    head it finds already holds what the earlier attempt added. None: read the state."""
    kw = run.get("kwargs") or {}
    created = kw.get("created_from")
    writes = run.get("before_writes")  # [ns, checkpoint id, task id, idx], from the first claim
    if (
        isinstance(created, dict)
        and writes is not None
        and run.get("before_checkpoint_id") == created.get("checkpoint_id")
        and all(w[2] is None for w in writes)
        and isinstance(created.get("usage"), dict)
    ):
        return created["usage"]
    stored = kw.get("usage_base")
    return stored if isinstance(stored, dict) else None


def _usage_of(snapshot: Any) -> dict[str, Any]:
    return dict((snapshot.values or {}).get("usage") or {}) if snapshot is not None else {}


def _count_usage(usage: dict[str, Any]) -> None:
    for agent, u in usage.items():
        metrics.usage_recorded(agent, u["input_tokens"], u["output_tokens"], u["cost_usd"])


def usage_added(run_id: str, base: dict[str, Any] | None, snapshot: Any) -> dict[str, Any]:
    """What run `run_id` added to the usage of the state `snapshot`, from its `base`: {} where
    that checkpoint is not the run's own (it stopped before it saved one; a fork's head is
    another branch) or its base is not known."""
    if base is None or (snapshot.metadata or {}).get("run_id") != run_id:
        return {}
    return _usage_delta(base, _usage_of(snapshot))


class RunOutcome:
    """What the root graph's stream says about the state after the run. Its last `values` chunk
    is that state's values (on an interrupt, with the writes of the step's finished tasks applied,
    as a live read has them). An `__interrupt__` update with interrupts means a node's
    `interrupt()` stopped the run and waits (interrupted); an empty one is a breakpoint
    (`interrupt_before/after`), which may have stopped it at the end with nothing left to run:
    then only a read can tell."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.values: dict[str, Any] | None = None
        self.interrupted = False
        self.breakpoint = False
        # the thread's usage before the run (`start_usage`), once known: what a run that fails
        # or is cancelled added is measured from it too
        self.base: dict[str, Any] | None = None
        # what the run added, once measured (after its graph stopped): /metrics counts it once
        # this process has recorded the run's end (`Executor._run_to_its_end`), so a recording
        # made again (a locked database) or left to a later attempt never counts it twice
        self.usage: dict[str, Any] | None = None

    def usage_in(self, snapshot: Any) -> dict[str, Any]:
        """What the run added to the usage of the state `snapshot` (`usage_added`); measured
        once (a rollback deletes the run's checkpoints after it measured them)."""
        if self.usage is None:
            self.usage = usage_added(self.run_id, self.base, snapshot)
        return self.usage

    def usage_from(self, after_values: dict[str, Any]) -> dict[str, Any]:
        """What the run added, from the state's values after it (the run's own)."""
        assert self.base is not None
        self.usage = _usage_delta(self.base, after_values.get("usage") or {})
        return self.usage

    def see(self, mode: str, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            return
        if mode == "values":
            self.values = chunk
        elif mode == "updates" and "__interrupt__" in chunk:
            if chunk["__interrupt__"]:
                self.interrupted = True
            else:
                self.breakpoint = True

    def state_after(self, graph: Pregel) -> tuple[dict[str, Any], str] | None:
        """(values, thread status) after the run, or None where the stream cannot tell: no step
        ran, a breakpoint without an interrupt, a graph with hidden steps (their updates are not
        streamed), or a `usage` channel left out of the graph's output."""
        if (
            self.values is None
            or (self.breakpoint and not self.interrupted)
            or streams_partly(graph)
            or ("usage" in graph.channels and "usage" not in self.values)
        ):
            return None
        return self.values, "interrupted" if self.interrupted else "idle"


def streams_partly(graph: Pregel) -> bool:
    """Some root node is tagged `langsmith:hidden`: its updates (interrupts too) never stream."""
    return any(TAG_HIDDEN in (node.tags or ()) for node in graph.nodes.values())


def event_name(mode: str, ns: tuple[str, ...], subgraphs: bool) -> str:
    return f"{mode}|{'|'.join(ns)}" if subgraphs and ns else mode


class Executor:
    CANCEL_NOTICE_TTL_S = 60.0
    ABANDONED_EVERY_S = 60.0  # how often the sweep looks for abandoned stateless threads

    def __init__(
        self, runner: Runner, registry: Registry, settings: Settings, *, execute: bool = True
    ) -> None:
        self.runner = runner
        self.db = runner.storage.db
        self.registry = registry
        self.settings = settings
        self.execute = execute
        self.owner = new_owner()
        self.signals = RunSignals(settings.run_poll_interval_s, settings.notify_fallback_poll_s)
        self.events = EventLog(self.db, self.signals, self.owner)
        self.accepting = False
        self.recovered = 0  # runs of stopped processes requeued at start
        # called once, when the first run this executor started has ended (`app.server.heap`:
        # what the first run loaded for good is frozen too)
        self.after_first_run: Callable[[], object] | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reasons: dict[str, str] = {}
        self._ending: set[str] = set()  # runs whose graph has stopped: their end is being recorded
        self._cancel_notices: dict[str, float] = {}  # cancels heard for runs not (yet) here
        self._background: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._last_prune = 0.0
        self._last_abandoned = 0.0

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> int:
        """Take up runs left behind by dead processes, then start claiming. Returns how many
        runs were requeued. With `execute=False` only accept requests."""
        self.accepting = True
        if not self.execute:
            return 0
        recovered = await self.sweep()
        await self.prune()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="executor:claim"),
            asyncio.create_task(self._sweep_loop(), name="executor:sweep"),
        ]
        self.wake()
        return recovered

    async def stop(self, grace_s: float) -> dict[str, int]:
        """Stop claiming; give active runs `grace_s` to finish; release the rest to the queue
        (they continue from their last checkpoint on the next server)."""
        self.accepting = False
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        active = dict(self._tasks)
        finished = 0
        if active:
            done, _ = await asyncio.wait(active.values(), timeout=grace_s)
            finished = len(done)
            for run_id, task in active.items():
                if not task.done():
                    self._stop(run_id, "shutdown")
            await asyncio.gather(*active.values(), return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        return {"finished": finished, "released": len(active) - finished}

    def wake(self) -> None:
        self._wake.set()

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def _claim_loop(self) -> None:
        while True:
            # `asyncio.timeout`, not `wait_for`: on Python 3.11 `wait_for` loses a cancellation
            # that arrives as the wait ends (a wake at shutdown), and `stop()` waited forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.signals.poll_interval()):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.claim()
            except _RETRIED as exc:  # database unreachable: retry next round
                log.warning("claiming runs failed: %s", exc)
                await asyncio.sleep(1.0)

    async def claim(self) -> None:
        free = self.settings.worker_concurrency - len(self._tasks)
        if not self.accepting or free <= 0:
            return
        for run in await self.db.claim_runs(
            self.owner, lease_until(self.settings.run_lease_s), free, start=True
        ):
            task = asyncio.create_task(self._execute(run), name=f"run:{run['run_id']}")
            self._tasks[run["run_id"]] = task
            heard = self._cancel_notices.pop(run["run_id"], None) is not None
            if heard or run.get("cancel_action"):  # requested before the claim returned
                self._spawn(self._apply_cancel(run["run_id"]))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.run_sweep_interval_s)
            try:
                await self.sweep()
                if time.monotonic() - self._last_prune > 3600:
                    await self.prune()
                elif time.monotonic() - self._last_abandoned > self.ABANDONED_EVERY_S:
                    await self.erase_abandoned()
            except _RETRIED as exc:
                log.warning("sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Requeue running runs whose owner is gone (lease expired, or its process died here)."""
        now = utcnow()
        requeued = 0
        for run in await self.db.running_runs():
            if not is_stale(run, now):
                continue
            # this process's own: only one it no longer executes (its end could not be recorded)
            if run["lease_owner"] == self.owner and run["run_id"] in self._tasks:
                continue
            if await self.db.requeue_run(run["run_id"], run["lease_owner"]):
                requeued += 1
                log.info("run %s requeued (owner %s gone)", run["run_id"], run["lease_owner"])
        if requeued:
            self.wake()
        return requeued

    async def prune(self) -> int:
        """Event logs of runs ended before the retention cutoff (and `erase_abandoned`). Returns
        the events deleted."""
        self._last_prune = time.monotonic()
        await self.erase_abandoned()
        cutoff = utcnow() - timedelta(hours=self.settings.event_retention_hours)
        return await self.db.prune_events(cutoff)

    async def erase_abandoned(self) -> int:
        """Threads of stateless runs that no client was left to delete (it went away before the
        run's end), idle for `STATELESS_THREAD_GRACE_S`. Returns how many were erased."""
        self._last_abandoned = time.monotonic()
        cutoff = utcnow() - timedelta(seconds=self.settings.stateless_thread_grace_s)
        threads = await self.db.stale_stateless_threads(cutoff)
        for thread_id in threads:
            await self.erase_thread(thread_id)
        return len(threads)

    async def erase_thread(self, thread_id: str) -> None:
        """The thread's checkpoints, runs, events and row (its runs must have ended)."""
        await self.registry.checkpointer.adelete_thread(thread_id)
        await self.db.delete_thread(thread_id)

    # --- cancellation ---------------------------------------------------------------------------
    async def cancel(self, run: dict[str, Any], action: str) -> None:
        """`interrupt`: stop, keep what was checkpointed. `rollback`: stop and put the thread
        back where it was before the run, deleting the run.

        A pending run ends here (`request_cancel`: `interrupted`, with its `end` event). One that
        an earlier attempt started (released back to the queue by a shutdown, a dead worker or a
        lost lease: its thread `busy`, maybe checkpoints of its own) gets the bookkeeping of a
        cancelled running run (`_after_cancel`): what its finished steps saved is recorded, or
        with `rollback` its checkpoints are deleted (with the cancel, in one transaction), and the
        thread's status follows from the state and the runs still running."""
        run_id = run["run_id"]
        current = await self.db.get_run(run_id)
        if current is None or current["status"] not in ("pending", "running"):
            return
        released: tuple[Pregel, RunnableConfig, Any, dict[str, Any]] | None = None
        if current["status"] == "pending" and current["attempt"] > 0:
            # nobody runs it while it is pending: the state read now is the one it leaves
            graph = self.registry.graph(current["graph_id"])
            config = run_config(current)
            snapshot = await graph.aget_state(config)
            usage = usage_added(run_id, start_usage(current), snapshot)
            released = graph, config, snapshot, usage
        row = await self.db.request_cancel(
            run_id,
            action,
            usage=released[3] if released is not None and action != "rollback" else None,
            rollback=released is not None and action == "rollback",
        )
        if row is None:
            return
        if row.get("ended"):  # it was pending: ended by the statement above
            if row["attempt"] > 0:  # (released after the read above: its checkpoints go now)
                await self._after_released_cancel(row, action, released)
            elif action == "rollback":
                await self.db.delete_run(run_id)
            self.signals.wrote(run_id)
            self.wake()  # a run queued behind it on the thread may start
            return
        if run_id in self._tasks:
            self._stop(run_id, action)
        elif self.execute and row["status"] == "running":
            # maybe claimed here a moment ago, its task not registered yet: `claim` applies it
            self._remember_cancel(run_id)
        # a run in another process: its worker hears the cancel notification (Postgres) or
        # sees `cancel_action` on its next heartbeat

    async def _after_released_cancel(
        self,
        row: dict[str, Any],
        action: str,
        released: tuple[Pregel, RunnableConfig, Any, dict[str, Any]] | None,
    ) -> None:
        """`_after_cancel` for a run cancelled while released to the queue (`cancel`):
        `released` is what `cancel` read before (None: it was running then)."""
        run_id, thread_id = row["run_id"], row["thread_id"]
        if released is None:
            graph = self.registry.graph(row["graph_id"])
            config = run_config(row)
            if action == "rollback":
                await self.db.delete_run_checkpoints(thread_id, run_id)
        else:
            graph, config, snapshot, usage = released
            _count_usage(usage)  # what it spent is counted (/metrics) either way
        if released is None or action == "rollback":  # the state it leaves
            snapshot = await graph.aget_state(config)
        await self.db.settle_thread_status(
            thread_id, "interrupted" if snapshot.interrupts else "idle"
        )
        if action == "rollback":  # the thread's status first: waiters wake when the run is gone
            await self.db.delete_run(run_id)

    def cancel_notice(self, run_id: str) -> None:
        """A cancel was requested somewhere for a running run (`CANCEL_CHANNEL`)."""
        if not self.execute:
            return
        if run_id in self._tasks:
            self._spawn(self._apply_cancel(run_id))
            return
        self._remember_cancel(run_id)

    def _remember_cancel(self, run_id: str) -> None:
        """A cancel for a run that may have been claimed here a moment ago, its claim not
        returned yet: remembered briefly, `claim` applies it once the run's task exists."""
        now = time.monotonic()
        self._cancel_notices = {
            rid: t for rid, t in self._cancel_notices.items() if now - t < self.CANCEL_NOTICE_TTL_S
        }
        self._cancel_notices[run_id] = now

    async def _apply_cancel(self, run_id: str) -> None:
        row = await self.db.get_run(run_id)
        if (
            row is not None
            and row["status"] == "running"
            and row["lease_owner"] == self.owner
            and row["cancel_action"]
        ):
            self._stop(run_id, str(row["cancel_action"]))

    def _stop(self, run_id: str, reason: str) -> None:
        """Cancel the local task of `run_id` once; the first reason decides the bookkeeping."""
        task = self._tasks.get(run_id)
        if task is None or task.done() or run_id in self._reasons or run_id in self._ending:
            return
        self._reasons[run_id] = reason
        task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def wait_until_done(self, run_id: str, within_s: float | None = None) -> None:
        deadline = None if within_s is None else time.monotonic() + within_s
        with self.signals.watch(run_id) as watch:
            while True:
                seen = watch.version
                run = await self.db.get_run(run_id)
                if run is None or run["status"] not in ("pending", "running"):
                    return
                if deadline is not None and time.monotonic() > deadline:
                    return
                await watch.wait_past(seen)

    # --- one run --------------------------------------------------------------------------------
    async def _execute(self, run: dict[str, Any]) -> None:
        run_id = run["run_id"]
        started = time.monotonic()
        metrics.run_started()
        status = "error"
        graph = self.registry.graph(run["graph_id"])
        config = run_config(run)
        try:
            async with keep_lease(
                self.db,
                run_id,
                self.owner,
                self.settings.run_lease_s,
                lambda action: self._stop(run_id, action),
                lambda: self._stop(run_id, "lost"),
            ):
                status = await self._run_to_its_end(run, graph, config, RunOutcome(run_id))
        except LeaseLostError:  # taken over while writing events: the new owner carries on
            status = "released"
        except DB_ERRORS as exc:  # its end could not be recorded, retries included
            status = "released"
            log.error(
                "run %s: recording its end failed (%s: %s); it is taken up again when its lease"
                " expires",
                run_id,
                type(exc).__name__,
                redact(str(exc)),
            )
        finally:
            self._tasks.pop(run_id, None)
            self._reasons.pop(run_id, None)
            self._ending.discard(run_id)
            # "released": handed back to the queue (lease lost, shutdown); another attempt follows
            metrics.run_finished(status, time.monotonic() - started)
            self.signals.wrote(run_id)
            self.wake()  # the thread's next queued run, if any
            hook, self.after_first_run = self.after_first_run, None
            if hook is not None:
                hook()

    async def _run_to_its_end(
        self, run: dict[str, Any], graph: Pregel, config: RunnableConfig, outcome: RunOutcome
    ) -> str:
        """`_run_and_record`, then /metrics counts what the run spent, once its end is recorded
        here ("released": another attempt records it, and counts what the whole run spent)."""
        status = await self._run_and_record(run, graph, config, outcome)
        if status != "released":
            _count_usage(outcome.usage or {})
        return status

    async def _run_and_record(
        self, run: dict[str, Any], graph: Pregel, config: RunnableConfig, outcome: RunOutcome
    ) -> str:
        """Run the graph, then record how the run ended; returns the status (for metrics:
        "released" when the run's lease went to another process before its end was recorded). Once
        the graph has stopped, its end is recorded whatever comes: a cancel is too late then
        (`_stop` leaves an ending run alone), and a database that is briefly locked or
        unreachable is waited for (`_recorded`)."""
        run_id = run["run_id"]
        try:
            # the attempts before this one, less those a graceful shutdown released
            stopped = run["attempt"] - 1 - int(run["kwargs"].get("released") or 0)
            if stopped >= self.settings.run_max_attempts:
                raise RunGaveUpError(f"gave up after {stopped} attempts whose worker stopped")
            status, usage, thread_status = await self._run_graph(run, graph, config, outcome)
        except asyncio.CancelledError:
            me = asyncio.current_task()
            cancelled = me is not None and me.cancelling() > 0  # this task, from outside
            if me is not None:  # handled here: the run's bookkeeping follows, uncancelled
                me.uncancel()
            self._ending.add(run_id)
            # a cancel nobody asked for (`_stop` gives the reason) is the process going away (a
            # second Ctrl-C: `asyncio.run` cancels every task): the run resumes on the next start
            reason = self._reasons.get(run_id) or ("shutdown" if cancelled else "interrupt")
            return await self._recorded(
                run_id, lambda: self._after_cancel(run, graph, config, reason, outcome)
            )
        except LeaseLostError:  # taken over while writing events: the new owner carries on
            return "released"
        except RunRefusedError as exc:  # queued behind a run that changed the thread
            self._ending.add(run_id)
            refused = await self._record_refusal(run_id, exc)
            return "error" if refused else "released"
        except Exception as exc:  # noqa: BLE001 - the run boundary: astream handles interrupts
            # and handoff Commands inside the graph; what reaches here failed the run. It is
            # recorded on the run, streamed as `event: error`, and the worker lives on.
            self._ending.add(run_id)
            log.warning("run %s failed: %s", run_id, redact(f"{type(exc).__name__}: {exc}"))
            failed = await self._record_failure(run, graph, config, outcome, exc)
            return "error" if failed else "released"
        self._ending.add(run_id)  # the graph has stopped: a cancel from here on is too late
        ended = await self._recorded(
            run_id,
            lambda: self.db.finish_run(
                run_id,
                status,
                usage,
                None,
                owner=self.owner,
                thread_status=thread_status,
                end_event=True,
            ),
        )
        return status if ended else "released"

    async def _record_failure(
        self,
        run: dict[str, Any],
        graph: Pregel,
        config: RunnableConfig,
        outcome: RunOutcome,
        exc: Exception,
    ) -> bool:
        """`event: error`, and the run ends `error` with what its finished steps spent and saved
        before it failed (the message without secrets: `app.redact`); made again while the
        database is briefly unavailable (`_recorded`), the event stored once. False: the run's
        lease went to another process first."""
        message = redact(str(exc))[:2000]

        async def usage() -> dict[str, Any]:
            if outcome.base is None:
                return {}
            return outcome.usage_in(await graph.aget_state(config))

        return await self._end_with_error(
            run["run_id"],
            type(exc).__name__,
            message,
            f"{type(exc).__name__}: {message}"[:2000],
            "error",
            usage,
        )

    async def _record_refusal(self, run_id: str, exc: RunRefusedError) -> bool:
        """A refused run ends `error` with the reason; the thread stays as it is."""
        name = type(exc.reason).__name__

        async def nothing() -> dict[str, Any]:
            return {}

        return await self._end_with_error(
            run_id, name, str(exc), f"{name}: {exc}", exc.thread_status, nothing
        )

    async def _end_with_error(
        self,
        run_id: str,
        name: str,
        message: str,
        error: str,
        thread_status: str,
        usage: Callable[[], Awaitable[dict[str, Any]]],
    ) -> bool:
        """`event: error` `{name, message}`, then the run ends `error` with `usage()`; made again
        while the database is briefly unavailable (`_recorded`), the event stored once. False:
        the run's lease went to another process first."""
        sent = False

        async def record() -> bool:
            nonlocal sent
            if not sent:
                await self.events.append(run_id, [("error", {"error": name, "message": message})])
                sent = True
            return await self.db.finish_run(
                run_id, "error", await usage(), error, owner=self.owner, thread_status=thread_status
            )

        return await self._recorded(run_id, record)

    async def _recorded(self, run_id: str, make: Callable[[], Awaitable[T]]) -> T:
        """`make()` (the bookkeeping of a run's end), made again while the database is briefly
        unavailable (locked, restarting, unreachable), for up to a lease; after that the error
        stands and the run is left to the sweep, which hands it to a next attempt once its lease
        has expired (that attempt finds the run's checkpoints and records its end)."""
        deadline = time.monotonic() + self.settings.run_lease_s
        delay = 0.05
        while True:
            try:
                return await make()
            except DB_ERRORS as exc:
                if not retryable(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "run %s: recording its end failed (%s: %s); trying again",
                    run_id,
                    type(exc).__name__,
                    redact(str(exc)),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _context(self, graph: Pregel, run: dict[str, Any]) -> Any:
        kw = run["kwargs"]
        if getattr(graph, "context_schema", None) is MarketingContext:
            if kw.get("resolved_context") is not None:  # resolved when the run was created
                return parse_context(kw["resolved_context"])
            return await self.runner.context_for(run["thread_id"], kw.get("context"))
        return kw.get("context") or None

    async def _run_graph(
        self, run: dict[str, Any], graph: Pregel, config: RunnableConfig, outcome: RunOutcome
    ) -> tuple[str, dict[str, Any], str]:
        """Stream the run into the event log (what it says about the state: `outcome`);
        returns (run status, usage, thread status)."""
        run_id, kw = run["run_id"], run["kwargs"]
        ctx = await self._context(graph, run)
        # the claim marked the run started (a first attempt with the checkpoint it starts from).
        # The usage before it is the base of this run's usage (`start_usage`); when that is not
        # known, a first attempt reads the state live, before the graph writes (its values include
        # what finished tasks saved on that checkpoint, which a read at a given checkpoint id
        # leaves out and which a resumed run adds to), and stores it for any later attempt
        fork = kw.get("checkpoint_id")
        at_fork: RunnableConfig | None = (
            {**config, "configurable": {**config["configurable"], "checkpoint_id": fork}}
            if fork
            else None
        )
        base = start_usage(run)
        before = None
        if run["attempt"] > 1 or (base is None and at_fork is None):
            before = await graph.aget_state(config)  # (a later attempt: did this run checkpoint?)
        if base is None:
            if at_fork is not None:  # a fork adds to the totals of its checkpoint, not the head's
                base = _usage_of(await graph.aget_state(at_fork))
            else:
                base = _usage_of(before)
                if run["attempt"] == 1:  # a later attempt finds this run's own writes at the head
                    await self.db.set_run_fields(run_id, kwargs={**kw, "usage_base": base})
        outcome.base = base
        payload: Any
        record_before = continuing = False
        if (
            before is not None
            and run["attempt"] > 1
            and (before.metadata or {}).get("run_id") == run_id
        ):
            payload, continuing = None, True  # this run already checkpointed: go on from there
            # ... and had finished: only the bookkeeping was lost. (`next` alone is not enough:
            # it leaves out tasks whose writes were saved; a process killed after a superstep's
            # tasks all wrote, before its next checkpoint, has `next` empty and more to do)
            if not before.tasks:
                thread_status = thread_status_of(before)
                return (
                    thread_status.replace("idle", "success"),
                    outcome.usage_in(before),
                    thread_status,
                )
            # ... or had stopped at one of its breakpoints, which LangGraph would not stop at
            # again when continuing: it ends there, as it did before the process went away
            if await self._stopped_at_breakpoint(graph, before, kw):
                return "interrupted", outcome.usage_in(before), "interrupted"
        else:
            cmd = kw.get("command")
            payload = (
                Command(
                    resume=cmd.get("resume"),
                    update=cmd.get("update"),
                    goto=cmd.get("goto") or (),
                )
                if cmd
                else kw.get("input")
            )
            record_before = run.get("before_checkpoint_id") is None  # no attempt recorded it
        checked = kw.get("checked_at")
        if (
            run["attempt"] == 1
            and checked is not None
            and run.get("before_checkpoint_id") not in (None, checked)
        ):  # queued behind a run that moved the thread: is the run still what it allows?
            await self._check_turn_again(run, graph, ctx)
        if record_before:  # the claim marked it busy; record where it starts
            await self.db.mark_run_started(run_id, run["thread_id"], run["graph_id"])
        # a fork starts from its checkpoint (with input, a new branch from there; without, it
        # replays what was next there), a continuation of this run from the head
        stream_config = at_fork if at_fork is not None and not continuing else config
        if run["attempt"] > 1:  # attempt 1's metadata event was stored when the run was created
            await self.events.append(
                run_id, [("metadata", {"run_id": run_id, "attempt": run["attempt"]})]
            )
        requested = set(kw.get("stream_mode") or ["values"])
        subgraphs = bool(kw.get("stream_subgraphs"))
        modes = {m for m in requested if m not in ("messages-tuple",)}
        if requested & {"messages", "messages-tuple"}:
            modes.add("messages")
        # interrupts surface through updates; the root's last values are the state after the run
        modes.update(("updates", "values"))
        astream: Any = graph.astream  # options come from the validated request body
        stream = astream(
            payload,
            stream_config,
            context=ctx,
            stream_mode=sorted(modes),
            subgraphs=subgraphs,  # subgraph chunks cost time: only when the client wants them
            interrupt_before=kw.get("interrupt_before"),
            interrupt_after=kw.get("interrupt_after"),
            durability=kw.get("durability") or "sync",
        )
        batcher = EventBatcher(self.events, run_id)
        try:
            async for part in stream:
                ns, mode, chunk = part if subgraphs else ((), *part)
                if not ns:
                    outcome.see(mode, chunk)
                if mode == "values" and "values" not in requested:
                    continue
                name = event_name(mode, ns, subgraphs)
                if mode == "updates" and "updates" not in requested:
                    if isinstance(chunk, dict) and chunk.get("__interrupt__"):
                        await batcher.add(event_name("values", ns, subgraphs), chunk)
                    continue
                if (
                    mode == "values"
                    and isinstance(chunk, dict)
                    and "__interrupt__" in chunk
                    and "updates" not in requested
                ):
                    continue  # already sent from the updates stream above
                if mode == "debug":
                    chunk = debug_event(chunk)
                await batcher.add(name, chunk)
        except BaseException:
            await batcher.drain()  # what the run streamed before it failed or was cancelled
            raise
        # every event is stored before the run's status changes
        known = outcome.state_after(graph)
        if known is None:  # the state is read (meanwhile)
            _, after = await asyncio.gather(batcher.drain(), graph.aget_state(config))
            after_values, thread_status = after.values or {}, thread_status_of(after)
        else:
            await batcher.drain()
            after_values, thread_status = known
        usage = outcome.usage_from(after_values)
        return (
            ("interrupted" if thread_status == "interrupted" else "success"),
            usage,
            thread_status,
        )

    async def _check_turn_again(self, run: dict[str, Any], graph: Pregel, ctx: Any) -> None:
        """The checks of the run's creation (`app.server.turns.check_turn`) on the thread as it
        is now; raises `RunRefusedError`."""
        kw = run["kwargs"]
        view = await self.runner.view(run["thread_id"], graph)
        try:
            marketing = ctx if isinstance(ctx, MarketingContext) else None
            check_turn(view, kw.get("input"), kw.get("command"), marketing)
        except AppError as exc:
            status = "interrupted" if view.status in ("interrupted", "unfinished") else "idle"
            raise RunRefusedError(exc, status) from exc

    @staticmethod
    async def _stopped_at_breakpoint(graph: Pregel, head: Any, kw: dict[str, Any]) -> bool:
        """The run's own last checkpoint `head` is where one of its breakpoints stops it: a node
        about to run is in `interrupt_before`, or a node whose step made `head` (the nodes next at
        its parent checkpoint) is in `interrupt_after`. Not for a pending `interrupt()`: that
        one a continuation raises again."""
        if head.interrupts:
            return False

        def hits(names: Any, asked: Any) -> bool:
            return bool(asked) and (asked == "*" or "*" in asked or bool(set(names) & set(asked)))

        if hits(head.next, kw.get("interrupt_before")):
            return True
        made_by_a_step = (head.metadata or {}).get("source") == "loop"  # not input, not update
        if kw.get("interrupt_after") and made_by_a_step and head.parent_config:
            parent = await graph.aget_state(head.parent_config)
            return hits(parent.next, kw.get("interrupt_after"))
        return False

    async def _after_cancel(
        self,
        run: dict[str, Any],
        graph: Pregel,
        config: RunnableConfig,
        reason: str,
        outcome: RunOutcome,
    ) -> str:
        """Bookkeeping once a run's task was cancelled; returns the status for metrics."""
        run_id, thread_id = run["run_id"], run["thread_id"]
        await settle_checkpointer(self.registry.checkpointer)
        if reason == "lost":  # another worker owns it now
            return "released"
        if reason == "shutdown":  # the next attempt records the usage of the whole run
            await self.db.requeue_run(run_id, self.owner, released=True)
            return "released"
        if reason == "rollback":  # as if the run never happened: its checkpoints go
            if outcome.base is not None and outcome.usage is None:  # ... but what it spent is
                outcome.usage_in(await graph.aget_state(config))  # counted (/metrics)
            await self.db.delete_run_checkpoints(thread_id, run_id)
        snapshot = await graph.aget_state(config)
        others = [r for r in await self.db.active_runs(thread_id) if r["run_id"] != run_id]
        status = "busy" if any(r["status"] == "running" for r in others) else "idle"
        if status == "idle" and snapshot.interrupts:
            status = "interrupted"
        if reason == "rollback":  # the thread's status first: waiters wake when the run is gone
            await self.db.update_thread(thread_id, status=status)
            await self.db.delete_run(run_id)
        elif not await self.db.finish_run(
            run_id,
            "interrupted",
            outcome.usage_in(snapshot),  # what its finished steps spent and saved
            "cancelled",
            owner=self.owner,
            thread_status=status,
            end_event=True,
        ):
            return "released"  # another process took it over meanwhile
        return "interrupted"
