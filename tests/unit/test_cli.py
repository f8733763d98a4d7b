"""The `mkt` command line, in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from app.cli import app
from tests.helpers import CAMPAIGN

cli = CliRunner()


def events(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_help_explains_the_commands() -> None:
    result = cli.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("chat", "threads", "outbox", "db"):
        assert word in result.output
    chat_help = cli.invoke(app, ["chat", "--help"])
    assert "--auto-approve" in chat_help.output and "--thread" in chat_help.output


def test_chat_auto_approve_json_runs_the_campaign_and_fills_the_outbox() -> None:
    result = cli.invoke(app, ["chat", "--auto-approve", "--json", CAMPAIGN])
    assert result.exit_code == 0, result.output
    evs = events(result.output)
    assert evs[0]["type"] == "info" and evs[0]["provider"] == "scripted"
    assert [e["type"] for e in evs].count("approval") == 3
    assert evs[-1]["type"] == "usage"
    tid = next(e["thread_id"] for e in evs if e["type"] == "run")
    out = cli.invoke(app, ["outbox", "--json", "--thread", str(tid)])
    items = json.loads(out.output)["items"]
    assert sorted(i["artifact_id"] for i in items) == ["blog", "post-linkedin", "post-x"]
    threads = json.loads(cli.invoke(app, ["threads", "--json"]).output)
    assert [(t["thread_id"], t["status"]) for t in threads] == [(tid, "idle")]


def test_pending_approval_is_answered_with_resume_json() -> None:
    first = cli.invoke(
        app, ["chat", "--json", "Write an X post for our TerraRun shoe and publish it Tuesday 9am"]
    )
    assert first.exit_code == 0
    evs = events(first.output)
    assert [e["type"] for e in evs][-2:] == ["approval", "usage"]
    assert "final" not in [e["type"] for e in evs]
    tid = str(next(e["thread_id"] for e in evs if e["type"] == "run"))
    bad = cli.invoke(app, ["chat", "--thread", tid, "--resume", '{"type": "edit"}'])
    assert bad.exit_code == 2 and "needs args" in bad.output
    done = cli.invoke(app, ["chat", "--json", "--thread", tid, "--resume", '{"type": "accept"}'])
    assert done.exit_code == 0
    assert [e["type"] for e in events(done.output)][-2:] == ["final", "usage"]


def test_bad_input_exits_2_with_a_message() -> None:
    empty = cli.invoke(app, ["chat", "  "])
    assert empty.exit_code == 2 and "empty" in empty.output
    bad_platform = cli.invoke(app, ["chat", "-p", "myspace", "Write a post for TerraRun"])
    assert (
        bad_platform.exit_code == 2
        and "unknown platform; known platforms: x" in bad_platform.output
    )
    bad_json = cli.invoke(app, ["chat", "--thread", "t", "--resume", "{nope"])
    assert bad_json.exit_code == 2 and "not valid JSON" in bad_json.output
    not_waiting = cli.invoke(
        app, ["chat", "--thread", "unknown-thread", "--resume", '{"type": "accept"}']
    )
    assert not_waiting.exit_code == 2 and "does not exist" in not_waiting.output


def test_publish_due_marks_immediate_items_published() -> None:
    result = cli.invoke(
        app,
        [
            "chat",
            "--auto-approve",
            "--json",
            "Write an X post for our TerraRun shoe and publish it",
        ],
    )
    assert result.exit_code == 0
    out = json.loads(cli.invoke(app, ["outbox", "--json", "--publish-due"]).output)
    assert [i["status"] for i in out["items"]] == ["published"]
    assert len(out["published_now"]) == 1
    again = json.loads(cli.invoke(app, ["outbox", "--json", "--publish-due"]).output)
    assert again["published_now"] == []


def test_a_new_request_on_a_thread_waits_for_its_pending_approval() -> None:
    first = cli.invoke(
        app, ["chat", "--json", "Write an X post for our TerraRun shoe and publish it Tuesday 9am"]
    )
    tid = str(next(e["thread_id"] for e in events(first.output) if e["type"] == "run"))
    second = cli.invoke(
        app, ["chat", "--json", "--auto-approve", "--thread", tid, "now the same for LinkedIn"]
    )
    assert second.exit_code == 0, second.output
    kinds = [e["type"] for e in events(second.output)]
    # the pending approval is answered first, then the new turn runs
    assert kinds.index("final") < kinds.index("plan")
    plan = next(e for e in events(second.output) if e["type"] == "plan")
    assert [s["id"] for s in plan["steps"]] == ["post-linkedin"]
    items = json.loads(cli.invoke(app, ["outbox", "--json", "--thread", tid]).output)["items"]
    assert [i["artifact_id"] for i in items] == ["post-x"]


def test_a_clarifying_question_is_shown_to_the_person() -> None:
    """A clarify answer is not streamed as tokens: the terminal view prints it whole."""
    result = cli.invoke(app, ["chat", "Write something"])
    assert result.exit_code == 0, result.output
    as_json = events(cli.invoke(app, ["chat", "--json", "Write something"]).output)
    question = next(e["text"] for e in as_json if e["type"] == "final")
    assert "?" in question
    first_line = str(question).splitlines()[0]
    assert first_line.strip() and first_line.strip()[:40] in " ".join(result.output.split())


def test_an_invalid_setting_is_named_without_a_traceback(tmp_path: Path) -> None:
    """A setting out of range (here ops settings of `mkt worker`, which `mkt serve` also starts)
    stops the command with exit code 2 and one line naming each variable — not a traceback of
    pydantic's internals with the rejected values in it."""
    env = {
        **os.environ,
        "DATA_DIR": str(tmp_path / "data"),
        "RUN_LEASE_S": "0",
        "EVENT_RETENTION_HOURS": "-1",
        "DB_POOL_MAX_SIZE": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "validation error" not in done.stderr
    assert done.stderr.startswith("error: invalid settings"), done.stderr
    for name in ("RUN_LEASE_S", "EVENT_RETENTION_HOURS", "DB_POOL_MAX_SIZE"):
        assert name in done.stderr, done.stderr
