"""Durability: `kill -9` a real `mkt chat` process mid-run, run the same command again, and the
thread ends exactly like an uninterrupted run, with every outbox item written exactly once.

Runs on SQLite (the embedded default) and on PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.helpers import CAMPAIGN

pytestmark = pytest.mark.integration

MKT = [sys.executable, "-m", "app.cli"]


@pytest.fixture(params=["sqlite", "postgres"])
def backend_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "MKT_CRASH_AT", "OPENAI_API_KEY")
    }
    env.update(MODEL_PROVIDER="scripted", DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    if request.param == "postgres":
        env["DATABASE_URL"] = request.getfixturevalue("pg_dsn")
        subprocess.run(
            [*MKT, "db", "migrate"], env=env, check=True, capture_output=True, timeout=120
        )
    return env


def chat(
    env: dict[str, str], thread: str, *, crash_at: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    run_env = dict(env)
    if crash_at:
        run_env["MKT_CRASH_AT"] = crash_at
    return subprocess.run(
        [*MKT, "chat", "--auto-approve", "--json", "--thread", thread, CAMPAIGN],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_on_event(env: dict[str, str], thread: str, event_type: str, step: str) -> int:
    """Start `mkt chat` and SIGKILL it as soon as it reports `event_type` for `step`."""
    proc = subprocess.Popen(
        [*MKT, "chat", "--auto-approve", "--json", "--thread", thread, CAMPAIGN],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event["type"] == event_type and event.get("step") == step:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=30)
    return proc.returncode


def final_state(env: dict[str, str], thread: str) -> dict[str, Any]:
    code = (
        "import asyncio, json, sys\n"
        "from app.bootstrap import open_runner\n"
        "async def main():\n"
        "    async with open_runner() as r:\n"
        "        v = await r.view(sys.argv[1])\n"
        "        rows = await r.storage.db.list_outbox(thread_id=sys.argv[1])\n"
        "        arts = {k: [a['version'], a['body'], a['status']] for k, a in v.values['artifacts'].items()}\n"
        "        print(json.dumps({'status': v.status, 'artifacts': arts, 'trace': v.values['trace'],\n"
        "            'answer': v.values['messages'][-1].content, 'turn': v.values['turn'],\n"
        "            'outbox': [[o['artifact_id'], o['version'], o['status'], o['scheduled_at']] for o in rows]}))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, thread],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def comparable(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "answer"}


@pytest.mark.parametrize(
    ("how", "where"),
    [
        ("kill", ("agent_start", "blog")),  # mid-superstep: research done, copy in flight
        ("kill", ("agent_done", "post-linkedin")),  # just after parallel steps report back
        ("crash_point", "after_outbox_write"),  # worst case: row written, checkpoint not
    ],
)
def test_kill_9_then_same_command_resumes_to_the_same_result(
    backend_env: dict[str, str], how: str, where: Any
) -> None:
    # the uninterrupted run gets its own DATA_DIR (and so its own knowledge base): approvals are
    # remembered, and the learning loop would rightly show its approved outputs to the next run
    base_env = {**backend_env, "DATA_DIR": str(Path(backend_env["DATA_DIR"]).parent / "base")}
    baseline_thread = f"base-{uuid.uuid4().hex[:8]}"
    done = chat(base_env, baseline_thread)
    assert done.returncode == 0, done.stderr
    baseline = final_state(base_env, baseline_thread)
    assert baseline["status"] == "idle"
    assert sorted(o[0] for o in baseline["outbox"]) == ["blog", "post-linkedin", "post-x"]

    thread = f"crash-{uuid.uuid4().hex[:8]}"
    if how == "kill":
        code = kill_on_event(backend_env, thread, *where)
    else:
        code = chat(backend_env, thread, crash_at=where).returncode
    assert code == -signal.SIGKILL

    again = chat(backend_env, thread)
    assert again.returncode == 0, again.stderr
    events = [json.loads(x) for x in again.stdout.splitlines() if x.startswith("{")]
    assert events[-1]["type"] == "usage"

    crashed = final_state(backend_env, thread)
    assert comparable(crashed) == comparable(baseline)
    # every item exactly once in the outbox, scheduled for the same time
    assert sorted(o[0] for o in crashed["outbox"]) == ["blog", "post-linkedin", "post-x"]

    # running the same command once more changes nothing
    third = chat(backend_env, thread)
    assert third.returncode == 0
    assert comparable(final_state(backend_env, thread)) == comparable(baseline)


def test_postgres_without_migration_names_the_fix(pg_dsn: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MKT_CRASH_AT"}
    env.update(MODEL_PROVIDER="scripted", DATA_DIR=str(tmp_path / "d"), DATABASE_URL=pg_dsn)
    out = subprocess.run(
        [*MKT, "chat", "Write a blog post about TerraRun"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "mkt db migrate" in out.stderr
    assert "postgres@" not in out.stderr  # the DSN is described, not echoed
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('outbox')").fetchone() == (None,)
