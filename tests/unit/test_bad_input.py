"""Bad input at the boundary: a clear, typed error, and the thread's state exactly as before."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import (
    EmptyRequestError,
    InvalidContextError,
    NotInterruptedError,
    PendingApprovalError,
    ResumeValueError,
    ThreadNotFoundError,
)
from app.runner import Runner
from tests.helpers import drain


async def checkpoint_id(runner: Runner, tid: str) -> Any:
    snap = await runner.graph.aget_state(runner.config(tid))  # type: ignore[arg-type]
    return snap.config["configurable"].get("checkpoint_id"), snap.values


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
async def test_empty_request_is_refused_before_anything_runs(runner: Runner, text: str) -> None:
    with pytest.raises(EmptyRequestError, match="empty"):
        await drain(runner.send(None, text))
    assert await runner.storage.db.list_threads() == []


async def test_unknown_platform_in_context_names_the_known_ones(runner: Runner) -> None:
    with pytest.raises(
        InvalidContextError, match=r"platforms: .*unknown platform.*x, linkedin"
    ) as err:
        await drain(
            runner.send(None, "Write a post for our TerraRun shoe", {"platforms": ["tiktok"]})
        )
    assert "tiktok" not in str(err.value)  # the rejected value is not echoed
    with pytest.raises(InvalidContextError, match="brand_colour"):
        await drain(
            runner.send(None, "Write a post for our TerraRun shoe", {"brand_colour": "red"})
        )
    with pytest.raises(InvalidContextError, match="time zone"):
        await drain(
            runner.send(None, "Write a post for our TerraRun shoe", {"timezone": "Mars/Base"})
        )
    assert await runner.storage.db.list_threads() == []


async def test_resume_on_a_thread_that_is_not_interrupted(runner: Runner) -> None:
    with pytest.raises(ThreadNotFoundError):
        await drain(runner.resume("no-such-thread", {"type": "accept"}))
    events = await drain(runner.send(None, "Write a blog post about our TerraRun shoe"))
    tid = events[0]["thread_id"]
    before = await checkpoint_id(runner, tid)
    with pytest.raises(NotInterruptedError, match="not waiting for an approval"):
        await drain(runner.resume(tid, {"type": "accept"}))
    assert await checkpoint_id(runner, tid) == before


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"type": "edit"}, "'edit' needs args"),
        ({"type": "edit", "args": {}}, "non-empty 'body'"),
        ({"type": "respond", "args": ""}, "respond"),
        ({"type": "approve"}, "unknown response type 'approve'"),
        (None, "expected a response"),
        ([], "list of 0"),
        ({"type": "edit", "args": {"body": "word " * 100}}, "breaks the platform rules"),
    ],
)
async def test_malformed_resume_is_refused_and_the_interrupt_stays_pending(
    runner: Runner, value: Any, message: str
) -> None:
    events = await drain(
        runner.send(None, "Write an X post for our TerraRun shoe and publish it Tuesday 9am")
    )
    tid = events[0]["thread_id"]
    before = await checkpoint_id(runner, tid)
    view = await runner.view(tid)
    assert view.status == "interrupted"
    with pytest.raises(ResumeValueError, match=message):
        await drain(runner.resume(tid, value))
    assert await checkpoint_id(runner, tid) == before
    after = await runner.view(tid)
    assert after.status == "interrupted" and after.interrupts == view.interrupts
    assert await runner.storage.db.list_outbox(thread_id=tid) == []


async def test_new_request_while_an_approval_is_pending_is_refused(runner: Runner) -> None:
    events = await drain(
        runner.send(None, "Write an X post for our TerraRun shoe and publish it Tuesday 9am")
    )
    tid = events[0]["thread_id"]
    before = await checkpoint_id(runner, tid)
    with pytest.raises(PendingApprovalError, match="waiting for an approval"):
        await drain(runner.send(tid, "something else"))
    assert await checkpoint_id(runner, tid) == before
