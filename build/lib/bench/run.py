"""Orchestration benchmark: the supervisor with the scripted model on three checkpointers.

Measures, in one process and one run of this script:

1. full supervisor runs (the request + one resume per approval) compiled on `InMemorySaver`,
   SQLite (`open_storage` without DATABASE_URL) and Postgres (a fresh database), with the time
   spent inside model calls measured separately so that `overhead = wall - model time`;
2. the same runs through `app.runner.Runner` (the CLI/server path: event streaming, thread and run
   records, state views) - secondary, for context;
3. checkpoint state read latency: `graph.aget_state(config)` on a finished thread.

Usage: `.venv/bin/python -m bench.run [--runs N] [--out bench/results/latest.json] [--skip-postgres]`
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psycopg
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.db import open_sqlite_db
from app.models import ModelFactory, set_model_factory
from app.runner import RECURSION_LIMIT, Runner
from app.scripted import ScriptedChatModel
from app.settings import Settings, get_settings, reset_settings_cache
from app.storage import Storage, open_storage, set_active_db
from graphs.context import MarketingContext
from graphs.supervisor import builder

REQUEST = (
    "Research what runners say about carbon-plated trail shoes, write a launch blog post and "
    "LinkedIn + X posts for our TerraRun shoe, and schedule them for Tuesday 9am."
)
EXPECTED_STEPS = ["research", "blog", "post-x", "post-linkedin", "publish"]
EXPECTED_APPROVALS = 3
ACCEPT = {"type": "accept"}
MAX_RESUMES = 20

RUN_OVERHEAD_TARGET_MS = 100.0  # issue: a full supervisor run's own overhead under 100 ms
READ_P95_TARGET_MS = 5.0  # issue: aget_state p95 under 5 ms on local Postgres

BACKENDS = ("memory", "sqlite", "postgres")
DEFAULT_OUT = Path("bench/results/latest.json")


# ---------------------------------------------------------------------------------------------
# instrumentation: spans recorded by the timed model and the wrapped checkpointer
# ---------------------------------------------------------------------------------------------


@dataclass
class Recorder:
    """Time spans per category for the run in progress (list.append is atomic, so the scripted
    model's executor thread can record too)."""

    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    root_loop_checkpoints: int = 0
    subgraph_checkpoints: int = 0
    capture: list[tuple[LanguageModelInput, dict[str, Any]]] | None = None

    def reset(self) -> None:
        self.spans = {}
        self.root_loop_checkpoints = 0
        self.subgraph_checkpoints = 0

    def add(self, category: str, start: float, end: float) -> None:
        self.spans.setdefault(category, []).append((start, end))

    def count(self, category: str) -> int:
        return len(self.spans.get(category, []))

    def total_s(self, category: str) -> float:
        return sum(e - s for s, e in self.spans.get(category, []))

    def busy_s(self, *categories: str) -> float:
        """Wall time during which at least one span of `categories` was open (parallel calls
        are counted once)."""
        spans = sorted(s for c in categories for s in self.spans.get(c, []))
        busy, cur_start, cur_end = 0.0, None, 0.0
        for start, end in spans:
            if cur_start is None or start > cur_end:
                if cur_start is not None:
                    busy += cur_end - cur_start
                cur_start, cur_end = start, end
            else:
                cur_end = max(cur_end, end)
        if cur_start is not None:
            busy += cur_end - cur_start
        return busy


REC = Recorder()


class TimedScriptedChatModel(ScriptedChatModel):
    """The scripted model, with the time inside each `ainvoke` (the call a real provider would
    replace, LangChain's per-call wrapper included) and inside its own text generation recorded."""

    async def ainvoke(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        if REC.capture is not None:
            REC.capture.append((input, dict(kwargs)))
        start = time.perf_counter()
        try:
            return await super().ainvoke(input, config, stop=stop, **kwargs)
        finally:
            REC.add("model_call", start, time.perf_counter())

    def _respond(
        self, messages: list[BaseMessage], tools: list[dict[str, Any]] | None
    ) -> AIMessage:
        start = time.perf_counter()
        try:
            return super()._respond(messages, tools)
        finally:
            REC.add("model_compute", start, time.perf_counter())


class BenchModelFactory(ModelFactory):
    """The scripted provider, built as `TimedScriptedChatModel`."""

    def _build(self, name: str) -> Any:
        return TimedScriptedChatModel()


def instrument(saver: BaseCheckpointSaver[Any]) -> BaseCheckpointSaver[Any]:
    """Record the time of every awaited checkpointer call on this instance (in place)."""
    put, put_writes, get_tuple = saver.aput, saver.aput_writes, saver.aget_tuple

    async def aput(
        config: RunnableConfig, checkpoint: Any, metadata: Any, new_versions: Any
    ) -> RunnableConfig:
        if config.get("configurable", {}).get("checkpoint_ns", ""):
            REC.subgraph_checkpoints += 1
        elif (metadata or {}).get("source") == "loop":
            REC.root_loop_checkpoints += 1
        start = time.perf_counter()
        try:
            return await put(config, checkpoint, metadata, new_versions)
        finally:
            REC.add("ckpt_put", start, time.perf_counter())

    async def aput_writes(
        config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        start = time.perf_counter()
        try:
            await put_writes(config, writes, task_id, task_path)
        finally:
            REC.add("ckpt_writes", start, time.perf_counter())

    async def aget_tuple(config: RunnableConfig) -> Any:
        start = time.perf_counter()
        try:
            return await get_tuple(config)
        finally:
            REC.add("ckpt_get", start, time.perf_counter())

    saver.aput = aput  # type: ignore[method-assign]
    saver.aput_writes = aput_writes  # type: ignore[method-assign]
    saver.aget_tuple = aget_tuple  # type: ignore[method-assign]
    return saver


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), like numpy's default."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "mean": sum(values) / len(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
        "max": max(values) if values else float("nan"),
    }


@dataclass
class RunSample:
    wall_ms: float
    model_ms: float  # wall time with >= 1 model call in flight (parallel calls counted once)
    model_sum_ms: float  # sum of model call durations
    compute_ms: float  # inside the scripted model's own text generation
    overhead_ms: float  # wall_ms - model_ms
    model_calls: int
    approvals: int
    root_supersteps: int  # root-graph checkpoints written by the loop (one per superstep)
    checkpoints: int  # all checkpoints written, subgraph ones included
    subgraph_checkpoints: int  # of which written by sub-agent subgraphs
    ckpt_busy_ms: float  # wall time with >= 1 checkpointer call in flight
    other_ms: float  # wall time with neither a model nor a checkpointer call in flight
    ckpt_put_ms: float  # sums of call durations (parallel calls overlap: see ckpt_busy_ms)
    ckpt_writes: int
    ckpt_writes_ms: float
    ckpt_gets: int
    ckpt_get_ms: float


def sample_from(wall_s: float, approvals: int) -> RunSample:
    model = REC.busy_s("model_call")
    ckpt = ("ckpt_put", "ckpt_writes", "ckpt_get")
    return RunSample(
        wall_ms=wall_s * 1e3,
        model_ms=model * 1e3,
        model_sum_ms=REC.total_s("model_call") * 1e3,
        compute_ms=REC.total_s("model_compute") * 1e3,
        overhead_ms=(wall_s - model) * 1e3,
        model_calls=REC.count("model_call"),
        approvals=approvals,
        root_supersteps=REC.root_loop_checkpoints,
        checkpoints=REC.count("ckpt_put"),
        subgraph_checkpoints=REC.subgraph_checkpoints,
        ckpt_busy_ms=REC.busy_s(*ckpt) * 1e3,
        other_ms=(wall_s - REC.busy_s("model_call", *ckpt)) * 1e3,
        ckpt_put_ms=REC.total_s("ckpt_put") * 1e3,
        ckpt_writes=REC.count("ckpt_writes"),
        ckpt_writes_ms=REC.total_s("ckpt_writes") * 1e3,
        ckpt_gets=REC.count("ckpt_get"),
        ckpt_get_ms=REC.total_s("ckpt_get") * 1e3,
    )


@dataclass
class RunSeries:
    backend: str
    path: str  # "graph" | "runner"
    samples: list[RunSample] = field(default_factory=list)

    def stat(self, name: str) -> dict[str, float]:
        return summary([float(getattr(s, name)) for s in self.samples])

    def to_json(self) -> dict[str, Any]:
        keys = [k for k in RunSample.__dataclass_fields__ if k != "approvals"]
        return {
            "backend": self.backend,
            "path": self.path,
            "runs": len(self.samples),
            "stats_ms_or_count": {k: self.stat(k) for k in keys},
            "samples": [asdict(s) for s in self.samples],
        }


@dataclass
class ReadSeries:
    backend: str
    samples_ms: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "reads": len(self.samples_ms),
            "stats_ms": summary(self.samples_ms),
            "samples_ms": self.samples_ms,
        }


