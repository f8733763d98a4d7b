"""`mkt serve --workers N`: the server starts N `mkt worker` processes, relays their output,
restarts any that dies, and stops them on shutdown.

Graphs are CPU-bound Python; in the server's own event loop they delay every request and stream
(time to first event grows with load). In worker processes the kernel shares the CPU between them
and the server, so the server answers at once whatever the workers are doing.

Each worker runs in its own session (a Ctrl-C in the terminal reaches only the server, which then
stops its workers gracefully), watches its parent and stops by itself if the server is killed.
A worker that dies is restarted (after 0.25 s, doubling up to 30 s while it keeps dying within
`STABLE_S` of its start; a shutdown does not wait for that back-off); the runs it held are taken
up again from their last checkpoint by the next worker's sweep (immediately: its process is known
to be gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.server import metrics
from app.server.worker import READY


class WorkerStartError(RuntimeError):
    """A worker process exited (or never got ready) while the server was starting."""


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))


class WorkerPool:
    RESTART_DELAY_S = 0.25
    MAX_RESTART_DELAY_S = 30.0
    STABLE_S = 30.0  # a worker that lived this long is restarted at once when it dies

    def __init__(
        self,
        count: int,
        *,
        grace_s: float,
        start_timeout_s: float = 180.0,
        command: Sequence[str] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        if count < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.count = count
        self.grace_s = grace_s
        self.start_timeout_s = start_timeout_s
        self.command = list(
            command or [sys.executable, "-m", "app.cli", "worker", "--parent-pid", str(os.getpid())]
        )
        self._say = say
        self._slots: list[_Slot] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._stop_requested = asyncio.Event()  # ends a restart's back-off at once

    @property
    def pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.returncode is None]

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self._slots)

    async def start(self) -> None:
        """Start every worker and wait until each is ready (raises `WorkerStartError` with the
        worker's output when one fails to start)."""
        self._slots = [_Slot(i) for i in range(self.count)]
        self._tasks = [
            asyncio.create_task(self._keep(slot), name=f"worker-slot:{slot.index}")
            for slot in self._slots
        ]
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await asyncio.gather(*(s.ready for s in self._slots))
        except (WorkerStartError, TimeoutError) as exc:
            await self.stop()
            if isinstance(exc, WorkerStartError):
                raise
            raise WorkerStartError(
                f"a worker did not get ready within {self.start_timeout_s:.0f} s"
            ) from None

    async def _keep(self, slot: _Slot) -> None:
        delay = self.RESTART_DELAY_S
        while not self._stopping:
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    limit=1 << 20,
                )
            except OSError as exc:
                if not slot.ready.done():
                    slot.ready.set_exception(WorkerStartError(f"cannot start a worker: {exc}"))
                    return
                self._say(f"cannot start a worker ({exc}); retrying in {delay:.2f} s")
                await self._back_off(delay)
                delay = min(delay * 2, self.MAX_RESTART_DELAY_S)
                continue
            slot.proc = proc
            if self._stopping:  # stop() began while this one was being started
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            await self._relay(slot, proc)
            code = await proc.wait()
            metrics.process_dead(proc.pid)  # its active runs and streams no longer count
            if self._stopping:
                return
            if not slot.ready.done():
                output = "".join(slot.tail).rstrip()
                slot.ready.set_exception(
                    WorkerStartError(f"worker {proc.pid} {describe_exit(code)}:\n{output}")
                )
                return
            lived = time.monotonic() - started
            delay = (
                self.RESTART_DELAY_S
                if lived >= self.STABLE_S
                else min(delay * 2, self.MAX_RESTART_DELAY_S)
            )
            slot.restarts += 1
            self._say(f"worker {proc.pid} {describe_exit(code)}; restarting it in {delay:.2f} s")
            await self._back_off(delay)

    async def _back_off(self, delay: float) -> None:
        """Wait `delay` before a restart, or until `stop()` (a worker that keeps dying does not
        hold up the shutdown for its back-off, up to `MAX_RESTART_DELAY_S`)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop_requested.wait()

    async def _relay(self, slot: _Slot, proc: asyncio.subprocess.Process) -> None:
        """Copy the worker's output to ours; notice its ready line."""
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            slot.tail.append(line)
            with contextlib.suppress(OSError):
                sys.stdout.write(line)
                sys.stdout.flush()
            if READY in line and not slot.ready.done():
                slot.ready.set_result(None)

    async def stop(self) -> None:
        """SIGTERM every worker (each gives its active runs the grace period, then releases
        them), SIGKILL those still running `grace_s + 10` s later."""
        self._stopping = True
        self._stop_requested.set()
        for slot in self._slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGTERM)
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=self.grace_s + 10)
        if pending:
            for slot in self._slots:
                if slot.proc is not None and slot.proc.returncode is None:
                    self._say(f"worker {slot.proc.pid} did not stop in time: killing it")
                    with contextlib.suppress(ProcessLookupError):
                        slot.proc.kill()
            await asyncio.wait(pending, timeout=10)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self._slots:
            if not slot.ready.done():
                slot.ready.cancel()
