"""Errors the app reports to users (CLI exit code 2, HTTP 4xx later). Each names the fix."""

from __future__ import annotations

from graphs.schemas import InvalidResumeError


class AppError(Exception):
    """Base for user-facing errors."""

    status = 400


class EmptyRequestError(AppError):
    status = 422

    def __init__(self) -> None:
        super().__init__("the request is empty: say what the team should do")


class InvalidContextError(AppError):
    status = 422


class ThreadNotFoundError(AppError):
    status = 404

    def __init__(self, thread_id: str) -> None:
        super().__init__(f"thread {thread_id!r} does not exist (see `mkt threads`)")


class NotInterruptedError(AppError):
    status = 409

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"thread {thread_id!r} is not waiting for an approval, so there is nothing to resume"
        )


class PendingApprovalError(AppError):
    status = 409

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"thread {thread_id} is waiting for an approval: answer it first "
            f"(mkt chat --thread {thread_id})"
        )


class ResumeValueError(AppError):
    status = 422


class StaleApprovalError(AppError):
    """An answer meant for an approval that is no longer the pending one (answered already: a
    retried or repeated request), which must not answer the next item unseen."""

    status = 409

    def __init__(self, thread_id: str, answered: str, pending: str) -> None:
        super().__init__(
            f"approval {answered!r} on thread {thread_id!r} was already answered; the thread now "
            f"waits for approval {pending!r}: read it (GET /threads/{thread_id}/state) and "
            "answer that one"
        )


__all__ = [
    "AppError",
    "EmptyRequestError",
    "InvalidContextError",
    "InvalidResumeError",
    "NotInterruptedError",
    "PendingApprovalError",
    "ResumeValueError",
    "StaleApprovalError",
    "ThreadNotFoundError",
]
