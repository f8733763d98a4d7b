"""HTTP server benchmark: our `mkt serve` (Postgres) against `langgraph dev` (the peer), both
driven by the official `langgraph-sdk` client, measured in the same run of this script.

For each concurrency level (default 1, 10, 50, 100 concurrent SDK streams) every stream runs the
same research + blog request (no approval, so one stream = one full run) a few times and records:

- time to first event (the `metadata` event) and to the first graph event (`updates`); TTFE is
  also reported for rounds 2+ alone: round 1 starts every stream at the same instant (a burst of
  N simultaneous run creations), later rounds start as earlier runs end,
- full run latency (request to the end of the stream),
- runs/s over the level's wall time, and errors.

Time to first event *at* N concurrent streams, without the burst (`--held-streams`, 100): N
streams are opened 10 ms apart and kept open (each followed to its run's end and replaced by a
new one), then a new stream starts every 50 ms, independently of the others, and is timed to its
first event (`--probes`, 40).

Baseline in the same run: the same request through the same graph in this process on the same kind
of checkpointer (Postgres). The server's overhead per run is measured in pairs — one in-process
run, then one run through the server with one stream, repeated (`--overhead-runs`) — so a
machine whose load drifts affects both sides alike: `overhead = median(server - in-process)`.
Memory per idle open stream: a second pair of servers whose scripted model sleeps for minutes
(`SCRIPTED_LATENCY_MS`), one background run, K join streams on it; RSS growth (of the server and
its worker processes) / K.

`--workers 0,1,2` measures `mkt serve --workers N` for each N in the same run (runs executed in
the server process, or in N worker processes).

Usage: `.venv/bin/python -m bench.server [--levels 1,10,50,100] [--rounds 3] [--workers 0,1]
[--skip-peer]`.
Targets (reported, never asserted): p95 time to first event < 50 ms at 100 streams; our added
overhead per run < 15 ms over the in-process run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from app.server.heap import freeze_startup_heap
from bench.run import package_versions, percentile, positive, postgres_database, summary

REPO_ROOT = Path(__file__).resolve().parents[1]
REQUEST = "Research what runners say about carbon-plated trail shoes and write a blog post about it"
DEFAULT_OUT = Path("bench/results/server.json")
TTFE_P95_TARGET_MS = 50.0
OVERHEAD_TARGET_MS = 15.0
IDLE_MODEL_LATENCY_MS = 600_000  # the idle-stream run sits in one model call for 10 minutes
START_TIMEOUT_S = 90.0

_DROP_ENV = (
    "DATABASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "TAVILY_API_KEY",
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
    "MODEL_NAME",
    "AGENT_MODELS",
    "MODEL_FALLBACKS",
    "MKT_CRASH_AT",
    "QDRANT_URL",
)


# ---------------------------------------------------------------------------------------------
# server processes
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    from app.local_llm import free_port as _free_port

    return _free_port()


def server_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(
        MODEL_PROVIDER="scripted",
        DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        LANGSMITH_TEST_TRACKING="false",
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="1",
        RATE_LIMIT="",  # the load is the point: no 429s (one client sends hundreds of runs)
        **extra,
    )
    return env


@dataclass
class ServerProc:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def rss_bytes(self) -> int:
        """Resident memory of the server's process group and every process below it (worker
        processes run in sessions of their own)."""
        parent: dict[int, int] = {}
        group: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid = int(stat.parent.name)
                parent[pid], group[pid] = int(fields[1]), int(fields[2])  # ppid, pgrp
            except (OSError, IndexError, ValueError):
                continue
        mine = {pid for pid, pgrp in group.items() if pgrp == self.proc.pid}
        grew = True
        while grew:
            below = {pid for pid, ppid in parent.items() if ppid in mine} - mine
            mine |= below
            grew = bool(below)
        total = 0
        for pid in mine:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(text[-lines:])


def _mkt() -> str:
    exe = Path(sys.executable).parent / "mkt"
    return str(exe) if exe.exists() else "mkt"


def _langgraph() -> str:
    exe = Path(sys.executable).parent / "langgraph"
    return str(exe) if exe.exists() else "langgraph"


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stopped (and measured) as a whole
        )


@asynccontextmanager
async def start_server(
    name: str, cmd: list[str], env: dict[str, str], log: Path
) -> AsyncIterator[ServerProc]:
    proc = await asyncio.to_thread(_spawn, cmd, env, log)
    port = cmd[cmd.index("--port") + 1]
    server = ServerProc(name, f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(timeout=2.0) as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{server.tail()}")
                try:
                    if (await http.get(f"{server.url}/ok")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} gave no /ok in {START_TIMEOUT_S:.0f}s:\n{server.tail()}"
                    )
                await asyncio.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def ours_name(workers: int | None) -> str:
    return "mkt serve" if workers is None else f"mkt serve -w{workers}"


def ours(tmp: Path, dsn: str, tag: str, workers: int | None = None, **extra: str) -> Any:
    env = server_env(tmp / f"data-{tag}", DATABASE_URL=dsn, **extra)
    env.pop("SERVE_WORKERS", None)
    subprocess.run(
        [_mkt(), "db", "migrate"], env=env, cwd=REPO_ROOT, check=True, capture_output=True
    )
    port = str(free_port())
    cmd = [_mkt(), "serve", "--host", "127.0.0.1", "--port", port]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    name = f"{ours_name(workers)} ({tag})"
    return start_server(name, cmd, env, tmp / f"mkt-{tag}-w{workers}.log")


def peer(tmp: Path, tag: str, **extra: str) -> Any:
    env = server_env(tmp / f"peer-{tag}", **extra)
    port = str(free_port())
    cmd = [_langgraph(), "dev", "--no-browser", "--no-reload", "--port", port]
    return start_server(f"langgraph dev ({tag})", cmd, env, tmp / f"peer-{tag}.log")


def sdk_client(url: str, connections: int = 2) -> Any:
    """One SDK client, as one user's program has. Each simulated user gets its own: one client
    shared by 100 concurrent streams spends most of the burst in httpcore's connection pool,
    which scans every pooled connection for every request (O(n²): ~1 s of the bench's own CPU
    for a burst of 100, more than the server's), and would time the bench, not the server."""
    from langgraph_sdk.client import LangGraphClient

    http = httpx.AsyncClient(
        base_url=url,
        timeout=httpx.Timeout(connect=10, read=300, write=60, pool=60),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )
    return LangGraphClient(http)


@asynccontextmanager
async def sdk_clients(url: str, count: int) -> AsyncIterator[list[Any]]:
    """`count` users' clients, closed at the end."""
    clients = [sdk_client(url) for _ in range(count)]
    try:
        yield clients
    finally:
        await asyncio.gather(*(c.http.client.aclose() for c in clients))


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------


@dataclass
class Level:
    streams: int
    ttfe_ms: list[float] = field(default_factory=list)
    ttfe_later_ms: list[float] = field(default_factory=list)  # rounds 2+: no simultaneous burst
    first_update_ms: list[float] = field(default_factory=list)
    run_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def runs_per_s(self) -> float:
        return len(self.run_ms) / self.wall_s if self.wall_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "runs": len(self.run_ms),
            "errors": self.errors[:20],
            "error_count": len(self.errors),
            "wall_s": round(self.wall_s, 3),
            "runs_per_s": round(self.runs_per_s, 2),
            "ttfe_ms": summary(self.ttfe_ms),
            "ttfe_after_first_round_ms": summary(self.ttfe_later_ms),
            "ttfe_samples": [round(v, 2) for v in self.ttfe_ms],
            "first_update_ms": summary(self.first_update_ms),
            "run_ms": summary(self.run_ms),
        }


