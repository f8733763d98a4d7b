"""Run leases, shared by the CLI and the server's workers.

A running run row names its owner (`host:pid:nonce`, host being the host's name and its PID
namespace) and holds a lease that the owner renews by heartbeat. A run is stale when its lease
expired, or at once when its owner was a process on this host, in this PID namespace, that no
longer exists (so a server restarted after `kill -9` recovers without waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

from app.db import DB_ERRORS, AppDB, ThreadBusyError, utcnow
from app.errors import AppError
from app.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def _pid_namespace() -> str:
    """This process's PID namespace (Linux; "" elsewhere). Containers with host networking share
    the host's name but not its pids: an owner is judged by its pid only in its own namespace."""
    try:
        return f"/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


# where a run's owner runs: the host's name and, on Linux, the PID namespace
HOST = socket.gethostname() + _pid_namespace()


class ThreadBusyAppError(AppError):
    status = 409

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"thread {thread_id} has a run in progress: wait for it to finish, cancel it, or "
            "send with multitask_strategy enqueue/interrupt/rollback"
        )


def new_owner() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_dead(owner: str | None) -> bool:
    """True only when we know: the owner ran on this host and its process is gone."""
    if not owner:
        return False
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid = parts[0], int(parts[1])
    return host == HOST and not _pid_alive(pid)


def lease_expired(run: dict[str, Any], now: datetime) -> bool:
    until = run.get("lease_expires_at")
    if not until:
        return True
    return datetime.fromisoformat(str(until)) < now


def is_stale(run: dict[str, Any], now: datetime | None = None) -> bool:
    return owner_is_dead(run.get("lease_owner")) or lease_expired(run, now or utcnow())


def lease_until(lease_s: float) -> datetime:
    return utcnow() + timedelta(seconds=lease_s)


async def start_run_with_lease(
    db: AppDB, run_id: str, thread_id: str, provider: str, owner: str, lease_s: float
) -> None:
    """Start a run now (the CLI): a stale running run of a dead process on the thread is closed
    first (its work continues from the last checkpoint in this run); a live one is a 409."""
    for _ in range(2):
        try:
            await db.start_run_now(run_id, thread_id, provider, owner, lease_until(lease_s))
            return
        except ThreadBusyError:
            current = await db.running_run(thread_id)
            if current is not None and not is_stale(current):
                raise ThreadBusyAppError(thread_id) from None
            if current is not None:
                await db.finish_run(
                    current["run_id"],
                    "error",
                    current.get("usage") or {},
                    f"the process running it stopped; continued by run {run_id}",
                    owner=current["lease_owner"],
                )
    raise ThreadBusyAppError(thread_id)


@contextlib.asynccontextmanager
async def keep_lease(
    db: AppDB,
    run_id: str,
    owner: str,
    lease_s: float,
    on_cancel: Callable[[str], None],
    on_lost: Callable[[], None],
) -> AsyncIterator[None]:
    """Renew the lease every third of `lease_s` while the block runs; a cancel requested in the
    database calls `on_cancel(action)`, a lease taken over calls `on_lost()`."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                result = await db.renew_lease(run_id, owner, lease_until(lease_s))
            except DB_ERRORS as exc:  # the next beat retries; the lease outlasts two misses
                log.warning("renewing the lease of run %s failed: %s", run_id, exc)
                continue
            if result is False:
                on_lost()
                return
            if isinstance(result, str):
                on_cancel(result)
                return

    task = asyncio.create_task(beat(), name=f"lease:{run_id}")
    try:
        yield
    finally:
        await cancel_and_wait(task)
