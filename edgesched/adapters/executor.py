"""Local executor: bounded slots, a bounded priority queue, per-task timeouts, a process pool.

The executor is the node's only place where task handlers run. It knows its own load
(running, queued, predicted wait) and exposes it to telemetry and to admission control.

The process pool (for `cpu_bound` task types) starts with the first cpu-bound task, so a node
that never runs one never starts it: no forkserver, no resource tracker, no workers. It has
`executor.process_workers` workers (default min(slots, CPU count): more processes than cores
only add memory), all started then.
Workers come from a forkserver that preloads only `edgesched.tasks.worker` (stdlib), and
import what a handler needs when they first run it (docs/scaling.md, "Capacity and
footprint").
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from edgesched.adapters.procstat import ProcessUsage, read_process_usage
from edgesched.config import ExecutorSettings
from edgesched.core.queueing import fifo_wait, remaining_s
from edgesched.errors import (
    DeadlineExpiredError,
    HandlerError,
    QueueFullError,
    TaskError,
    TaskTimeoutError,
)
from edgesched.tasks import worker
from edgesched.tasks.registry import TaskType

log = logging.getLogger("edgesched.executor")

POOL_SHUTDOWN_GRACE_S = 2.0
POOL_START_TIMEOUT_S = 30.0  # forkserver + first worker; ~0.1 s on an idle 2-core box


def default_process_workers(slots: int) -> int:
    """`executor.process_workers` when unset: one worker per slot, at most one per CPU."""
    return max(1, min(slots, os.cpu_count() or 1))


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecOutcome:
    """A finished local execution: the JSON-able result and where the time went."""

    value: Any
    wait_s: float
    exec_s: float


@dataclass(eq=False)
class _Ticket:
    expected_s: float
    priority: int
    seq: int
    expected_std_s: float = 0.0
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
        self._workers = settings.process_workers or default_process_workers(settings.slots)
        self._clock = clock
        self._use_pool = use_process_pool
        self._pool: ProcessPoolExecutor | None = None
        self._starting: asyncio.Future[ProcessPoolExecutor] | None = None
        self._closed = False
        # CPU seconds of pool processes already gone (a replaced pool, a dead worker), so
        # `pool_usage().cpu_seconds` never goes down; last reading by pid of the live ones.
        self._cpu_of_gone = 0.0
        self._cpu_by_pid: dict[int, float] = {}
        self._running: set[_Ticket] = set()
        self._queue: list[_Ticket] = []  # heap of waiting tickets (cancelled ones skipped)
        self._queued = 0
        self._seq = itertools.count()

    async def __aenter__(self) -> LocalExecutor:
        return self  # the pool starts with the first cpu-bound task (_pool_for)

    @property
    def process_workers(self) -> int:
        """The most worker processes the pool will have."""
        return self._workers

    async def _pool_for(self, task_type: TaskType) -> ProcessPoolExecutor | None:
        """The pool a cpu-bound type runs in, started on first use; None for other types."""
        if not (self._use_pool and task_type.settings.cpu_bound):
            return None
        if self._pool is not None:
            return self._pool
        if self._closed:
            raise HandlerError(f"{task_type.name}: the node is stopping its process pool")
        if self._starting is None:
            # Off the event loop (the forkserver's start takes ~0.1 s, more under load), and
            # owned by the executor, not by this task: a task cancelled meanwhile (deadline)
            # leaves the start to finish and the pool to the next one.
            self._starting = asyncio.ensure_future(asyncio.to_thread(self._start_pool))
            self._starting.add_done_callback(self._pool_started)
        try:
            return await asyncio.shield(self._starting)
        except (OSError, RuntimeError, TimeoutError) as exc:
            raise HandlerError(f"{task_type.name}: cannot start the process pool: {exc}") from exc

    def _pool_started(self, starting: asyncio.Future[ProcessPoolExecutor]) -> None:
        if starting.cancelled() or starting.exception() is not None:
            self._starting = None  # the next cpu-bound task tries again
            return
        self._pool = starting.result()

    def _start_pool(self) -> ProcessPoolExecutor:
        pool = self._new_pool()
        try:
            # Every worker at once (a call per worker, as none is idle yet), so that no task
            # pays for a worker's start in its measured run time.
            for started in [pool.submit(worker.noop) for _ in range(self._workers)]:
                started.result(timeout=POOL_START_TIMEOUT_S)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        log.info("process pool started (up to %d workers)", self._workers)
        return pool

    def _new_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["edgesched.tasks.worker"])
        return ProcessPoolExecutor(max_workers=self._workers, mp_context=ctx,
                                   initializer=worker.init_worker, initargs=(os.getpid(),))

    def pool_pids(self) -> list[int]:
        """The pool's live worker processes (none before the first cpu-bound task)."""
        pool = self._pool
        processes = (getattr(pool, "_processes", None) or {}) if pool is not None else {}
        return [pid for pid, proc in list(processes.items()) if proc.is_alive()]

    def pool_usage(self) -> ProcessUsage:
        """Workers, their summed RSS and their CPU seconds so far (gone ones included)."""
        rss = 0
        seen: dict[int, float] = {}
        for pid in self.pool_pids():
            usage = read_process_usage(pid)
            if usage is not None:
                rss += usage.rss_bytes
                seen[pid] = usage.cpu_seconds
        for pid, cpu in self._cpu_by_pid.items():
            if pid not in seen:
                self._cpu_of_gone += cpu
        self._cpu_by_pid = seen
        return ProcessUsage(processes=len(seen), rss_bytes=rss,
                            cpu_seconds=self._cpu_of_gone + sum(seen.values()))

    def _replace_broken_pool(self, broken: ProcessPoolExecutor | None) -> None:
        """A worker died (crash, OOM kill): the pool refuses all work from then on, so the
        tasks it held fail and a fresh pool takes the next ones."""
        if broken is None or self._pool is not broken:
            return  # already replaced by a sibling task
        log.warning("a process-pool worker died; starting a new pool")
        broken.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        if self._starting is not None and not self._starting.done():
            with contextlib.suppress(Exception):  # a pool still starting is shut down too
                await asyncio.shield(self._starting)
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
        """Predicted queueing delay of a task arriving now: FIFO over the expected run times,
        a running task's by what it has left given how long it has run (`remaining_s`: one
        far past its expected time is likely a long one, not about to finish)."""
        if len(self._running) < self.slots and self._queued == 0:
            return 0.0
        now = self._clock() if now is None else now
        return fifo_wait(
            self.slots, [remaining_s(t.expected_s, t.expected_std_s, now - (t.started or now))
                         for t in self._running],
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
        expected_std_s: float = 0.0,
        priority: int = 0,
        deadline: float | None = None,
    ) -> ExecOutcome:
        """Queue, then run `value` (already validated) on `task_type`'s handler.

        `expected_s` and `expected_std_s`: its run time as this node expects it (mean and
        spread, for `estimated_wait`). `deadline` is an absolute time on this executor's
        clock. Raises QueueFullError, DeadlineExpiredError, TaskTimeoutError (the type's
        timeout) or HandlerError.
        """
        ticket = _Ticket(expected_s=max(0.0, expected_s),
                         expected_std_s=max(0.0, expected_std_s), priority=priority,
                         seq=next(self._seq))
        queued_at = self._clock()
        budget = None if deadline is None else deadline - queued_at
        try:
            async with asyncio.timeout(budget):
                await self._acquire(ticket)
                try:
                    # the pool's start (first cpu-bound task) is waiting, not this task's run:
                    # the execution-time estimates learn from exec_s
                    pool = await self._pool_for(task_type)
                    started = self._clock()
                    value = await self._execute(task_type, value, pool)
                    finished = self._clock()
                finally:
                    self._release(ticket)
        except TimeoutError:
            raise DeadlineExpiredError(
                f"deadline passed after {self._clock() - queued_at:.3f}s on this node"
            ) from None
        return ExecOutcome(value=value, wait_s=started - queued_at, exec_s=finished - started)

    async def _execute(self, task_type: TaskType, value: Any,
                       pool: ProcessPoolExecutor | None) -> Any:
        limit = task_type.settings.timeout_s
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