async def one_run(client: Any, level: Level, round_no: int = 0) -> None:
    """One streamed run on a new thread; samples go to `level`."""
    thread = await client.threads.create()
    t0 = time.perf_counter()
    first = first_update = None
    failed = None
    async for part in client.runs.stream(
        thread["thread_id"],
        "supervisor",
        input={"messages": [{"role": "user", "content": REQUEST}]},
        stream_mode="updates",
    ):
        now = time.perf_counter()
        if first is None:
            first = now
        if part.event == "updates" and first_update is None:
            first_update = now
        if part.event == "error":
            failed = json.dumps(part.data)[:200]
    end = time.perf_counter()
    if failed or first is None:
        level.errors.append(failed or "empty stream")
        return
    level.ttfe_ms.append((first - t0) * 1000)
    if round_no > 0:
        level.ttfe_later_ms.append((first - t0) * 1000)
    if first_update is not None:
        level.first_update_ms.append((first_update - t0) * 1000)
    level.run_ms.append((end - t0) * 1000)


async def measure_level(url: str, streams: int, rounds: int) -> Level:
    level = Level(streams)

    async def user(client: Any) -> None:
        for round_no in range(rounds):
            try:
                await one_run(client, level, round_no)
            except (httpx.HTTPError, OSError) as exc:  # the SDK raises httpx errors
                level.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    async with sdk_clients(url, streams) as clients:
        t0 = time.perf_counter()
        await asyncio.gather(*(user(c) for c in clients))
        level.wall_s = time.perf_counter() - t0
    return level


