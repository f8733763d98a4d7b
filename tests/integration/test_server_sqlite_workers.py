"""`mkt serve --workers 1` on SQLite (embedded defaults, a worker process; not the default on
SQLite, but allowed): SQLite has no notifications, so the worker finds new runs and the server's
streams find the worker's events by polling (`RUN_POLL_INTERVAL_S`), and a cancel reaches the
worker at its next heartbeat. Driven by the official `langgraph-sdk`: a streamed run with an
approval, the resume, each outbox item once, a cancel, and the runs in the server's /metrics."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers import CAMPAIGN, PUBLISH_REQUEST
from tests.integration.serving import (
    Server,
    migrate,
    outbox,
    server_env,
    start_server,
    stop_server,
    user,
)

langgraph_sdk = pytest.importorskip("langgraph_sdk")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("sqlite-workers") / "data"
    # heartbeats every second: a cancel reaches the worker within about that
    env = server_env(None, data, RUN_LEASE_S="3")
    migrate(env)
    srv = start_server(env, data.parent / "server.log", workers=1)
    srv.dsn = str(data / "mkt.sqlite")
    try:
        yield srv
    except BaseException:
        print(srv.log())
        raise
    finally:
        stop_server(srv)


async def test_a_run_in_the_worker_streams_through_the_server_by_polling(server: Server) -> None:
    assert (
        "storage sqlite" in server.log() and "runs execute in 1 worker process(es)" in server.log()
    )
    (worker,) = server.workers()
    c = langgraph_sdk.get_client(url=server.url)
    tid = (await c.threads.create())["thread_id"]
    parts = [
        p
        async for p in c.runs.stream(
            tid, "supervisor", input=user(PUBLISH_REQUEST), stream_mode="updates"
        )
    ]
    assert parts[0].event == "metadata" and parts[-1].event == "end"
    assert not [p for p in parts if p.event == "error"], parts
    ids = [int(p.id) for p in parts]
    assert ids == sorted(set(ids))
    assert any("__interrupt__" in p.data for p in parts if p.event == "updates")
    assert (await c.threads.get(tid))["status"] == "interrupted"

    result = await c.runs.wait(tid, "supervisor", command={"resume": {"type": "accept"}})
    assert "__error__" not in result and "__interrupt__" not in result
    assert outbox(server.dsn, tid) == [("post-linkedin", 1)]
    runs = await c.runs.list(tid)
    assert [r["status"] for r in runs] == ["success", "interrupted"]

    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        metrics = (await http.get("/metrics")).text
    assert 'mkt_runs_total{status="success"} 1.0' in metrics.splitlines()  # run in the worker
    assert worker in server.workers()  # the same worker did it all


async def test_cancel_reaches_the_worker_at_its_next_heartbeat(server: Server) -> None:
    c = langgraph_sdk.get_client(url=server.url)
    tid = (await c.threads.create())["thread_id"]
    run = await c.runs.create(tid, "supervisor", input=user(CAMPAIGN))
    for _ in range(200):
        if (await c.runs.get(tid, run["run_id"]))["status"] == "running":
            break
        await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await c.runs.cancel(tid, run["run_id"], wait=True)
    assert time.monotonic() - t0 < 10
    assert (await c.runs.get(tid, run["run_id"]))["status"] == "interrupted"
    assert (await c.threads.get(tid))["status"] != "busy"


def test_an_idle_keep_alive_connection_outlives_the_clients_expiry(server: Server) -> None:
    """httpx (under the SDK) drops pooled connections idle for 5 s; uvicorn's own default closes
    them at 5 s too, and a request sent at that instant fails (a ReadError at 100 streams). The
    server keeps them `HTTP_KEEP_ALIVE_S` (65 s): one idle for 6 s still answers."""
    host, port = server.url.removeprefix("http://").split(":")
    request = f"GET /ok HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        for pause in (0.0, 6.0):
            time.sleep(pause)
            sock.sendall(request)
            head, body = _response(sock)
            assert head.startswith(b"HTTP/1.1 200") and body == b'{"ok":true}', (pause, head)


def _response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One whole HTTP/1.1 response (head, body) from `sock`; b"" head if the server closed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:  # closed mid-body
            break
        body += chunk
    return head, body
