"""Task types built from config: only configured, enabled types ever run on a node.

A handler is `builtin:NAME`, `python:module:function` (sync or async) or `command` (an argv
list run without a shell: input JSON on stdin, result JSON on stdout, killed on timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from edgesched.config import TaskTypeSettings, handler_base_environment
from edgesched.errors import (
    ConfigError,
    EdgeschedError,
    HandlerError,
    InvalidTaskError,
    UnknownTaskTypeError,
)
from edgesched.tasks import builtins
from edgesched.tasks.worker import call_python_handler

log = logging.getLogger("edgesched.tasks")

MAX_COMMAND_OUTPUT_BYTES = 16 << 20  # documented in docs/tasks.md
STDERR_TAIL_CHARS = 400
STDERR_KEEP_BYTES = 4096
STREAM_CHUNK_BYTES = 64 << 10


class Handler(Protocol):
    """What runs one task type: validates an input, then computes a JSON-able result."""

    def validate(self, value: Any) -> Any: ...

    async def run(self, value: Any, *, pool: Executor | None) -> Any: ...


@dataclass(frozen=True, kw_only=True)
class TaskType:
    """One configured task type: its settings (offload policy, priors, timeout) and handler."""

    name: str
    settings: TaskTypeSettings
    handler: Handler

    @property
    def builtin(self) -> str | None:
        kind, _, rest = self.settings.handler.partition(":")
        return rest if kind == "builtin" else None

    def work(self, value: Any, input_bytes: float) -> float:
        """The size the exec-time estimator is linear in (see builtins.work_units)."""
        name = self.builtin
        units = builtins.work_units(name, value) if name else None
        return input_bytes if units is None else units

    def exact_seconds(self, value: Any) -> float | None:
        name = self.builtin
        return builtins.exact_seconds(name, value) if name else None


class BuiltinHandler:
    """One of the four built-ins; CPU-bound ones run in the process pool when one is given."""

    def __init__(self, name: str, *, cpu_bound: bool) -> None:
        self.name = name
        self.cpu_bound = cpu_bound
        self._validate = builtins.VALIDATORS[name]

    def validate(self, value: Any) -> Any:
        return self._validate(value)

    async def run(self, value: Any, *, pool: Executor | None) -> Any:
        if self.name == "sleep":
            return await builtins.run_sleep(value)
        if self.cpu_bound and pool is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(pool, builtins.run_builtin_sync, self.name, value)
        return builtins.run_builtin_sync(self.name, value)


class PythonHandler:
    """`python:module:function`, imported once at start so a typo is a config error."""

    def __init__(self, target: str, *, cpu_bound: bool) -> None:
        self.module, _, self.function = target.partition(":")
        self.cpu_bound = cpu_bound
        self.fn: Callable[[Any], Any] = getattr(importlib.import_module(self.module), self.function)
        if not callable(self.fn):
            raise TypeError(f"{target} is not callable")
        self.is_async = inspect.iscoroutinefunction(self.fn)

    def validate(self, value: Any) -> Any:
        return value  # the handler owns its input checks; InvalidTaskError -> rejected

    async def run(self, value: Any, *, pool: Executor | None) -> Any:
        loop = asyncio.get_running_loop()
        try:
            if self.cpu_bound and pool is not None:
                return await loop.run_in_executor(
                    pool, call_python_handler, self.module, self.function, value
                )
            if self.is_async:
                return await self.fn(value)
            # A sync handler may block; a thread keeps the event loop responsive.
            return await asyncio.to_thread(self.fn, value)
        except (EdgeschedError, asyncio.CancelledError, BrokenProcessPool):
            raise  # the executor handles a dead pool worker
        except Exception as exc:
            raise HandlerError(f"{self.module}:{self.function} raised {exc!r}") from exc


class CommandHandler:
    """An argv list run without a shell: input JSON on stdin, result JSON on stdout.

    The child gets a clean environment (`env`: PATH, LANG and the type's own `env` map, never
    the daemon's credentials or settings) and its own session; stdout is read to EOF up to
    `max_output` bytes (past it the child is killed and the task fails), stderr is drained and
    only its tail kept for the error message.
    """

    def __init__(self, argv: tuple[str, ...], *, env: Mapping[str, str] | None = None,
                 max_output: int = MAX_COMMAND_OUTPUT_BYTES) -> None:
        self.argv = argv
        self.env = dict(handler_base_environment() if env is None else env)
        self.max_output = max_output

    def validate(self, value: Any) -> Any:
        return value

    async def run(self, value: Any, *, pool: Executor | None) -> Any:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, env=self.env,
                limit=STREAM_CHUNK_BYTES,
            )
        except OSError as exc:
            raise HandlerError(f"cannot start {self.argv[0]!r}: {exc.strerror}") from exc
        try:
            stdout, stderr = await self._exchange(proc, json.dumps(value).encode())
        except BaseException:
            # Timeout, shutdown or too much output: the command must not outlive its task.
            _kill_group(proc)
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
            raise
        return self._result(proc.returncode, stdout, stderr)

    async def _exchange(self, proc: asyncio.subprocess.Process, data: bytes) -> tuple[bytes, bytes]:
        assert proc.stdin and proc.stdout and proc.stderr
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

        async def feed() -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                stdin.write(data)
                await stdin.drain()
                stdin.close()

        async def read_all() -> bytes | None:
            out = bytearray()
            while chunk := await stdout.read(STREAM_CHUNK_BYTES):
                out += chunk
                if len(out) > self.max_output:
                    _kill_group(proc)  # closes its pipes: feed() and the stderr reader end
                    return None
            return bytes(out)

        async def tail_of_stderr() -> bytes:
            tail = b""
            while chunk := await stderr.read(STREAM_CHUNK_BYTES):
                tail = (tail + chunk)[-STDERR_KEEP_BYTES:]
            return tail

        _, out, err = await asyncio.gather(feed(), read_all(), tail_of_stderr())
        await proc.wait()
        if out is None:
            raise HandlerError(
                f"{self.argv[0]} wrote more than {self.max_output} bytes to stdout (the limit "
                "of a command handler's output, see docs/tasks.md); it was killed")
        return out, err

    def _result(self, code: int | None, stdout: bytes, stderr: bytes) -> Any:
        name = self.argv[0]
        tail = stderr.decode("utf-8", "replace").strip()[-STDERR_TAIL_CHARS:]
        if code != 0:
            raise HandlerError(f"{name} exited with status {code}" + (f": {tail}" if tail else ""))
        try:
            return json.loads(stdout)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HandlerError(f"{name} did not write one JSON document to stdout: {exc}") from None


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def build_handler(settings: TaskTypeSettings) -> Handler:
    kind, _, rest = settings.handler.partition(":")
    if kind == "builtin":
        return BuiltinHandler(rest, cpu_bound=settings.cpu_bound)
    if kind == "python":
        return PythonHandler(rest, cpu_bound=settings.cpu_bound)
    assert settings.command  # config validation guarantees a non-empty argv
    return CommandHandler(settings.command, env={**handler_base_environment(), **settings.env})


class TaskRegistry:
    """The task types this node will run: built from config, enabled types only."""

    def __init__(self, types: Mapping[str, TaskType]) -> None:
        self._types = dict(types)

    @classmethod
    def from_settings(cls, task_types: Mapping[str, TaskTypeSettings]) -> TaskRegistry:
        """Raises ConfigError naming each handler that cannot be loaded."""
        types: dict[str, TaskType] = {}
        problems: list[tuple[str, str]] = []
        for name, spec in task_types.items():
            if not spec.enabled:
                continue
            try:
                types[name] = TaskType(name=name, settings=spec, handler=build_handler(spec))
            except (ImportError, AttributeError, TypeError) as exc:
                problems.append((f"task_types.{name}.handler", f"cannot load handler: {exc}"))
        if problems:
            raise ConfigError(problems)
        return cls(types)

    def names(self) -> frozenset[str]:
        return frozenset(self._types)

    def get(self, name: str) -> TaskType:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownTaskTypeError(
                f"task type {name!r} is not configured on this node"
            ) from None

    def validate(self, name: str, value: Any) -> Any:
        """The checked (normalised) input for type `name`; raises InvalidTaskError/Unknown..."""
        task_type = self.get(name)
        try:
            return task_type.handler.validate(value)
        except InvalidTaskError:
            raise
        except (TypeError, ValueError) as exc:
            raise InvalidTaskError(f"{name}: {exc}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Any:
        return iter(self._types.values())