@asynccontextmanager
async def in_process(dsn: str, tmp: Path) -> AsyncIterator[Any]:
    """The same request through the same graph, in this process, on Postgres (the floor): yields
    a coroutine function that makes one run on a new thread and returns its wall time in ms."""
    from app.knowledge import open_knowledge_base
    from app.models import ModelFactory, set_model_factory
    from app.settings import Settings
    from app.storage import open_storage, set_active_db
    from graphs.context import MarketingContext
    from graphs.supervisor import builder

    settings = Settings(model_provider="scripted", data_dir=tmp / "inproc", database_url=dsn)
    previous = set_model_factory(ModelFactory(settings))
    try:
        # the same tools as the server's run: its own embedded knowledge base (searched by the
        # research agent, and for past examples), opened before the first run as a worker does
        async with (
            open_knowledge_base(settings, eager=True),
            open_storage(settings, migrate=True) as storage,
        ):
            set_active_db(storage.db)
            graph = builder.compile(checkpointer=storage.checkpointer, name="supervisor")

            async def run_once() -> float:
                config: Any = {"configurable": {"thread_id": str(uuid.uuid4())}}
                t0 = time.perf_counter()
                async for _ in graph.astream(
                    {"messages": [{"role": "user", "content": REQUEST}]},
                    config,
                    context=MarketingContext(),
                    stream_mode="updates",
                    durability="sync",
                ):
                    pass
                return (time.perf_counter() - t0) * 1000

            for _ in range(2):  # warm-up
                await run_once()
            try:
                yield run_once
            finally:
                set_active_db(None)
    finally:
        set_model_factory(previous)


@dataclass
class Paired:
    """Alternating in-process and server runs (one stream): overhead = median of differences."""

    in_process_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)

    @property
    def overhead_ms(self) -> float:
        return percentile(
            [s - i for s, i in zip(self.server_ms, self.in_process_ms, strict=True)], 50
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "pairs": len(self.server_ms),
            "overhead_ms_median_of_differences": round(self.overhead_ms, 2),
            "in_process_ms": summary(self.in_process_ms),
            "server_ms": summary(self.server_ms),
            "in_process_samples": self.in_process_ms,
            "server_samples": self.server_ms,
        }


async def measure_overhead(url: str, run_in_process: Any, pairs: int) -> Paired:
    paired = Paired()
    client = sdk_client(url, connections=4)
    try:
        for _ in range(pairs):
            level = Level(1)
            paired.in_process_ms.append(await run_in_process())
            await one_run(client, level)
            if level.errors:
                raise RuntimeError(f"server run failed: {level.errors[0]}")
            paired.server_ms.append(level.run_ms[0])
    finally:
        await client.http.client.aclose()
    return paired


@dataclass
class Held:
    """TTFE of new streams opened one by one while `held` streams are open (no burst)."""

    held: int
    ttfe_ms: list[float] = field(default_factory=list)
    open_at_probe: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "held": self.held,
            "probes": len(self.ttfe_ms),
            "errors": self.errors[:20],
            "ttfe_ms": summary(self.ttfe_ms),
            "ttfe_samples": [round(v, 2) for v in self.ttfe_ms],
            "open_at_probe": summary([float(n) for n in self.open_at_probe]),
        }


