"""`mkt serve --workers 1` on Postgres, driven by the official `langgraph-sdk`: runs execute in
the worker process and stream live through the API process (LISTEN/NOTIFY, no polling: the poll
intervals are set far above what the tests allow), interrupt and resume, cancel and rollback
across processes without waiting for a heartbeat; `kill -9` of the worker mid-run: the server
restarts it, the run completes from its checkpoint, each outbox item is written once; and a
graceful stop takes the workers down with it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import CAMPAIGN, PUBLISH_REQUEST
from tests.integration.serving import (
    Server,
    alive,
    migrate,
    outbox,
    run_row,
    server_env,
    start_server,
    stop_server,
    user,
)

langgraph_sdk = pytest.importorskip("langgraph_sdk")
from langgraph_sdk.errors import NotFoundError  # noqa: E402

pytestmark = pytest.mark.integration

# without notifications a stream would wait up to 30 s per batch and a worker 30 s to see a new
# run, and a cancel would wait for the heartbeat (every 20 s): the tests below allow far less
SLOW_POLLS = {
    "RUN_POLL_INTERVAL_S": "30",
    "NOTIFY_FALLBACK_POLL_S": "30",
    "RUN_LEASE_S": "60",
}
PROMPT_S = 10.0


@pytest.fixture(scope="module")
def server(pg_admin_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.pg import fresh_database

    tmp = tmp_path_factory.mktemp("workers")
    with fresh_database(pg_admin_dsn) as dsn:
        # model calls of 250 ms: a cancel sent as soon as a run is running lands mid-run, before
        # the campaign reaches its first approval
        env = server_env(dsn, tmp / "data", SCRIPTED_LATENCY_MS="250", **SLOW_POLLS)
        migrate(env)
        srv = start_server(env, tmp / "server.log", workers=1)
        try:
            yield srv
        except BaseException:
            print(srv.log())
            raise
        finally:
            stop_server(srv)


def without_message_ids(values: dict[str, Any]) -> dict[str, Any]:
    return {
        **values,
        "messages": [{k: v for k, v in m.items() if k != "id"} for m in values.get("messages", [])],
    }


async def no_active_runs(server: Server) -> None:
    """The worker lowers its gauge just after it stores the run's end, which the client sees."""
    for _ in range(100):
        if scrape(server)[("mkt_active_runs", ())] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"mkt_active_runs stayed {scrape(server)[('mkt_active_runs', ())]}")


def scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The server's /metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _until_running(c: Any, tid: str, rid: str) -> None:
    for _ in range(200):
        if (await c.runs.get(tid, rid))["status"] == "running":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the run never started")


async def test_runs_execute_in_the_worker_and_stream_live_through_the_server(
    server: Server,
) -> None:
    (worker,) = server.workers()
    assert worker != server.proc.pid and "runs execute in 1 worker process(es)" in server.log()
    c = langgraph_sdk.get_client(url=server.url)
    tid = (await c.threads.create())["thread_id"]
    t0 = time.monotonic()
    owners, parts = set(), []
    async for part in c.runs.stream(
        tid,
        "supervisor",
        input=user(PUBLISH_REQUEST),
        stream_mode=["updates", "messages-tuple"],
        stream_subgraphs=True,
    ):
        parts.append(part)
        if part.event.startswith("updates"):  # who runs it, while it runs
            owners.add(run_row(server.dsn, parts[0].data["run_id"])["lease_owner"])
    took = time.monotonic() - t0
    assert took < PROMPT_S, f"{took:.1f} s: events waited for a poll instead of a notification"
    assert {o.split(":")[1] for o in owners if o} == {str(worker)}  # the worker's pid
    assert not [p for p in parts if p.event == "error"], parts
    assert any(p.event.startswith("updates|social:") for p in parts)
    assert any(p.event.startswith("messages|social:") for p in parts)  # tokens
    ids = [int(p.id) for p in parts]
    assert ids == sorted(set(ids))
    interrupt = next(p.data for p in parts if p.event == "updates" and "__interrupt__" in p.data)
    assert interrupt["__interrupt__"][0]["value"][0]["action_request"]["args"]["channel"]
    assert (await c.threads.get(tid))["status"] == "interrupted"

    result = await c.runs.wait(tid, "supervisor", command={"resume": {"type": "accept"}})
    assert "__error__" not in result and "__interrupt__" not in result
    assert (await c.threads.get(tid))["status"] == "idle"
    assert outbox(server.dsn, tid) == [("post-linkedin", 1)]
    assert [r["status"] for r in await c.runs.list(tid)] == ["success", "interrupted"]

    # the server's /metrics counts what its worker executed (shared multiprocess files)
    seen = scrape(server)
    assert seen[("mkt_runs_total", (("status", "success"),))] >= 1
    assert seen[("mkt_runs_total", (("status", "interrupted"),))] >= 1
    assert seen[("mkt_run_duration_seconds_count", (("status", "success"),))] >= 1
    assert seen[("mkt_tokens_total", (("agent", "social"), ("direction", "output")))] > 0
    # read from Postgres at the scrape: an idle queue (every listener keeps up) is ~empty
    assert 0 <= seen[("mkt_postgres_notification_queue_usage", ())] < 0.01
    await no_active_runs(server)


