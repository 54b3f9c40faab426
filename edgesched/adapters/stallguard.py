"""Event-loop stall guard: the process exits non-zero when its event loop stops turning.

Under systemd the watchdog (`WatchdogSec=`, pinged from the loop) restarts a stalled daemon. In a
container there is often nobody acting on "unhealthy", so without systemd's watchdog this guard
does it: an async loop stamps a monotonic heartbeat, and a *thread* checks the stamp. The check
must live outside the loop — a blocked loop cannot notice that it is blocked. Past the limit the
thread logs where the main thread is stuck and ends the process with `os._exit`, because nothing
else can run: raising in the loop is impossible while it is blocked, and a clean shutdown would
need the very loop that is stuck. The broker's Last Will marks the node offline; the container's
restart policy (or any supervisor) starts it again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from edgesched.config import ProcessEnvironment, read_process_environment

if TYPE_CHECKING:
    from edgesched.adapters.metrics import Metrics
    from edgesched.config import Settings

log = logging.getLogger("edgesched.stallguard")

# contract §1: 1 is a runtime failure. The log line says it was a stall.
STALL_EXIT_CODE = 1
_LOG_GRACE_S = 2.0


def systemd_watchdog_in_charge(env: ProcessEnvironment, pid: int | None = None) -> bool:
    """Whether systemd's watchdog supervises this process (then the guard stands down)."""
    if env.notify_socket is None or not env.watchdog_usec or env.watchdog_usec <= 0:
        return False
    return env.watchdog_pid is None or env.watchdog_pid == (pid or os.getpid())


def _exit_process(age_s: float) -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(STALL_EXIT_CODE)


class StallGuard:
    """Async context manager: heartbeat loop in the event loop, checker in a daemon thread.

    `on_stall(age_s)` runs in the checker thread once the heartbeat is older than `limit_s`;
    the default ends the process with exit code 1. Disabled, only the heartbeat runs (it feeds
    `edgesched_event_loop_lag_seconds`); nothing checks it.
    """

    def __init__(
        self,
        limit_s: float,
        *,
        enabled: bool = True,
        metrics: Metrics | None = None,
        on_stall: Callable[[float], None] = _exit_process,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not limit_s > 0:
            raise ValueError("limit_s must be positive")
        self.limit_s = limit_s
        self.enabled = enabled
        # A healthy loop beats ~10 times per limit, so a stall is seen within ~1.1 x limit.
        self.period_s = min(1.0, limit_s / 10)
        self._metrics = metrics
        self._on_stall = on_stall
        self._clock = clock
        self._beat = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._group: asyncio.TaskGroup | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._main_thread_id = threading.get_ident()

    async def __aenter__(self) -> StallGuard:
        self._beat = self._clock()
        self._main_thread_id = threading.get_ident()
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        # The heartbeat also measures loop lag for the metric, so it runs even when disabled.
        self._heartbeat = self._group.create_task(
            self._heartbeat_loop(), name="edgesched.stallguard.heartbeat_loop"
        )
        if self.enabled:
            self._thread = threading.Thread(
                target=self._watch, name="edgesched-stallguard", daemon=True
            )
            self._thread.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._group is None:
            return
        # Stop the checker first: shutdown may legitimately take a while.
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self._group.__aexit__(exc_type, exc, tb)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    async def _heartbeat_loop(self) -> None:
        while True:
            before = self._clock()
            await asyncio.sleep(self.period_s)
            now = self._clock()
            self._beat = now
            if self._metrics is not None:
                self._metrics.event_loop_lag.observe(max(0.0, now - before - self.period_s))

    def _watch(self) -> None:
        check_every = min(0.5, self.period_s)
        while not self._stop.wait(check_every):
            age = self._clock() - self._beat
            if age > self.limit_s:
                if self._stop.is_set():
                    return  # shutting down: the loop is busy closing, not stalled
                if self._on_stall is _exit_process:
                    # If logging hangs (its lock held by the stuck thread, a full stderr
                    # pipe), the process still ends.
                    timer = threading.Timer(_LOG_GRACE_S, os._exit, (STALL_EXIT_CODE,))
                    timer.daemon = True
                    timer.start()
                self._report(age)
                self._on_stall(age)
                return

    def _report(self, age: float) -> None:
        frame = sys._current_frames().get(self._main_thread_id)
        where = "".join(traceback.format_stack(frame)[-6:]) if frame else "(unknown)\n"
        log.critical(
            "event loop stalled for %.1f s (limit watchdog.stall_limit_s=%g s) and no systemd "
            "watchdog is in charge: exiting with code %d so a supervisor restarts the node. "
            "The main thread is at:\n%s",
            age, self.limit_s, STALL_EXIT_CODE, where.rstrip(),
        )


def stall_guard_for(
    settings: Settings,
    *,
    metrics: Metrics | None = None,
    env: ProcessEnvironment | None = None,
) -> StallGuard:
    """The stall guard of a node: active unless systemd's watchdog supervises the process."""
    process_env = env if env is not None else read_process_environment()
    systemd = systemd_watchdog_in_charge(process_env)
    limit = settings.watchdog.stall_limit_s
    if systemd:
        log.info("stall guard off: systemd's watchdog (WATCHDOG_USEC) supervises this process")
    else:
        log.info("stall guard on: the process exits if its event loop stalls over %g s", limit)
    return StallGuard(limit, enabled=not systemd, metrics=metrics)