async def measure_held(url: str, held: int, probes: int, gap_s: float = 0.05) -> Held:
    """`held` streams are kept open — started one every 10 ms (no burst), each followed to its
    run's end and replaced by a new one; a stream counts as open from its request to its end —
    and once all have started, a new stream starts every
    `gap_s` regardless of the others (independent users) and is closed at its first event (its
    run carries on). Those probes' TTFE is the time to first event *at* `held` concurrent
    streams, with runs executing and streaming meanwhile."""
    result = Held(held)
    open_now = started = 0
    all_started = asyncio.Event()
    stop = asyncio.Event()
    body = {"messages": [{"role": "user", "content": REQUEST}]}

    async def hold(client: Any) -> None:
        nonlocal open_now, started
        while not stop.is_set():
            thread = await client.threads.create()
            open_now += 1  # from the request on: a stream waiting for its first event is open too
            started += 1
            if started >= held:
                all_started.set()
            try:
                async for _ in client.runs.stream(
                    thread["thread_id"], "supervisor", input=body, stream_mode="updates"
                ):
                    pass
            finally:
                open_now -= 1

    async def probe(client: Any) -> None:
        thread = await client.threads.create()
        result.open_at_probe.append(open_now)
        t0 = time.perf_counter()
        async for _ in client.runs.stream(
            thread["thread_id"], "supervisor", input=body, stream_mode="updates"
        ):
            result.ttfe_ms.append((time.perf_counter() - t0) * 1000)
            break

    holders: list[asyncio.Task[None]] = []
    async with sdk_clients(url, held + probes) as clients:
        for client in clients[:held]:
            holders.append(asyncio.create_task(hold(client)))
            await asyncio.sleep(0.01)
        try:
            await asyncio.wait_for(all_started.wait(), 120)
            tasks = []
            for client in clients[held:]:
                tasks.append(asyncio.create_task(probe(client)))
                await asyncio.sleep(gap_s)
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    result.errors.append(f"{type(outcome).__name__}: {outcome}"[:200])
        except TimeoutError:
            result.errors.append(f"only {started} of {held} held streams started within 120 s")
        finally:
            stop.set()
            for task in holders:
                task.cancel()
            for outcome in await asyncio.gather(*holders, return_exceptions=True):
                if isinstance(outcome, Exception):
                    result.errors.append(f"held stream: {type(outcome).__name__}: {outcome}"[:200])
    return result


async def idle_stream_memory(server: ServerProc, streams: int) -> dict[str, Any]:
    """RSS growth per open join stream on a run that is stuck in a (simulated) model call."""
    client = sdk_client(server.url, connections=8)
    thread = await client.threads.create()
    run = await client.runs.create(
        thread["thread_id"],
        "supervisor",
        input={"messages": [{"role": "user", "content": REQUEST}]},
    )
    await asyncio.sleep(1.0)
    path = f"/threads/{thread['thread_id']}/runs/{run['run_id']}/stream"
    before = server.rss_bytes()
    http = httpx.AsyncClient(
        base_url=server.url,
        timeout=httpx.Timeout(connect=10, read=600, write=60, pool=60),
        limits=httpx.Limits(max_connections=streams + 5, max_keepalive_connections=0),
    )
    opened: list[Any] = []
    try:
        for _ in range(streams):
            cm = http.stream("GET", path, headers={"Accept": "text/event-stream"})
            resp = await cm.__aenter__()
            opened.append(cm)
            if resp.status_code != 200:
                return {"error": f"join stream answered {resp.status_code}"}
        await asyncio.sleep(2.0)  # let each stream reach its idle state (replay done, waiting)
        after = server.rss_bytes()
    finally:
        for cm in opened:
            await cm.__aexit__(None, None, None)
        await http.aclose()
        with suppress(httpx.HTTPError):
            await client.runs.cancel(thread["thread_id"], run["run_id"])
        await client.http.client.aclose()
    return {
        "streams": streams,
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "per_stream_kb": round((after - before) / streams / 1024, 1),
    }


# ---------------------------------------------------------------------------------------------
# driver and report
# ---------------------------------------------------------------------------------------------


@dataclass
class Options:
    levels: list[int]
    rounds: int
    overhead_runs: int
    idle_streams: int
    skip_peer: bool
    out: Path
    workers: list[int | None] = field(default_factory=lambda: [None])
    held_streams: int = 100
    probes: int = 40


@dataclass
class Results:
    levels: dict[str, list[Level]] = field(default_factory=dict)
    paired: dict[str, Paired] = field(default_factory=dict)
    held: dict[str, Held] = field(default_factory=dict)
    idle: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def in_process_ms(self) -> list[float]:
        return [ms for p in self.paired.values() for ms in p.in_process_ms]


