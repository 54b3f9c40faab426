"""What a process-pool worker imports: the worker's setup and its entry points, stdlib only.

A pool worker unpickles each call by importing the module that defines the function it runs,
so everything a worker runs lives here or in `builtins` (which imports no third-party module
at its top): a worker starts at the interpreter's ~10 MB and imports numpy only when it runs
its first `matmul`, a `python:` handler's module only when it runs that handler. Importing
the daemon's modules (config -> pydantic, the adapters) here would cost every worker ~40 MB.
"""

from __future__ import annotations

import importlib
import inspect
import os
import select
import signal
import threading
import time
from typing import Any

PARENT_POLL_S = 1.0  # where pidfd is missing: how often a worker checks the daemon is alive


def init_worker(daemon_pid: int) -> None:
    """Pool initializer: ignore the group's stop signals and end with the daemon."""
    # Ctrl-C in a terminal and systemd's control-group kill signal every process of the
    # group; the daemon drains and shuts the pool down itself, so a worker that died on the
    # signal first would only turn that orderly stop into a BrokenProcessPool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    exit_with(daemon_pid)


def exit_with(daemon_pid: int) -> None:
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
            while alive(daemon_pid):
                time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="edgesched-daemon-watch", daemon=True).start()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (cannot be ours: pid reused)
        return False
    return True


def noop() -> int:
    """Starts a worker (the pool spawns one per call while it has fewer than its maximum)."""
    return os.getpid()


def call_python_handler(module: str, function: str, value: Any) -> Any:
    """Entry point of a cpu-bound `python:module:function`: import it here, then call it."""
    fn = getattr(importlib.import_module(module), function)
    result = fn(value)
    if inspect.isawaitable(result):
        import asyncio  # only for an async handler: asyncio costs a worker ~9 MB

        return asyncio.run(_await(result))
    return result


async def _await(awaitable: Any) -> Any:
    return await awaitable