# ---------------------------------------------------------------------------------------------
# one full run
# ---------------------------------------------------------------------------------------------


class ScenarioError(RuntimeError):
    """The run did not follow the benchmark scenario (plan, approvals, outbox)."""


def run_config(thread_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread_id}, "recursion_limit": RECURSION_LIMIT}


def check_scenario(values: dict[str, Any], approvals: int) -> list[str]:
    problems = []
    steps = [s["id"] for s in (values.get("plan") or {}).get("steps") or []]
    if steps != EXPECTED_STEPS:
        problems.append(f"plan steps {steps}, expected {EXPECTED_STEPS}")
    if approvals != EXPECTED_APPROVALS:
        problems.append(f"{approvals} approvals, expected {EXPECTED_APPROVALS}")
    scheduled = [i for i in values.get("scheduled") or [] if i.get("status") == "scheduled"]
    if len(scheduled) != EXPECTED_APPROVALS:
        problems.append(f"{len(scheduled)} outbox items, expected {EXPECTED_APPROVALS}")
    return problems


async def graph_run(graph: Any) -> tuple[RunSample, dict[str, Any]]:
    """The request, then `accept` for every interrupt, on a new thread; all of it timed."""
    config = run_config(str(uuid.uuid4()))
    ctx = MarketingContext()
    REC.reset()
    start = time.perf_counter()
    out = await graph.ainvoke(
        {"messages": [{"role": "user", "content": REQUEST}]},
        config,
        context=ctx,
        durability="sync",
    )
    approvals = 0
    while "__interrupt__" in out:
        approvals += 1
        if approvals > MAX_RESUMES:
            raise ScenarioError("too many approvals")
        out = await graph.ainvoke(Command(resume=ACCEPT), config, context=ctx, durability="sync")
    wall = time.perf_counter() - start
    sample = sample_from(wall, approvals)
    return sample, {"thread_id": config["configurable"]["thread_id"], "values": out}