async def measure(opts: Options, console: Console) -> Results:
    results = Results()
    with postgres_database(False) as (dsn, reason), tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if dsn is None:
            raise SystemExit(f"the server benchmark needs Postgres: {reason}")
        runnable = []
        for w in opts.workers:
            if (w or 0) > 1:  # the servers get a fresh embedded store (QDRANT_URL is dropped)
                results.skipped[ours_name(w)] = (
                    "more than one worker needs a Qdrant server (QDRANT_URL), and the bench "
                    "gives each server a fresh embedded knowledge base"
                )
            else:
                runnable.append(w)
        opts.workers = runnable
        targets: list[tuple[str, Any]] = [
            (ours_name(w), ours(tmp, dsn, "load", w)) for w in opts.workers
        ]
        if opts.skip_peer:
            results.skipped["langgraph dev"] = "--skip-peer given"
        else:
            targets.append(("langgraph dev", peer(tmp, "load")))
        console.print("in-process baseline (same graph, Postgres checkpointer): warm-up …")
        async with in_process(dsn, tmp) as run_in_process:
            for name, starter in targets:
                async with starter as server:
                    console.print(f"{name}: warm-up …")
                    await measure_level(server.url, 1, 2)
                    console.print(f"{name}: {opts.overhead_runs} in-process/server run pairs …")
                    results.paired[name] = await measure_overhead(
                        server.url, run_in_process, opts.overhead_runs
                    )
                    results.levels[name] = []
                    for n in opts.levels:
                        console.print(f"{name}: {n} concurrent stream(s) × {opts.rounds} runs …")
                        # this process holds the graphs (in-process runs) and 100 clients: a full
                        # collection of its heap took ~290 ms, landing in the TTFE of every stream
                        # in flight; timed from here on, it would measure the bench, not the server
                        freeze_startup_heap()
                        level = await measure_level(server.url, n, opts.rounds)
                        results.levels[name].append(level)
                    if opts.held_streams:
                        console.print(
                            f"{name}: {opts.probes} new streams while {opts.held_streams} are "
                            "open …"
                        )
                        freeze_startup_heap()
                        results.held[name] = await measure_held(
                            server.url, opts.held_streams, opts.probes
                        )
        if opts.idle_streams:
            slow = {"SCRIPTED_LATENCY_MS": str(IDLE_MODEL_LATENCY_MS)}
            idle_targets: list[tuple[str, Any]] = [
                (ours_name(w), ours(tmp, dsn, "idle", w, **slow)) for w in opts.workers
            ]
            if not opts.skip_peer:
                idle_targets.append(("langgraph dev", peer(tmp, "idle", **slow)))
            for name, starter in idle_targets:
                console.print(f"{name}: {opts.idle_streams} idle join streams …")
                async with starter as server:
                    results.idle[name] = await idle_stream_memory(server, opts.idle_streams)
    return results


def _f(value: float) -> str:
    return f"{value:.1f}"


def ttfe_verdict(name: str, samples: list[float], when: str) -> tuple[bool, str]:
    p95 = percentile(samples, 95)
    return (
        p95 < TTFE_P95_TARGET_MS,
        f"{name}: p95 time to first event{when}: {_f(p95)} ms "
        f"(target < {TTFE_P95_TARGET_MS:.0f} ms)",
    )


def verdicts(results: Results) -> list[tuple[bool | None, str]]:
    out: list[tuple[bool | None, str]] = []
    for name, levels in results.levels.items():
        if not name.startswith("mkt serve"):
            continue
        top = max(levels, key=lambda lv: lv.streams, default=None)
        if top is not None and top.ttfe_ms:
            when = f", {top.streams} streams started at once and rounds after"
            out.append(ttfe_verdict(name, top.ttfe_ms, when))
        if top is not None and top.ttfe_later_ms:
            when = f" at {top.streams} streams, rounds 2+ (no simultaneous burst)"
            out.append(ttfe_verdict(name, top.ttfe_later_ms, when))
        held = results.held.get(name)
        if held is not None and held.ttfe_ms:
            when = f" of a new stream while {held.held} streams are open"
            out.append(ttfe_verdict(name, held.ttfe_ms, when))
        paired = results.paired.get(name)
        if paired is not None and paired.server_ms:
            overhead = paired.overhead_ms
            out.append(
                (
                    overhead < OVERHEAD_TARGET_MS,
                    f"{name}: overhead per run over the in-process run (median of "
                    f"{len(paired.server_ms)} paired differences, 1 stream): {_f(overhead)} ms "
                    f"(target < {OVERHEAD_TARGET_MS:.0f} ms)",
                )
            )
    return out


