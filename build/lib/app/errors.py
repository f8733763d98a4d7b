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


__all__ = [
    "AppError",
    "EmptyRequestError",
    "InvalidContextError",
    "InvalidResumeError",
    "NotInterruptedError",
    "PendingApprovalError",
    "ResumeValueError",
    "ThreadNotFoundError",
]