async def runner_run(runner: Runner) -> tuple[RunSample, dict[str, Any]]:
    """The same scenario through `Runner.send` / `Runner.resume` (what the CLI and server do)."""
    REC.reset()
    start = time.perf_counter()
    events = [e async for e in runner.send(None, REQUEST, None)]
    thread_id = next(e["thread_id"] for e in events if e["type"] == "run")
    approvals = 0
    while any(e["type"] == "approval" for e in events):
        approvals += 1
        if approvals > MAX_RESUMES:
            raise ScenarioError("too many approvals")
        events = [e async for e in runner.resume(thread_id, ACCEPT)]
    wall = time.perf_counter() - start
    sample = sample_from(wall, approvals)
    values = (await runner.view(thread_id)).values
    return sample, {"thread_id": thread_id, "values": values}


# ---------------------------------------------------------------------------------------------
# storage per backend
# ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def backend_storage(
    backend: str, data_dir: Path, pg_dsn: str | None
) -> AsyncIterator[Storage]:
    """Checkpointer (instrumented) + app DB for the outbox, active for graph nodes."""
    if backend == "memory":
        db, conn = await open_sqlite_db(data_dir / "memory-app.sqlite")
        try:
            await db.migrate()
            storage = Storage(instrument(InMemorySaver()), db, "InMemorySaver + sqlite app DB")
            set_active_db(db)
            yield storage
        finally:
            set_active_db(None)
            await conn.close()
        return
    if backend == "sqlite":
        settings = Settings(model_provider="scripted", data_dir=data_dir / "sqlite")
    else:
        settings = Settings(model_provider="scripted", data_dir=data_dir, database_url=pg_dsn)
    async with open_storage(settings, migrate=True) as storage:
        instrument(storage.checkpointer)
        set_active_db(storage.db)
        try:
            yield storage
        finally:
            set_active_db(None)


