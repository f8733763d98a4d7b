"""The SDK's automatic reconnect across a server crash: a client streaming a run keeps the same
`runs.stream(...)` call open while the server is killed with SIGKILL and started again on the same
port. The SDK reconnects to the stream's `Location` with `Last-Event-ID`; the new server takes the
run up from its last checkpoint; the client sees every stored event exactly once, in order, and
the run's end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from app.local_llm import free_port
from tests.integration.serving import Server, migrate, start_server, stop_server, user
from tests.integration.serving import server_env as _env

langgraph_sdk = pytest.importorskip("langgraph_sdk")

pytestmark = pytest.mark.integration

REQUEST = "Research what runners say about carbon-plated trail shoes and write a blog post about it"


async def kill_9_and_restart(
    server: Server, env: dict[str, str], log_path: Path, port: int, workers: int | None = None
) -> Server:
    """SIGKILL the server (its process group) and start the next one on the same port."""
    os.killpg(server.proc.pid, signal.SIGKILL)
    await asyncio.to_thread(server.proc.wait, 30)
    return await asyncio.to_thread(start_server, env, log_path, port, workers=workers)


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
                servers.append(await kill_9_and_restart(first, env, log_path, port, workers))
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


async def test_sdk_wait_survives_a_server_kill_9_and_restart(tmp_path: Path) -> None:
    """`runs.wait` gets the run's headers at once (`on_run_created` hears of the run while it
    goes on), so when the server is killed mid-run the SDK reconnects to `Location` — the run's
    `/join` — on the restarted server, which takes the run up again; the one `wait` call returns
    the run's result."""
    env = _env(None, tmp_path / "data", SCRIPTED_LATENCY_MS="300")  # SQLite, in-process runs
    port = free_port()
    log_path = tmp_path / "server.log"
    first = start_server(env, log_path, port)
    servers = [first]
    try:
        client = langgraph_sdk.get_client(url=first.url)
        tid = (await client.threads.create())["thread_id"]
        created: list[str] = []
        heard = asyncio.Event()

        def on_run_created(meta: Any) -> None:
            created.append(str(meta["run_id"]))
            heard.set()

        async def kill_and_restart() -> None:
            await heard.wait()  # the run exists and the wait's headers have come
            await asyncio.sleep(1.5)  # mid-run
            servers.append(await kill_9_and_restart(first, env, log_path, port))

        killer = asyncio.create_task(kill_and_restart())
        with pytest.warns(UserWarning, match="reconnect"):
            result = await client.runs.wait(
                tid,
                "supervisor",
                input=user(REQUEST),
                on_run_created=on_run_created,
            )
        await killer
        assert len(servers) == 2
        run = await client.runs.get(tid, created[0])
        assert run["status"] == "success" and run["attempt"] == 2, run  # taken up after the kill
        assert result["messages"][-1]["type"] == "ai"
        assert result == (await client.threads.get_state(tid))["values"]
    except BaseException:
        print(log_path.read_text(encoding="utf-8", errors="replace"))
        raise
    finally:
        for srv in servers:
            stop_server(srv)


async def ended_run(c: Any, url: str) -> dict[str, Any]:
    """The run at `url` once it has ended (up to 10 s; then as it is)."""
    for _ in range(100):
        run: dict[str, Any] = (await c.get(url)).json()
        if run["status"] not in ("pending", "running"):
            break
        await asyncio.sleep(0.1)
    return run


async def test_wait_answers_at_once_and_on_disconnect_cancel_cancels(tmp_path: Path) -> None:
    """Over a real connection: `/runs/wait`'s headers come while the run is going, then keep-alive
    newlines every `SSE_HEARTBEAT_S`, then the result. With `on_disconnect=cancel`, a client that
    goes away before the result cancels the run."""
    import httpx

    env = _env(None, tmp_path / "data", SCRIPTED_LATENCY_MS="300", SSE_HEARTBEAT_S="1")
    srv = start_server(env, tmp_path / "server.log")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            tid = (await c.post("/threads", json={})).json()["thread_id"]
            body = {"assistant_id": "supervisor", "input": user(REQUEST)}
            async with c.stream("POST", f"/threads/{tid}/runs/wait", json=body) as r:
                (run,) = (await c.get(f"/threads/{tid}/runs")).json()
                assert run["status"] in ("pending", "running")  # the headers came first
                base = f"/threads/{tid}/runs/{run['run_id']}"
                assert r.headers["location"] == f"{base}/join"
                assert r.headers["content-location"] == base
                chunks = [chunk async for chunk in r.aiter_bytes()]
            assert chunks[0] == b"\n" and len([c for c in chunks if c == b"\n"]) >= 2
            assert json.loads(b"".join(chunks)) == (await c.get(f"{base}/join")).json()

            tid = (await c.post("/threads", json={})).json()["thread_id"]
            wait = {**body, "on_disconnect": "cancel"}
            async with c.stream("POST", f"/threads/{tid}/runs/wait", json=wait) as r:
                await asyncio.sleep(1.5)  # the client gives up before the end and closes
            (run,) = (await c.get(f"/threads/{tid}/runs")).json()
            run = await ended_run(c, f"/threads/{tid}/runs/{run['run_id']}")
            assert run["status"] == "interrupted", run
    finally:
        stop_server(srv)


