"""`langgraph dev` serves every graph in `langgraph.json`, and the supervisor runs end to end over
its HTTP API with the official `langgraph_sdk` client: approval interrupt, resume, and a plain
research + blog request, with the scripted model and no network beyond loopback.

The server runs as a subprocess from the repo root (where `langgraph.json` lives) with an explicit
environment, *without* `--allow-blocking`: langgraph dev's blockbuster turns synchronous I/O inside
async nodes into `BlockingError`, and this test is what catches it. Set
`LANGGRAPH_DEV_ALLOW_BLOCKING=1` only to diagnose (it adds `--allow-blocking`).

Note: the in-memory dev server persists its threads under `<repo>/.langgraph_api/` (gitignored);
the test removes that directory afterwards only if it did not exist before.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.local_llm import free_port
from tests.helpers import PUBLISH_REQUEST

langgraph_sdk = pytest.importorskip("langgraph_sdk")

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAPHS = {"supervisor", "research", "content", "social", "publishing"}
START_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 120.0

RESEARCH_REQUEST = (
    "Research what runners say about carbon-plated trail shoes and write a blog post about it"
)

# never inherited by the server: real backends, keys, or settings that change the run
_DROP_ENV = (
    "DATABASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "TAVILY_API_KEY",
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
    "LANGSMITH_ENDPOINT",
    "LANGCHAIN_ENDPOINT",
    "LANGGRAPH_ALLOW_BLOCKING",
    "MODEL_NAME",
    "AGENT_MODELS",
    "MODEL_FALLBACKS",
    "MKT_CRASH_AT",
)


def _langgraph_cli() -> str:
    exe = Path(sys.executable).parent / "langgraph"
    if exe.exists():
        return str(exe)
    found = shutil.which("langgraph")
    if found is None:
        pytest.skip("langgraph CLI not installed (pip install 'langgraph-cli[inmem]')")
    return found


@dataclass
class DevServer:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    def log(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return re.sub(r"\x1b\[[0-9;]*m", "", text)  # strip ANSI colours

    def blocking_errors(self) -> list[str]:
        """Each BlockingError in the log with the app frames (repo files outside .venv) above it."""
        found: list[str] = []
        lines = self.log().splitlines()
        for n, line in enumerate(lines):
            if not line.startswith("blockbuster.blockbuster.BlockingError"):
                continue
            frames = [
                f"{lines[i].strip()}  ->  {lines[i + 1].strip()}"
                for i in range(max(0, n - 80), n)
                if lines[i].lstrip().startswith(f'File "{REPO_ROOT}')
                and "/.venv/" not in lines[i]
                and i + 1 < n
            ]
            found.append(line.strip() + "\n    " + "\n    ".join(frames))
        return list(dict.fromkeys(found))

    def dump(self, why: str) -> None:
        print(f"\n===== langgraph dev server log ({why}) =====\n{self.log()}\n===== end =====")


def _server_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    env.update(
        MODEL_PROVIDER="scripted",
        DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
        # no phoning home: tracing, CLI analytics, PyPI version check
        LANGSMITH_TRACING="false",
        LANGCHAIN_TRACING_V2="false",
        LANGSMITH_TEST_TRACKING="false",
        LANGGRAPH_CLI_NO_ANALYTICS="1",
        LANGGRAPH_NO_VERSION_CHECK="1",
    )
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[DevServer]:
    assert (REPO_ROOT / "langgraph.json").is_file(), f"no langgraph.json in {REPO_ROOT}"
    port = free_port()
    data_dir = tmp_path / "data"
    log_path = tmp_path / "langgraph-dev.log"
    persist_dir = REPO_ROOT / ".langgraph_api"
    persist_existed = persist_dir.exists()
    cmd = [_langgraph_cli(), "dev", "--no-browser", "--no-reload", "--port", str(port)]
    if os.environ.get("LANGGRAPH_DEV_ALLOW_BLOCKING") == "1":
        cmd.append("--allow-blocking")
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=_server_env(data_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: terminate it as a whole
        )
    server = DevServer(f"http://127.0.0.1:{port}", proc, log_path, data_dir)
    try:
        deadline = started + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                server.dump(f"exited with code {proc.returncode} before /ok")
                pytest.fail(f"langgraph dev exited with code {proc.returncode} before /ok")
            try:
                if httpx.get(f"{server.url}/ok", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                server.dump(f"no /ok after {START_TIMEOUT_S:.0f}s")
                pytest.fail(f"langgraph dev did not answer /ok within {START_TIMEOUT_S:.0f}s")
            time.sleep(0.25)
        server.timings["startup"] = time.monotonic() - started
        yield server
    finally:
        _stop(proc)
        if not persist_existed:
            shutil.rmtree(persist_dir, ignore_errors=True)


async def _stream(client: Any, thread_id: str, **kwargs: Any) -> list[Any]:
    parts = []
    async for part in client.runs.stream(thread_id, "supervisor", stream_mode="updates", **kwargs):
        parts.append(part)
    return parts


def _check_no_errors(server: DevServer, parts: list[Any], what: str) -> None:
    errors = [p.data for p in parts if p.event == "error"]
    if errors:
        blocking = server.blocking_errors()
        detail = ("\nblocking calls:\n" + "\n".join(blocking)) if blocking else ""
        pytest.fail(f"{what}: run failed with {errors}{detail}")


def _updates(parts: list[Any]) -> list[dict[str, Any]]:
    return [p.data for p in parts if p.event == "updates" and isinstance(p.data, dict)]


def _last_ai(values: dict[str, Any]) -> dict[str, Any]:
    messages = values.get("messages") or []
    assert messages, "final state has no messages"
    last = messages[-1]
    assert last["type"] == "ai", f"last message is {last['type']}: {last}"
    assert str(last["content"]).strip(), "final AI message is empty"
    return last


async def test_langgraph_dev_serves_graphs_and_runs_supervisor(dev_server: DevServer) -> None:
    server = dev_server
    t = server.timings
    try:
        client = langgraph_sdk.get_client(url=server.url)

        # --- every graph in langgraph.json is loaded ---------------------------------------
        assistants = await client.assistants.search(limit=100)
        assert {a["graph_id"] for a in assistants} >= GRAPHS, assistants

        # --- publish request: stops at the approval interrupt ------------------------------
        thread = await client.threads.create()
        tid = thread["thread_id"]
        t0 = time.monotonic()
        parts = await _stream(
            client, tid, input={"messages": [{"role": "user", "content": PUBLISH_REQUEST}]}
        )
        t["run_to_interrupt"] = time.monotonic() - t0
        _check_no_errors(server, parts, "publish request")
        updates = _updates(parts)
        interrupts = [u["__interrupt__"] for u in updates if "__interrupt__" in u]
        assert interrupts, f"no __interrupt__ in the updates stream: {[list(u) for u in updates]}"
        request = interrupts[0][0]["value"][0]  # agent-inbox: a list of one HumanInterrupt
        assert request["action_request"]["action"] == "publish_post"
        assert request["action_request"]["args"]["channel"] == "linkedin"
        assert request["config"]["allow_accept"] is True
        assert (await client.threads.get(tid))["status"] == "interrupted"

        # --- accept: the item is written to the outbox and the supervisor answers ----------
        t0 = time.monotonic()
        parts = await _stream(client, tid, command={"resume": {"type": "accept"}})
        t["resume_to_end"] = time.monotonic() - t0
        _check_no_errors(server, parts, "resume after accept")
        assert not any("__interrupt__" in u for u in _updates(parts))
        assert (await client.threads.get(tid))["status"] == "idle"
        values = (await client.threads.get_state(tid))["values"]
        _last_ai(values)
        scheduled = values.get("scheduled") or []
        assert [(s["platform"], s["status"]) for s in scheduled] == [("linkedin", "scheduled")]
        db_file = server.data_dir / "mkt.sqlite"
        assert db_file.is_file(), f"DATA_DIR was not used: no {db_file}"
        with sqlite3.connect(db_file) as conn:
            rows = conn.execute("SELECT platform, thread_id FROM outbox").fetchall()
        assert rows == [("linkedin", tid)], rows

        # --- research + blog, no publishing: completes without an interrupt ---------------
        thread2 = await client.threads.create()
        tid2 = thread2["thread_id"]
        t0 = time.monotonic()
        parts = await _stream(
            client, tid2, input={"messages": [{"role": "user", "content": RESEARCH_REQUEST}]}
        )
        t["research_run"] = time.monotonic() - t0
        _check_no_errors(server, parts, "research + blog request")
        updates = _updates(parts)
        nodes = {node for u in updates for node in u}
        assert "__interrupt__" not in nodes
        assert {"research", "content", "answer"} <= nodes, nodes
        assert "publishing" not in nodes
        assert (await client.threads.get(tid2))["status"] == "idle"
        values2 = (await client.threads.get_state(tid2))["values"]
        _last_ai(values2)
        assert not values2.get("scheduled")

        # no BlockingError anywhere in the server log (e.g. one a retry policy recovered from)
        assert not server.blocking_errors(), "\n".join(server.blocking_errors())
    except BaseException:
        server.dump("test failed")
        raise
    finally:
        print("\nlanggraph dev timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