def print_report(results: Results, console: Console) -> None:
    base = percentile(results.in_process_ms, 50) if results.in_process_ms else None
    if results.paired:
        pairs = Table(title="Overhead per run: alternating in-process and server runs, 1 stream")
        for col in ("server", "pairs", "in-proc p50", "server p50", "overhead (median diff)"):
            pairs.add_column(col, justify="left" if col == "server" else "right")
        for name, p in results.paired.items():
            pairs.add_row(
                name,
                str(len(p.server_ms)),
                _f(percentile(p.in_process_ms, 50)),
                _f(percentile(p.server_ms, 50)),
                _f(p.overhead_ms),
            )
        console.print(pairs)
    table = Table(title="SDK streams: research + blog run (scripted model)")
    for col in (
        "server",
        "streams",
        "runs",
        "err",
        "runs/s",
        "TTFE p50",
        "TTFE p95",
        "TTFE p95 rounds 2+",
        "1st update p95",
        "run p50",
        "run p95",
        "run p50 ÷ in-proc",
    ):
        table.add_column(col, justify="right" if col not in ("server",) else "left")
    if base is not None:
        table.add_row(
            "in-process",
            "1",
            str(len(results.in_process_ms)),
            "0",
            "",
            "",
            "",
            "",
            "",
            _f(base),
            _f(percentile(results.in_process_ms, 95)),
            "1.00×",
        )
    for name, levels in results.levels.items():
        for lv in levels:
            if not lv.run_ms:
                table.add_row(name, str(lv.streams), "0", str(len(lv.errors)), *[""] * 8)
                continue
            table.add_row(
                name,
                str(lv.streams),
                str(len(lv.run_ms)),
                str(len(lv.errors)),
                f"{lv.runs_per_s:.1f}",
                _f(percentile(lv.ttfe_ms, 50)),
                _f(percentile(lv.ttfe_ms, 95)),
                _f(percentile(lv.ttfe_later_ms, 95)) if lv.ttfe_later_ms else "",
                _f(percentile(lv.first_update_ms, 95)) if lv.first_update_ms else "",
                _f(percentile(lv.run_ms, 50)),
                _f(percentile(lv.run_ms, 95)),
                f"{percentile(lv.run_ms, 50) / base:.2f}×" if base else "",
            )
    console.print(table)
    if results.held:
        held = Table(title="New streams while others are open (one every 50 ms, no burst)")
        for col in ("server", "open", "probes", "err", "TTFE p50", "TTFE p95", "TTFE max"):
            held.add_column(col, justify="left" if col == "server" else "right")
        for name, h in results.held.items():
            if not h.ttfe_ms:
                held.add_row(name, str(h.held), "0", str(len(h.errors)), "", "", "")
                continue
            held.add_row(
                name,
                f"{min(h.open_at_probe)}–{max(h.open_at_probe)}",
                str(len(h.ttfe_ms)),
                str(len(h.errors)),
                _f(percentile(h.ttfe_ms, 50)),
                _f(percentile(h.ttfe_ms, 95)),
                _f(max(h.ttfe_ms)),
            )
        console.print(held)
    if results.idle:
        idle = Table(title="Memory per idle open stream (join stream on a run in a model call)")
        for col in ("server", "streams", "RSS before MB", "RSS after MB", "per stream KB"):
            idle.add_column(col)
        for name, row in results.idle.items():
            if "error" in row:
                idle.add_row(name, "", "", "", row["error"])
                continue
            idle.add_row(
                name,
                str(row["streams"]),
                str(row["rss_before_mb"]),
                str(row["rss_after_mb"]),
                str(row["per_stream_kb"]),
            )
        console.print(idle)
    for met, text in verdicts(results):
        mark = "[green]met[/]" if met else "[red]missed[/]"
        console.print(f"{mark}  {text}")
    for name, levels in results.levels.items():
        for lv in levels:
            if lv.errors:
                console.print(
                    f"[yellow]{name} @ {lv.streams}: {len(lv.errors)} errors[/], e.g. {lv.errors[0]}"
                )
    for name, h in results.held.items():
        if h.errors:
            console.print(
                f"[yellow]{name} held streams: {len(h.errors)} errors[/], e.g. {h.errors[0]}"
            )
    for name, reason in results.skipped.items():
        console.print(f"[yellow]{name} skipped:[/] {reason}")