async def test_cancel_and_rollback_reach_the_worker_at_once(server: Server) -> None:
    c = langgraph_sdk.get_client(url=server.url)
    tid = (await c.threads.create())["thread_id"]
    run = await c.runs.create(tid, "supervisor", input=user(CAMPAIGN))
    await _until_running(c, tid, run["run_id"])
    t0 = time.monotonic()
    await c.runs.cancel(tid, run["run_id"], wait=True)
    took = time.monotonic() - t0
    assert took < PROMPT_S, f"cancel took {took:.1f} s: it waited for the heartbeat"
    assert (await c.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    assert (await c.threads.get(tid))["status"] != "busy"
    joined = [p.event async for p in c.runs.join_stream(tid, run["run_id"])]
    assert joined[0] == "metadata"  # the stream of a cancelled run ends

    before = await c.threads.get_state(tid)
    doomed = await c.runs.create(tid, "supervisor", input=user(CAMPAIGN))
    await _until_running(c, tid, doomed["run_id"])
    t0 = time.monotonic()
    await c.runs.cancel(tid, doomed["run_id"], wait=True, action="rollback")
    assert time.monotonic() - t0 < PROMPT_S
    with pytest.raises(NotFoundError):
        await c.runs.get(tid, doomed["run_id"])
    after = await c.threads.get_state(tid)
    # the very head the thread had, with its pending writes; message ids aside: a head whose
    # input write is still pending (the first run was cancelled right after it) shows that
    # message with an id made up at each read
    assert after["checkpoint"] == before["checkpoint"] and after["next"] == before["next"]
    assert without_message_ids(after["values"]) == without_message_ids(before["values"])


def json_of(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def sum_usage(usages: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for usage in usages:
        for agent, u in (usage or {}).items():
            acc = out.setdefault(agent, {"calls": 0, "input_tokens": 0, "output_tokens": 0})
            for key in acc:
                acc[key] += u[key]
    return out


def counts(usage: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    return {a: (u["calls"], u["input_tokens"], u["output_tokens"]) for a, u in usage.items()}


async def test_kill_9_of_the_worker_mid_run_it_is_restarted_and_the_run_completes_once(
    pg_dsn: str, tmp_path: Path
) -> None:
    # the worker SIGKILLs itself right after its first outbox write, before the checkpoint (the
    # worst moment for exactly-once publishing); its replacement does not (MKT_CRASH_ONCE)
    env = server_env(
        pg_dsn,
        tmp_path / "data",
        MKT_CRASH_AT="after_outbox_write",
        MKT_CRASH_ONCE=str(tmp_path / "crashed"),
    )
    migrate(env)
    server = start_server(env, tmp_path / "server.log", workers=1)
    try:
        c = langgraph_sdk.get_client(url=server.url)
        (first_worker,) = server.workers()
        tid = (await c.threads.create())["thread_id"]
        planned = await c.runs.create(tid, "supervisor", input=user(CAMPAIGN))
        await _until_running(c, tid, planned["run_id"])
        os.kill(first_worker, signal.SIGKILL)  # mid-run, from outside
        result = await c.runs.join(tid, planned["run_id"])
        assert "__interrupt__" in result, result  # the first approval, after a restart
        assert run_row(pg_dsn, planned["run_id"])["attempt"] == 2
        (second_worker,) = server.workers()
        assert second_worker != first_worker and not alive(first_worker)

        for _ in range(2):  # three items: the first two approvals just ask for the next one
            await c.runs.wait(tid, "supervisor", command={"resume": {"type": "accept"}})
        resume = await c.runs.create(tid, "supervisor", command={"resume": {"type": "accept"}})
        result = await c.runs.join(tid, resume["run_id"])  # the worker crashes in this run
        assert (tmp_path / "crashed").exists()
        assert "__error__" not in result and "__interrupt__" not in result, result
        assert (await c.runs.get(tid, resume["run_id"]))["attempt"] == 2
        (third_worker,) = server.workers()
        assert third_worker not in (first_worker, second_worker)
        assert (await c.threads.get(tid))["status"] == "idle"
        assert outbox(pg_dsn, tid) == [("blog", 1), ("post-linkedin", 1), ("post-x", 1)]
        parts = [p async for p in c.runs.join_stream(tid, resume["run_id"])]
        assert [p.data["attempt"] for p in parts if p.event == "metadata"] == [1, 2]
        ids = [int(p.id) for p in parts]
        assert ids == sorted(set(ids))  # no duplicate across the two attempts
        # each run records what it added, the attempts before a kill included: together the
        # runs account for the thread's whole usage
        runs = await c.runs.list(tid, limit=10)
        assert len(runs) == 4
        recorded = [json_of(run_row(pg_dsn, r["run_id"])["usage"]) for r in runs]
        totals = (await c.threads.get_state(tid))["values"]["usage"]
        assert counts(sum_usage(recorded)) == counts(totals), (recorded, totals)
        log = server.log()
        assert log.count("was killed by SIGKILL; restarting it") == 2
        # the killed workers' runs count, their live gauges do not
        assert scrape(server)[("mkt_runs_started_total", ())] == 6  # 4 runs, 2 started twice
        await no_active_runs(server)
    except BaseException:
        print(server.log())
        raise
    finally:
        stop_server(server)
    assert server.proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert "Finished server process" in server.log()
    assert not alive(third_worker)  # a graceful stop takes the workers with it
    assert f"mkt worker[{third_worker}]: stopped" in server.log()


async def test_workers_of_a_killed_server_stop_by_themselves(pg_dsn: str, tmp_path: Path) -> None:
    env = server_env(pg_dsn, tmp_path / "data")
    migrate(env)
    server = start_server(env, tmp_path / "server.log", workers=1)
    try:
        (worker,) = server.workers()
        os.kill(server.proc.pid, signal.SIGKILL)  # the server only: workers have own sessions
        server.proc.wait(10)
        for _ in range(150):
            if not alive(worker):
                break
            await asyncio.sleep(0.1)
        assert not alive(worker), "an orphaned worker kept running"
    finally:
        stop_server(server)