@pytest.mark.parametrize("join", ["join", "stream"])
async def test_a_join_with_cancel_on_disconnect_cancels_the_run_when_the_client_leaves(
    tmp_path: Path, join: str
) -> None:
    """Over a real connection: a client that leaves a join (`/join`, or the join stream) of a
    background run leaves the run going; with `cancel_on_disconnect=true` leaving cancels it, as
    the SDK's `join_stream(..., cancel_on_disconnect=True)` asks."""
    import httpx

    env = _env(None, tmp_path / "data", SCRIPTED_LATENCY_MS="300", SSE_HEARTBEAT_S="1")
    srv = start_server(env, tmp_path / "server.log")
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            tid = (await c.post("/threads", json={})).json()["thread_id"]
            body = {"assistant_id": "supervisor", "input": user(REQUEST)}
            run = (await c.post(f"/threads/{tid}/runs", json=body)).json()
            base = f"/threads/{tid}/runs/{run['run_id']}"

            async def leave_after(seconds: float, **params: str) -> str:
                async with c.stream("GET", f"{base}/{join}", params=params) as r:
                    assert r.status_code == 200
                    await asyncio.sleep(seconds)  # the client gives up before the end
                await asyncio.sleep(0.5)
                return str((await c.get(base)).json()["status"])

            assert await leave_after(1.0) in ("pending", "running")  # it carries on
            await leave_after(1.0, cancel_on_disconnect="true")
            run = await ended_run(c, base)
            assert run["status"] == "interrupted", run
    finally:
        stop_server(srv)


async def test_a_shutdown_releases_the_runs_of_on_disconnect_cancel_clients(tmp_path: Path) -> None:
    """SIGTERM while a stream and a `wait` with `on_disconnect=cancel` follow their runs: the
    server cuts both answers as it shuts down (the stream at once, the wait at uvicorn's graceful
    timeout), which is not their clients going away: the runs are released to the queue (they
    used to be cancelled, ending `interrupted`) and the next server finishes them."""
    import sqlite3

    import httpx

    data = tmp_path / "data"
    # slow model calls: both runs are still going when the graceful timeout (0 + 5 s) ends
    env = _env(None, data, SCRIPTED_LATENCY_MS="1500", SHUTDOWN_GRACE_S="0", SSE_HEARTBEAT_S="1")
    log_path = tmp_path / "server.log"
    srv = start_server(env, log_path)
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            threads = [(await c.post("/threads", json={})).json()["thread_id"] for _ in range(2)]
            body = {"assistant_id": "supervisor", "input": user(REQUEST), "on_disconnect": "cancel"}

            async def follow(path: str, started: asyncio.Event) -> None:
                with contextlib.suppress(httpx.HTTPError):
                    async with c.stream("POST", path, json=body) as r:
                        started.set()
                        async for _ in r.aiter_bytes():
                            pass

            started = [asyncio.Event(), asyncio.Event()]
            clients = [
                asyncio.create_task(follow(f"/threads/{threads[0]}/runs/stream", started[0])),
                asyncio.create_task(follow(f"/threads/{threads[1]}/runs/wait", started[1])),
            ]
            await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 30)
            os.kill(srv.proc.pid, signal.SIGTERM)
            await asyncio.to_thread(srv.proc.wait, 60)
            await asyncio.gather(*clients)
        with contextlib.closing(sqlite3.connect(data / "mkt.sqlite")) as lite:
            rows = lite.execute("SELECT status, attempt, error FROM runs").fetchall()
        assert rows == [("pending", 1, None)] * 2, rows  # released, not cancelled
        fast = {**env, "SCRIPTED_LATENCY_MS": "50"}
        srv = start_server(fast, log_path)
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
            for tid in threads:
                (run,) = (await c.get(f"/threads/{tid}/runs")).json()
                await c.get(f"/threads/{tid}/runs/{run['run_id']}/join")
                run = (await c.get(f"/threads/{tid}/runs/{run['run_id']}")).json()
                assert (run["status"], run["attempt"]) == ("success", 2), run
    except BaseException:
        print(log_path.read_text(encoding="utf-8", errors="replace"))
        raise
    finally:
        stop_server(srv)