def write_json(results: Results, opts: Options, started: datetime, took_s: float) -> Path:
    doc = {
        "meta": {
            "started_utc": started.isoformat(timespec="seconds"),
            "duration_s": round(took_s, 2),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "packages": package_versions(),
            "options": {
                "levels": opts.levels,
                "rounds": opts.rounds,
                "overhead_runs": opts.overhead_runs,
                "workers": opts.workers,
                "idle_streams": opts.idle_streams,
                "held_streams": opts.held_streams,
                "probes": opts.probes,
                "skip_peer": opts.skip_peer,
            },
            "request": REQUEST,
        },
        "targets": {
            "ttfe_p95_ms_at_max_streams": TTFE_P95_TARGET_MS,
            "overhead_ms": OVERHEAD_TARGET_MS,
            "verdicts": [{"met": met, "text": text} for met, text in verdicts(results)],
        },
        "in_process_ms": {
            "stats": summary(results.in_process_ms),
            "samples": results.in_process_ms,
        },
        "overhead_pairs": {name: p.to_json() for name, p in results.paired.items()},
        "servers": {name: [lv.to_json() for lv in lvs] for name, lvs in results.levels.items()},
        "held_streams": {name: h.to_json() for name, h in results.held.items()},
        "idle_stream_memory": results.idle,
        "skipped": results.skipped,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return opts.out


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.server",
        description=(
            "HTTP server benchmark: our `mkt serve` on Postgres and `langgraph dev` (peer), driven "
            "by the official langgraph-sdk at several concurrency levels, plus the same graph "
            "in-process as the floor and memory per idle open stream. Prints tables, writes JSON. "
            f"Targets (reported): p95 TTFE < {TTFE_P95_TARGET_MS:.0f} ms at the top level; "
            f"overhead per run < {OVERHEAD_TARGET_MS:.0f} ms."
        ),
    )
    parser.add_argument("--levels", default="1,10,50,100", help="concurrent streams per level")
    parser.add_argument("--rounds", type=positive, default=3, help="runs per stream per level")
    parser.add_argument(
        "--overhead-runs",
        type=positive,
        default=40,
        help="alternating in-process / server run pairs per server for the overhead (40: with "
        "20 the median moved by 3-5 ms between runs)",
    )
    parser.add_argument(
        "--workers",
        default="",
        help="comma-separated `mkt serve --workers` values to measure, e.g. 0,1,2 "
        "(default: the server's own default)",
    )
    parser.add_argument(
        "--idle-streams", type=int, default=200, help="open streams for the memory test (0 = skip)"
    )
    parser.add_argument(
        "--held-streams",
        type=int,
        default=100,
        help="streams kept open while new ones are timed, one every 50 ms (0 = skip; 100)",
    )
    parser.add_argument(
        "--probes", type=positive, default=40, help="new streams timed while others are open (40)"
    )
    parser.add_argument("--skip-peer", action="store_true", help="do not measure langgraph dev")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file ({DEFAULT_OUT})")
    ns = parser.parse_args(argv)
    try:
        levels = sorted({positive(v.strip()) for v in ns.levels.split(",") if v.strip()})
    except (ValueError, argparse.ArgumentTypeError):
        parser.error(f"--levels: comma-separated positive integers, got {ns.levels!r}")
    workers: list[int | None] = [None]
    if ns.workers.strip():
        try:
            workers = sorted({int(v.strip()) for v in ns.workers.split(",") if v.strip()})
        except ValueError:
            parser.error(f"--workers: comma-separated integers, got {ns.workers!r}")
        if any(w < 0 for w in workers if w is not None):
            parser.error("--workers: values must be 0 or more")
    return Options(
        levels,
        ns.rounds,
        ns.overhead_runs,
        max(0, ns.idle_streams),
        ns.skip_peer,
        ns.out,
        workers,
        max(0, ns.held_streams),
        ns.probes,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TAVILY_API_KEY", "DATABASE_URL"):
        os.environ.pop(var, None)
    os.environ.update(MODEL_PROVIDER="scripted", LANGSMITH_TRACING="false")
    console = Console(width=None if Console().is_terminal else 160)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    results = asyncio.run(measure(opts, console))
    took = time.perf_counter() - t0
    print_report(results, console)
    path = write_json(results, opts, started, took)
    console.print(f"\nwrote {path} · bench took {took:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
