"""Run `mkt serve` as a real process for integration tests (scripted model, Postgres)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from app.local_llm import free_port

MKT = [sys.executable, "-m", "app.cli"]
START_TIMEOUT_S = 60.0


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    dsn: str = ""

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def workers(self) -> list[int]:
        """Pids of the live `mkt worker` processes this server started (its children)."""
        return children(self.proc.pid)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        # fields[0] = state, fields[1] = ppid; zombies do not count
        if int(fields[1]) == pid and fields[0] != "Z" and b"worker" in cmdline:
            found.append(int(stat.parent.name))
    return sorted(found)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def server_env(dsn: str | None, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a test server: Postgres at `dsn`, or SQLite in `data_dir` (None)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "MKT_CRASH_AT",
            "MKT_CRASH_ONCE",
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "DATABASE_URL",
        )
        and not k.startswith("SERVE_")
    }
    if dsn:
        env["DATABASE_URL"] = dsn
    env.update(
        MODEL_PROVIDER="scripted",
        DATA_DIR=str(data_dir),
        PYTHONUNBUFFERED="1",
        LANGSMITH_TRACING="false",
        SCRIPTED_LATENCY_MS="50",  # keeps runs in flight long enough to cancel or kill
        RUN_SWEEP_INTERVAL_S="1",
    )
    env.update(extra)  # a test's own settings win
    return env


def start_server(
    env: dict[str, str], log_path: Path, port: int | None = None, *, workers: int | None = None
) -> Server:
    port = port or free_port()
    cmd = [*MKT, "serve", "--port", str(port)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log_path, env.get("DATABASE_URL", ""))
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mkt serve exited ({proc.returncode}):\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/ok", timeout=1.0).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(server)
    pytest.fail(f"mkt serve did not answer /ok:\n{server.log()}")


def stop_server(server: Server) -> None:
    if server.proc.poll() is None:
        os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)


def migrate(env: dict[str, str]) -> None:
    subprocess.run([*MKT, "db", "migrate"], env=env, check=True, capture_output=True, timeout=120)


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def outbox(dsn: str, thread_id: str) -> list[tuple[str, int]]:
    """The thread's outbox items: `dsn` is a Postgres DSN or the path of a `.sqlite` file."""
    sql = "SELECT artifact_id, version FROM outbox WHERE thread_id = ? ORDER BY artifact_id"
    if dsn.endswith(".sqlite"):
        with sqlite3.connect(dsn) as lite:
            rows = lite.execute(sql, (thread_id,)).fetchall()
    else:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(sql.replace("?", "%s"), (thread_id,)).fetchall()
    return [(r[0], r[1]) for r in rows]


def channel_blobs(dsn: str, thread_id: str) -> set[tuple[str, str, str]]:
    """The (namespace, channel, version) of every stored channel value of a thread (Postgres
    checkpointer)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT checkpoint_ns, channel, version FROM checkpoint_blobs WHERE thread_id = %s",
            (thread_id,),
        ).fetchall()
    return {(r[0], r[1], r[2]) for r in rows}


def run_row(dsn: str, run_id: str) -> dict[str, Any]:
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        row = conn.execute("SELECT * FROM runs WHERE run_id = %s", (run_id,)).fetchone()
    assert row is not None, run_id
    return dict(row)
