"""Local executor: bounded slots, a bounded priority queue, per-task timeouts, a process pool.

The executor is the node's only place where task handlers run. It knows its own load
(running, queued, predicted wait) and exposes it to telemetry and to admission control.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from edgesched.config import ExecutorSettings
from edgesched.core.queueing import fifo_wait
from edgesched.errors import (
    DeadlineExpiredError,
    HandlerError,
    QueueFullError,
    TaskError,
    TaskTimeoutError,
)
from edgesched.tasks.registry import TaskType

log = logging.getLogger("edgesched.executor")

POOL_SHUTDOWN_GRACE_S = 2.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecOutcome:
    """A finished local execution: the JSON-able result and where the time went."""

    value: Any
    wait_s: float
    exec_s: float


def _warm_worker(daemon_pid: int) -> None:
    # Ctrl-C in a terminal and systemd's control-group kill signal every process of the
    # group; the daemon drains and shuts the pool down itself, so a worker that died on the
    # signal first would only turn that orderly stop into a BrokenProcessPool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with(daemon_pid)
    # Import the heavy modules once per worker, not on the first task.
    import edgesched.tasks.builtins  # noqa: F401


PARENT_POLL_S = 1.0  # where pidfd is missing: how often a worker checks the daemon is alive


def _exit_with(daemon_pid: int) -> None:
    """End this worker when the daemon process is gone without shutting the pool down
    (SIGKILL, the OOM killer). A pool worker would otherwise wait on its call queue forever
    (it holds that pipe's write end itself), ignoring SIGTERM as above, and keep the
    forkserver alive with it: three orphans per killed daemon."""

    def watch() -> None:
        try:
            fd: int | None = os.pidfd_open(daemon_pid)  # Linux >= 5.3: readable on exit
        except (AttributeError, OSError):  # other systems, or the daemon is already gone
            fd = None
        if fd is not None:
            select.select([fd], [], [])
        else:
            while _alive(daemon_pid):
                time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="edgesched-daemon-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (cannot be ours: pid reused)
        return False
    return True


def _noop() -> None:
    return None


@dataclass(eq=False)
class _Ticket:
    expected_s: float
    priority: int
    seq: int
    waiter: asyncio.Future[None] | None = None
    started: float | None = None

    def __lt__(self, other: _Ticket) -> bool:  # heap order: higher priority, then FIFO
        return (-self.priority, self.seq) < (-other.priority, other.seq)


class LocalExecutor:
    """Runs tasks of the registry on this node; an async context manager owning the pool."""

    def __init__(
        self,
        settings: ExecutorSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        use_process_pool: bool = True,
    ) -> None:
        self.slots = settings.slots
        self.queue_size = settings.queue_size
        self._workers = settings.process_workers or settings.slots
        self._clock = clock
        self._use_pool = use_process_pool
        self._pool: ProcessPoolExecutor | None = None
        self._running: set[_Ticket] = set()
        self._queue: list[_Ticket] = []  # heap of waiting tickets (cancelled ones skipped)
        self._queued = 0
        self._seq = itertools.count()

    async def __aenter__(self) -> LocalExecutor:
        if self._use_pool:
            self._pool = self._new_pool()
            loop = asyncio.get_running_loop()
            # Start every worker now so the first CPU-bound task does not pay for it.
            await asyncio.gather(
                *(loop.run_in_executor(self._pool, _noop) for _ in range(self._workers))
            )
        return self

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["edgesched.tasks.builtins"])
        return ProcessPoolExecutor(max_workers=self._workers, mp_context=ctx,
                                   initializer=_warm_worker, initargs=(os.getpid(),))

    def _replace_broken_pool(self, broken: ProcessPoolExecutor | None) -> None:
        """A worker died (crash, OOM kill): the pool refuses all work from then on, so the
        tasks it held fail and a fresh pool takes the next ones."""
        if broken is None or self._pool is not broken:
            return  # already replaced by a sibling task
        log.warning("a process-pool worker died; starting a new pool")
        broken.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    async def __aexit__(self, *exc: object) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        # A worker stuck in a long handler must not hold up shutdown past the grace period.
        await asyncio.to_thread(_join_or_kill, processes, POOL_SHUTDOWN_GRACE_S)

    # -- load ---------------------------------------------------------------------------------

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return self._queued

    def estimated_wait(self, now: float | None = None) -> float:
        """Predicted queueing delay of a task arriving now (FIFO over expected run times)."""
        if len(self._running) < self.slots and self._queued == 0:
            return 0.0
        now = self._clock() if now is None else now
        return fifo_wait(
            self.slots, [t.expected_s - (now - (t.started or now)) for t in self._running],
            [t.expected_s for t in sorted(self._queue) if t.waiter and not t.waiter.done()],
        )

    def has_room(self) -> bool:
        return len(self._running) < self.slots or self._queued < self.queue_size

    # -- slots --------------------------------------------------------------------------------

    async def _acquire(self, ticket: _Ticket) -> None:
        if len(self._running) < self.slots and self._queued == 0:
            self._start(ticket)
            return
        if self._queued >= self.queue_size:
            raise QueueFullError(
                f"queue full ({self._queued} waiting for {self.slots} slots)"
            )
        ticket.waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, ticket)
        self._queued += 1
        try:
            await ticket.waiter
        except BaseException:
            if ticket in self._running:  # woken and cancelled in the same tick
                self._release(ticket)
            else:
                self._queued -= 1
                ticket.waiter.cancel()
            raise

    def _start(self, ticket: _Ticket) -> None:
        ticket.started = self._clock()
        self._running.add(ticket)

    def _release(self, ticket: _Ticket) -> None:
        self._running.discard(ticket)
        while self._queue and len(self._running) < self.slots:
            nxt = heapq.heappop(self._queue)
            if nxt.waiter is None or nxt.waiter.done():
                continue  # cancelled while waiting; already uncounted
            self._queued -= 1
            self._start(nxt)
            nxt.waiter.set_result(None)

    # -- running ------------------------------------------------------------------------------

    async def run(
        self,
        task_type: TaskType,
        value: Any,
        *,
        expected_s: float,
        priority: int = 0,
        deadline: float | None = None,
    ) -> ExecOutcome:
        """Queue, then run `value` (already validated) on `task_type`'s handler.

        `deadline` is an absolute time on this executor's clock. Raises QueueFullError,
        DeadlineExpiredError, TaskTimeoutError (the type's timeout) or HandlerError.
        """
        ticket = _Ticket(expected_s=max(0.0, expected_s), priority=priority, seq=next(self._seq))
        queued_at = self._clock()
        budget = None if deadline is None else deadline - queued_at
        try:
            async with asyncio.timeout(budget):
                await self._acquire(ticket)
                try:
                    started = self._clock()
                    value = await self._execute(task_type, value)
                    finished = self._clock()
                finally:
                    self._release(ticket)
        except TimeoutError:
            raise DeadlineExpiredError(
                f"deadline passed after {self._clock() - queued_at:.3f}s on this node"
            ) from None
        return ExecOutcome(value=value, wait_s=started - queued_at, exec_s=finished - started)

    async def _execute(self, task_type: TaskType, value: Any) -> Any:
        limit = task_type.settings.timeout_s
        pool = self._pool
        try:
            async with asyncio.timeout(limit):
                result = await task_type.handler.run(value, pool=pool)
        except TimeoutError:
            raise TaskTimeoutError(f"{task_type.name} ran past its {limit:g}s timeout") from None
        except TaskError:
            raise
        except BrokenProcessPool as exc:
            self._replace_broken_pool(pool)
            raise HandlerError(f"{task_type.name}: its worker process died ({exc})") from exc
        except Exception as exc:  # a handler bug must fail its task, never the node
            raise HandlerError(f"{task_type.name} handler failed: {exc!r}") from exc
        _check_json(task_type.name, result)
        return result


def _join_or_kill(processes: list[Any], grace_s: float) -> None:
    deadline = time.monotonic() + grace_s
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def _check_json(name: str, result: Any) -> None:
    try:
        json.dumps(result, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HandlerError(f"{name} returned a result that is not JSON: {exc}") from None