@contextmanager
def postgres_database(skip: bool) -> Iterator[tuple[str | None, str | None]]:
    """(dsn of a fresh database, None), or (None, the reason Postgres is skipped)."""
    if skip:
        yield None, "--skip-postgres given"
        return
    try:
        from tests.pg import fresh_database, server_dsn
    except ImportError as exc:
        yield None, f"tests.pg helpers not importable (run from the repo root): {exc}"
        return
    stack = ExitStack()
    try:
        admin = stack.enter_context(server_dsn())
        dsn = stack.enter_context(fresh_database(admin))
    except (RuntimeError, OSError, subprocess.SubprocessError, psycopg.Error) as exc:
        stack.close()
        detail = f"{type(exc).__name__}: {exc}"
        stderr = getattr(exc, "stderr", None)
        if stderr:
            text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else str(stderr)
            detail += f" ({text.strip().splitlines()[-1] if text.strip() else ''})"
        admin = os.environ.get("PG_TEST_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
        yield None, f"no PostgreSQL at {admin} and no throwaway cluster: {detail}"
        return
    with stack:
        yield dsn, None


# ---------------------------------------------------------------------------------------------
# measurement driver
# ---------------------------------------------------------------------------------------------


@dataclass
class Options:
    runs: int
    warmup: int
    reads: int
    runner: bool
    skip_postgres: bool
    out: Path


@dataclass
class Results:
    graph: dict[str, RunSeries] = field(default_factory=dict)
    runner: dict[str, RunSeries] = field(default_factory=dict)
    reads: dict[str, ReadSeries] = field(default_factory=dict)
    replay_ms: list[float] = field(default_factory=list)  # per-run model calls replayed directly
    skipped: dict[str, str] = field(default_factory=dict)
    scenario_problems: dict[str, list[str]] = field(default_factory=dict)
    plan_steps: list[str] = field(default_factory=list)


class Reporter:
    """Progress: a live bar on a terminal, one line per phase always."""

    def __init__(self, console: Console) -> None:
        self.console = console

    async def loop(
        self, label: str, n: int, body: Callable[[], Awaitable[float]], unit: str = "run"
    ) -> None:
        """Call `body` n times; each call returns its own measured time in ms."""
        start = time.perf_counter()
        times: list[float] = []
        if self.console.is_terminal:
            with Progress(
                TextColumn("  {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[last]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            ) as progress:
                task = progress.add_task(label, total=n, last="")
                for _ in range(n):
                    times.append(await body())
                    progress.update(task, advance=1, last=f"last {times[-1]:.1f} ms")
        else:
            for _ in range(n):
                times.append(await body())
        took = time.perf_counter() - start
        if times:
            self.console.print(
                f"  {label}: {n} {unit}s in {took:.1f} s · p50 {percentile(times, 50):.2f} ms"
                f" · p95 {percentile(times, 95):.2f} ms"
            )


async def measure_backend(
    backend: str,
    storage: Storage,
    factory: ModelFactory,
    opts: Options,
    results: Results,
    reporter: Reporter,
) -> None:
    console = reporter.console
    console.print(f"[bold]{backend}[/] · {storage.description}")
    graph = builder.compile(checkpointer=storage.checkpointer, name="supervisor")
    graph_series = RunSeries(backend, "graph")
    last: dict[str, Any] = {}
    problems: list[str] = []

    def note(found: list[str]) -> None:
        problems.extend(p for p in found if p not in problems)

    async def warm_graph() -> float:
        sample, info = await graph_run(graph)
        note(check_scenario(info["values"], sample.approvals))
        return sample.wall_ms

    async def measured_graph() -> float:
        sample, info = await graph_run(graph)
        graph_series.samples.append(sample)
        last.update(info)
        note(check_scenario(info["values"], sample.approvals))
        return sample.wall_ms

    gc.collect()
    await reporter.loop("graph warm-up", opts.warmup, warm_graph)
    await reporter.loop("graph runs", opts.runs, measured_graph)
    results.graph[backend] = graph_series
    if not results.plan_steps and last:
        results.plan_steps = [s["id"] for s in last["values"]["plan"]["steps"]]

    # --- state reads on the last finished thread -------------------------------------------
    config = run_config(last["thread_id"])
    reads = ReadSeries(backend)

    async def one_read() -> float:
        start = time.perf_counter()
        snap = await graph.aget_state(config)
        took = (time.perf_counter() - start) * 1e3
        if snap.next or not snap.values:
            raise ScenarioError(f"{backend}: thread {last['thread_id']} is not finished")
        return took

    async def measured_read() -> float:
        took = await one_read()
        reads.samples_ms.append(took)
        return took

    gc.collect()
    await reporter.loop("state-read warm-up", max(10, opts.reads // 10), one_read, "read")
    await reporter.loop("aget_state reads", opts.reads, measured_read, "read")
    results.reads[backend] = reads

    # --- the app's Runner path (secondary) ---------------------------------------------------
    if opts.runner:
        runner = Runner(storage, factory)
        runner_series = RunSeries(backend, "runner")

        async def warm_runner() -> float:
            sample, info = await runner_run(runner)
            note(check_scenario(info["values"], sample.approvals))
            return sample.wall_ms

        async def measured_runner() -> float:
            sample, info = await runner_run(runner)
            runner_series.samples.append(sample)
            note(check_scenario(info["values"], sample.approvals))
            return sample.wall_ms

        gc.collect()
        await reporter.loop("runner warm-up", opts.warmup, warm_runner)
        await reporter.loop("runner runs", opts.runs, measured_runner)
        results.runner[backend] = runner_series
        set_active_db(storage.db)
    if problems:
        results.scenario_problems[backend] = problems
        for p in problems:
            console.print(f"  [yellow]scenario differs:[/] {p}")


async def measure_replay(runs: int, graph_storage: Storage, reporter: Reporter) -> list[float]:
    """Replay one run's exact model calls on a plain `ScriptedChatModel`, sequentially, outside the
    graph: a cross-check of the in-graph model time."""
    graph = builder.compile(checkpointer=graph_storage.checkpointer, name="supervisor")
    REC.capture = []
    try:
        await graph_run(graph)
        calls = list(REC.capture)
    finally:
        REC.capture = None
    model = ScriptedChatModel()
    totals: list[float] = []

    async def replay() -> float:
        start = time.perf_counter()
        for inp, kwargs in calls:
            await model.ainvoke(inp, **kwargs)
        took = (time.perf_counter() - start) * 1e3
        totals.append(took)
        return took

    await replay()  # warm-up
    await reporter.loop(f"direct model replay ({len(calls)} calls/run)", runs, replay, "replay")
    return totals


async def measure(opts: Options, console: Console) -> Results:
    results = Results()
    reporter = Reporter(console)
    with tempfile.TemporaryDirectory(prefix="mkt-bench-") as tmp:
        data_dir = Path(tmp)
        os.environ["DATA_DIR"] = str(data_dir)
        reset_settings_cache()
        factory = BenchModelFactory(Settings(model_provider="scripted", data_dir=data_dir))
        previous = set_model_factory(factory)
        try:
            async with backend_storage("memory", data_dir, None) as storage:
                await measure_backend("memory", storage, factory, opts, results, reporter)
                results.replay_ms = await measure_replay(opts.runs, storage, reporter)
            async with backend_storage("sqlite", data_dir, None) as storage:
                await measure_backend("sqlite", storage, factory, opts, results, reporter)
            with postgres_database(opts.skip_postgres) as (dsn, reason):
                if dsn is None:
                    results.skipped["postgres"] = reason or "unknown"
                    console.print(f"[bold]postgres[/] · [yellow]skipped:[/] {reason}")
                else:
                    async with backend_storage("postgres", data_dir, dsn) as storage:
                        await measure_backend("postgres", storage, factory, opts, results, reporter)
        finally:
            set_model_factory(previous)
    return results


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(value: float, base: float | None) -> str:
    if base is None or base <= 0:
        return "-"
    return f"{value / base:.2f}×"


def _verdict(met: bool) -> str:
    return "[green]met[/]" if met else "[red]NOT met[/]"


def run_table(title: str, series: dict[str, RunSeries]) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("checkpointer", "runs", "wall p50", "wall p95", "wall mean", "model p50"):
        table.add_column(col, justify="right" if col != "checkpointer" else "left")
    for col in ("overhead p50", "overhead p95", "overhead mean", "× mem (ovh p50)"):
        table.add_column(col, justify="right")
    table.add_column(f"< {RUN_OVERHEAD_TARGET_MS:.0f} ms?", justify="left")
    base = series.get("memory")
    base_ovh = base.stat("overhead_ms")["p50"] if base else None
    for name in BACKENDS:
        s = series.get(name)
        if s is None:
            continue
        wall, model, ovh = s.stat("wall_ms"), s.stat("model_ms"), s.stat("overhead_ms")
        table.add_row(
            name,
            str(len(s.samples)),
            _ms(wall["p50"]),
            _ms(wall["p95"]),
            _ms(wall["mean"]),
            _ms(model["p50"]),
            _ms(ovh["p50"]),
            _ms(ovh["p95"]),
            _ms(ovh["mean"]),
            _ratio(ovh["p50"], base_ovh),
            _verdict(ovh["p50"] < RUN_OVERHEAD_TARGET_MS)
            + (" (p95 over)" if ovh["p50"] < RUN_OVERHEAD_TARGET_MS <= ovh["p95"] else ""),
        )
    return table


def detail_table(results: Results) -> Table:
    table = Table(
        title="Per full graph run (medians): where the wall time goes", title_justify="left"
    )
    for col in (
        "checkpointer",
        "model calls",
        "model Σ ms",
        "scripted gen ms",
        "supersteps (root)",
        "checkpoints (sub)",
        "write batches",
        "ckpt reads",
        "ckpt busy ms",
        "other ms",
    ):
        table.add_column(col, justify="right" if col != "checkpointer" else "left")
    for name in BACKENDS:
        s = results.graph.get(name)
        if s is None:
            continue

        def p50(key: str, series: RunSeries = s) -> float:
            return series.stat(key)["p50"]

        table.add_row(
            name,
            f"{p50('model_calls'):.0f}",
            _ms(p50("model_sum_ms")),
            _ms(p50("compute_ms")),
            f"{p50('root_supersteps'):.0f}",
            f"{p50('checkpoints'):.0f} ({p50('subgraph_checkpoints'):.0f})",
            f"{p50('ckpt_writes'):.0f}",
            f"{p50('ckpt_gets'):.0f}",
            _ms(p50("ckpt_busy_ms")),
            _ms(p50("other_ms")),
        )
    return table


def read_table(results: Results) -> Table:
    table = Table(title="Checkpoint state read: graph.aget_state(config)", title_justify="left")
    for col in ("checkpointer", "reads", "p50 ms", "p95 ms", "mean ms", "max ms", "× mem p50"):
        table.add_column(col, justify="right" if col != "checkpointer" else "left")
    table.add_column("× mem p95", justify="right")
    table.add_column(f"p95 < {READ_P95_TARGET_MS:.0f} ms?", justify="left")
    base = results.reads.get("memory")
    base_stats = summary(base.samples_ms) if base else None
    for name in BACKENDS:
        r = results.reads.get(name)
        if r is None:
            continue
        st = summary(r.samples_ms)
        verdict = _verdict(st["p95"] < READ_P95_TARGET_MS)
        if name != "postgres":
            verdict = f"({verdict}; target is for Postgres)"
        table.add_row(
            name,
            str(len(r.samples_ms)),
            _ms(st["p50"]),
            _ms(st["p95"]),
            _ms(st["mean"]),
            _ms(st["max"]),
            _ratio(st["p50"], base_stats["p50"] if base_stats else None),
            _ratio(st["p95"], base_stats["p95"] if base_stats else None),
            verdict,
        )
    return table


def verdicts(results: Results) -> list[tuple[bool | None, str]]:
    """(met, text) per target; met is None when it was not measured."""
    lines: list[tuple[bool | None, str]] = []
    for name in BACKENDS:
        s = results.graph.get(name)
        if s is None:
            continue
        ovh = s.stat("overhead_ms")
        met = ovh["p50"] < RUN_OVERHEAD_TARGET_MS
        lines.append(
            (
                met,
                f"run overhead < {RUN_OVERHEAD_TARGET_MS:.0f} ms on {name}: "
                f"{'met' if met else 'NOT met'} (p50 {ovh['p50']:.1f} ms, p95 {ovh['p95']:.1f} ms"
                f"{'; p95 over the target' if met and ovh['p95'] >= RUN_OVERHEAD_TARGET_MS else ''})",
            )
        )
    pg = results.reads.get("postgres")
    if pg is not None:
        p95 = percentile(pg.samples_ms, 95)
        met = p95 < READ_P95_TARGET_MS
        lines.append(
            (
                met,
                f"aget_state p95 < {READ_P95_TARGET_MS:.0f} ms on Postgres: "
                f"{'met' if met else 'NOT met'} (p95 {p95:.2f} ms)",
            )
        )
    else:
        reason = results.skipped.get("postgres", "skipped")
        lines.append((None, f"aget_state p95 on Postgres: not measured ({reason})"))
    return lines


def print_report(results: Results, opts: Options, console: Console) -> None:
    console.print()
    console.print(
        run_table(
            f"Full supervisor run, graph.ainvoke + {EXPECTED_APPROVALS} resumes, ms "
            "(overhead = wall - model)",
            results.graph,
        )
    )
    console.print(detail_table(results))
    if results.replay_ms:
        console.print(
            f"Direct model replay (one run's model calls on a plain ScriptedChatModel, sequential):"
            f" p50 {percentile(results.replay_ms, 50):.1f} ms per run"
        )
    console.print()
    console.print(read_table(results))
    if results.runner:
        console.print()
        console.print(
            run_table(
                "Secondary: the same run through app.runner.Runner (CLI/server path), ms",
                results.runner,
            )
        )
    console.print()
    marks = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]-[/]"}
    for met, line in verdicts(results):
        console.print(f"{marks[met]} {line}")
    for name, reason in results.skipped.items():
        console.print(f"[yellow]{name} skipped:[/] {reason}")
    for name, problems in results.scenario_problems.items():
        console.print(f"[yellow]scenario differs on {name}:[/] " + "; ".join(problems))


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in (
        "langgraph",
        "langgraph-checkpoint",
        "langgraph-checkpoint-sqlite",
        "langgraph-checkpoint-postgres",
        "langchain-core",
        "psycopg",
        "aiosqlite",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def write_json(results: Results, opts: Options, started: datetime, took_s: float) -> Path:
    doc = {
        "meta": {
            "started_utc": started.isoformat(timespec="seconds"),
            "duration_s": round(took_s, 2),
            "host": socket.gethostname(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "packages": package_versions(),
            "options": {
                "runs": opts.runs,
                "warmup": opts.warmup,
                "reads": opts.reads,
                "runner": opts.runner,
                "skip_postgres": opts.skip_postgres,
            },
        },
        "scenario": {
            "request": REQUEST,
            "plan_steps": results.plan_steps,
            "expected_steps": EXPECTED_STEPS,
            "approvals": EXPECTED_APPROVALS,
            "resume": ACCEPT,
            "durability": "sync",
            "recursion_limit": RECURSION_LIMIT,
            "problems": results.scenario_problems,
        },
        "targets": {
            "run_overhead_ms": RUN_OVERHEAD_TARGET_MS,
            "postgres_read_p95_ms": READ_P95_TARGET_MS,
            "verdicts": [{"met": met, "text": text} for met, text in verdicts(results)],
        },
        "graph_runs": {k: v.to_json() for k, v in results.graph.items()},
        "runner_runs": {k: v.to_json() for k, v in results.runner.items()},
        "state_reads": {k: v.to_json() for k, v in results.reads.items()},
        "model_replay_ms": {"stats": summary(results.replay_ms), "samples": results.replay_ms},
        "skipped": results.skipped,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return opts.out


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=(
            "Orchestration benchmark: full supervisor runs with the scripted model (request + one "
            "accept per approval) on InMemorySaver, SQLite and Postgres, with model time measured "
            "separately (overhead = wall - model), plus graph.aget_state read latency. Prints "
            "Rich tables and writes a JSON file. Targets: run overhead < "
            f"{RUN_OVERHEAD_TARGET_MS:.0f} ms; Postgres aget_state p95 < {READ_P95_TARGET_MS:.0f} "
            "ms (reported, not asserted)."
        ),
        epilog="Postgres: PG_TEST_DSN, else postgresql://postgres@127.0.0.1:5432/postgres, else a "
        "throwaway initdb cluster (tests/pg.py); one fresh database is created and dropped.",
    )
    parser.add_argument(
        "--runs", type=positive, default=50, help="measured full runs per checkpointer (default 50)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="unmeasured warm-up runs per checkpointer and path, at least 1 (default 5)",
    )
    parser.add_argument(
        "--reads",
        type=positive,
        default=200,
        help="measured aget_state reads per checkpointer (default 200)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"JSON results file (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--skip-postgres", action="store_true", help="measure memory and SQLite only"
    )
    parser.add_argument(
        "--no-runner",
        dest="runner",
        action="store_false",
        help="skip the secondary app.runner.Runner measurement",
    )
    ns = parser.parse_args(argv)
    return Options(
        runs=ns.runs,
        warmup=max(1, ns.warmup),
        reads=ns.reads,
        runner=ns.runner,
        skip_postgres=ns.skip_postgres,
        out=ns.out,
    )


def isolate_environment() -> None:
    """Scripted model, no tracing, no web search, no DATABASE_URL from the shell or `.env`."""
    os.environ["MODEL_PROVIDER"] = "scripted"
    os.environ["LANGSMITH_TRACING"] = "false"
    os.environ["LANGCHAIN_TRACING_V2"] = "false"
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TAVILY_API_KEY", "DATABASE_URL"):
        os.environ.pop(var, None)
    reset_settings_cache()
    if get_settings().tavily_api_key is not None:
        # a `.env` in the working directory sets it: research would call the real web search
        raise SystemExit(
            "TAVILY_API_KEY is set in .env: run the bench without it (web search "
            "would add network time to every run)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    isolate_environment()
    console = Console(width=None if Console().is_terminal else 150)
    started = datetime.now(UTC)
    console.print(
        f"[bold]mkt bench[/] · {opts.runs} runs (+{opts.warmup} warm-up) and {opts.reads} reads "
        f"per checkpointer · {os.cpu_count()} CPUs · Python {sys.version.split()[0]}"
    )
    t0 = time.perf_counter()
    results = asyncio.run(measure(opts, console))
    took = time.perf_counter() - t0
    print_report(results, opts, console)
    path = write_json(results, opts, started, took)
    console.print(f"\nwrote {path} · bench took {took:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
