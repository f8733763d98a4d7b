"""The SDK's automatic reconnect across a server crash: a client streaming a run keeps the same
`runs.stream(...)` call open while the server is killed with SIGKILL and started again on the same
port. The SDK reconnects to the stream's `Location` with `Last-Event-ID`; the new server takes the
run up from its last checkpoint; the client sees every stored event exactly once, in order, and
the run's end."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from app.local_llm import free_port
from tests.integration.serving import migrate, start_server, stop_server, user
from tests.integration.serving import server_env as _env

langgraph_sdk = pytest.importorskip("langgraph_sdk")

pytestmark = pytest.mark.integration

REQUEST = "Research what runners say about carbon-plated trail shoes and write a blog post about it"


@pytest.mark.parametrize("workers", [0, 1])
async def test_sdk_stream_survives_a_server_kill_9_and_restart(
    pg_dsn: str, tmp_path: Path, workers: int
) -> None:
    """`--workers 0`: the run dies with the server and the next server takes it up (attempt 2).
    `--workers 1`: the worker process outlives its server and finishes the run on its own
    (attempt 1) while the client reconnects to the restarted server; either way the client's
    one stream call sees every event once and the run's end."""
    # slow model calls keep the run going long enough to kill the server in the middle of it
    env = {**_env(pg_dsn, tmp_path / "data"), "SCRIPTED_LATENCY_MS": "400"}
    migrate(env)
    port = free_port()
    log_path = tmp_path / "server.log"
    first = start_server(env, log_path, port, workers=workers)
    servers = [first]
    try:
        client = langgraph_sdk.get_client(url=first.url)
        tid = (await client.threads.create())["thread_id"]
        seen: list[Any] = []
        async for part in client.runs.stream(
            tid, "supervisor", input=user(REQUEST), stream_mode="updates", stream_subgraphs=True
        ):
            seen.append(part)
            if len(seen) == 3:  # mid-run: kill -9 and start again on the same port
                os.killpg(first.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(first.proc.wait, 30)
                servers.append(
                    await asyncio.to_thread(start_server, env, log_path, port, workers=workers)
                )
        assert len(servers) == 2, "the stream ended before the server was killed"

        run_id = seen[0].data["run_id"]
        ids = [int(p.id) for p in seen]
        assert ids == sorted(set(ids)), f"duplicate or out-of-order event ids: {ids}"
        # nothing missed: exactly what the event log holds for the run
        stored = [p async for p in client.runs.join_stream(tid, run_id)]
        assert [(p.id, p.event, p.data) for p in seen] == [(p.id, p.event, p.data) for p in stored]
        attempts = 2 if workers == 0 else 1
        assert [p.data["attempt"] for p in seen if p.event == "metadata"] == [1, 2][:attempts]
        assert not [p for p in seen if p.event == "error"], seen
        run = await client.runs.get(tid, run_id)
        assert run["status"] == "success" and run["attempt"] == attempts
        state = await client.threads.get_state(tid)
        assert state["values"]["messages"][-1]["type"] == "ai"
        assert (await client.threads.get(tid))["status"] == "idle"
    except BaseException:
        print(log_path.read_text(encoding="utf-8", errors="replace"))
        raise
    finally:
        for srv in servers:
            stop_server(srv)
