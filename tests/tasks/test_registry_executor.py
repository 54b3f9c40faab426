"""Task registry from config and the local executor: handlers, slots, queue, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from edgesched.adapters.executor import DeadlineExpiredError, LocalExecutor, QueueFullError
from edgesched.config import ExecutorSettings, TaskTypeSettings, load_settings
from edgesched.core.queueing import remaining_s
from edgesched.errors import (
    ConfigError,
    HandlerError,
    InvalidTaskError,
    TaskTimeoutError,
    UnknownTaskTypeError,
)
from edgesched.tasks.builtins import hash_digest
from edgesched.tasks.registry import TaskRegistry

FIXTURE = "tests.tasks.handlers_fixture"


def registry(**types: dict[str, Any]) -> TaskRegistry:
    settings = load_settings(task_types=types)
    return TaskRegistry.from_settings(settings.task_types)


def test_only_enabled_types_are_registered() -> None:
    reg = registry(sleep={"enabled": False})
    assert reg.names() == {"echo", "hash", "matmul"}
    with pytest.raises(UnknownTaskTypeError, match="'sleep' is not configured"):
        reg.get("sleep")


def test_unloadable_python_handler_is_a_config_error() -> None:
    spec = {"nope": TaskTypeSettings(handler="python:tests.tasks.missing_mod:f")}
    with pytest.raises(ConfigError) as info:
        TaskRegistry.from_settings(spec)
    assert info.value.problems[0][0] == "task_types.nope.handler"


def test_validation_goes_through_the_builtin() -> None:
    reg = registry()
    with pytest.raises(InvalidTaskError, match="rounds"):
        reg.validate("hash", {"data": "x", "rounds": "3"})


@pytest.fixture
async def executor() -> Any:
    async with LocalExecutor(ExecutorSettings(slots=2, queue_size=2, process_workers=1)) as ex:
        yield ex


async def test_cpu_bound_hash_runs_in_the_pool(executor: LocalExecutor) -> None:
    reg = registry()
    value = reg.validate("hash", {"data": "abc", "rounds": 5000})
    out = await executor.run(reg.get("hash"), value, expected_s=0.01)
    assert out.value == {"digest": hash_digest("abc", 5000)}
    assert out.exec_s > 0 and out.wait_s >= 0


@pytest.mark.parametrize("function", ["double", "async_double"])
async def test_python_handlers_sync_and_async(executor: LocalExecutor, function: str) -> None:
    reg = registry(py={"handler": f"python:{FIXTURE}:{function}"})
    out = await executor.run(reg.get("py"), {"x": 21}, expected_s=0.0)
    assert out.value == {"doubled": 42}


async def test_cpu_bound_python_handler_in_pool(executor: LocalExecutor) -> None:
    reg = registry(py={"handler": f"python:{FIXTURE}:double", "cpu_bound": True})
    out = await executor.run(reg.get("py"), {"x": 4}, expected_s=0.0)
    assert out.value == {"doubled": 8}


async def test_python_handler_errors(executor: LocalExecutor) -> None:
    reg = registry(boom={"handler": f"python:{FIXTURE}:boom"},
                   picky={"handler": f"python:{FIXTURE}:picky"},
                   bad={"handler": f"python:{FIXTURE}:not_json"})
    with pytest.raises(HandlerError, match="boom"):
        await executor.run(reg.get("boom"), {}, expected_s=0.0)
    with pytest.raises(InvalidTaskError, match="odd"):
        await executor.run(reg.get("picky"), {}, expected_s=0.0)
    with pytest.raises(HandlerError, match="not JSON"):
        await executor.run(reg.get("bad"), {}, expected_s=0.0)


def _command(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_command_handler_reads_stdin_writes_stdout(executor: LocalExecutor) -> None:
    code = "import json,sys; d=json.load(sys.stdin); print(json.dumps({'n': d['n'] + 1}))"
    reg = registry(cmd={"handler": "command", "command": _command(code)})
    out = await executor.run(reg.get("cmd"), {"n": 1}, expected_s=0.0)
    assert out.value == {"n": 2}


async def test_command_nonzero_exit_and_bad_output(executor: LocalExecutor) -> None:
    reg = registry(
        fail={"handler": "command",
              "command": _command("import sys; sys.stderr.write('no way'); sys.exit(3)")},
        junk={"handler": "command", "command": _command("print('not json')")},
        missing={"handler": "command", "command": ["/nonexistent/binary"]},
    )
    with pytest.raises(HandlerError, match="status 3: no way"):
        await executor.run(reg.get("fail"), {}, expected_s=0.0)
    with pytest.raises(HandlerError, match="JSON"):
        await executor.run(reg.get("junk"), {}, expected_s=0.0)
    with pytest.raises(HandlerError, match="cannot start"):
        await executor.run(reg.get("missing"), {}, expected_s=0.0)


async def test_command_is_killed_on_timeout(executor: LocalExecutor, tmp_path: Any) -> None:
    marker = tmp_path / "pid"
    code = f"import os,time; open({str(marker)!r},'w').write(str(os.getpid())); time.sleep(30)"
    reg = registry(slow={"handler": "command", "command": _command(code), "timeout_s": 0.5})
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=r"0\.5s timeout"):
        await executor.run(reg.get("slow"), {}, expected_s=0.0)
    assert time.monotonic() - started < 5
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


async def test_slots_queue_and_queue_full(executor: LocalExecutor) -> None:
    reg = registry()
    sleep = reg.get("sleep")
    value = {"seconds": 0.3}
    runs = [asyncio.create_task(executor.run(sleep, value, expected_s=0.3)) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert (executor.running, executor.queued) == (2, 2)
    # two running with ~0.25 s left, two queued 0.3 s each: a newcomer waits ~0.55 s
    assert executor.estimated_wait() == pytest.approx(0.55, abs=0.05)
    assert not executor.has_room()
    with pytest.raises(QueueFullError, match="queue full"):
        await executor.run(sleep, value, expected_s=0.3)
    outs = await asyncio.wait_for(asyncio.gather(*runs), timeout=5)
    assert sorted(round(o.wait_s, 1) for o in outs) == [0.0, 0.0, 0.3, 0.3]
    assert (executor.running, executor.queued) == (0, 0)


async def test_deadline_expires_while_queued(executor: LocalExecutor) -> None:
    reg = registry()
    sleep = reg.get("sleep")
    blockers = [asyncio.create_task(executor.run(sleep, {"seconds": 0.4}, expected_s=0.4))
                for _ in range(2)]
    await asyncio.sleep(0.02)
    with pytest.raises(DeadlineExpiredError, match="deadline passed"):
        await executor.run(sleep, {"seconds": 0.1}, expected_s=0.1,
                           deadline=time.monotonic() + 0.1)
    assert executor.queued == 0
    await asyncio.wait_for(asyncio.gather(*blockers), timeout=5)


async def test_priority_jumps_the_queue(executor: LocalExecutor) -> None:
    reg = registry()
    sleep = reg.get("sleep")
    order: list[str] = []

    async def job(name: str, priority: int) -> None:
        await executor.run(sleep, {"seconds": 0.05}, expected_s=0.05, priority=priority)
        order.append(name)

    async with asyncio.timeout(5):
        async with asyncio.TaskGroup() as tg:
            for i in range(2):
                tg.create_task(job(f"blocker{i}", 0))
            await asyncio.sleep(0.01)
            tg.create_task(job("low", 0))
            await asyncio.sleep(0.001)
            tg.create_task(job("high", 5))
    assert order.index("high") < order.index("low")


async def test_a_dead_worker_fails_its_task_and_the_pool_recovers(
        executor: LocalExecutor) -> None:
    reg = registry(die={"handler": f"python:{FIXTURE}:die", "cpu_bound": True})
    with pytest.raises(HandlerError, match="worker process died"):
        await executor.run(reg.get("die"), {}, expected_s=0.0)
    value = reg.validate("hash", {"data": "ok", "rounds": 3})
    out = await executor.run(reg.get("hash"), value, expected_s=0.0)
    assert out.value == {"digest": hash_digest("ok", 3)}


_POOL_OWNER = """
import asyncio, sys
from edgesched.adapters.executor import LocalExecutor
from edgesched.config import ExecutorSettings, load_settings
from edgesched.tasks.registry import TaskRegistry

async def main():
    hash_type = TaskRegistry.from_settings(load_settings().task_types).get("hash")
    async with LocalExecutor(ExecutorSettings(slots=2, process_workers=2)) as ex:
        # the pool starts with the first cpu-bound task; two at once start both workers
        await asyncio.gather(*(ex.run(hash_type, {"data": "x", "rounds": 300000},
                                      expected_s=0.1) for _ in range(2)))
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: forkserver, then its pool workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _gone(pids: set[int]) -> bool:
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    return False
        except OSError:
            continue
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_and_forkserver_exit_when_the_daemon_is_killed() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _POOL_OWNER], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        below = _descendants(proc.pid)
        assert len(below) >= 3, below  # the forkserver and two workers
    finally:
        proc.kill()  # SIGKILL: no pool shutdown runs
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10.0
    while not _gone(below) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = {pid for pid in below if not _gone({pid})}
    for pid in leftover:  # do not leave them behind even when the assertion fails
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not leftover, f"orphaned pool processes: {sorted(leftover)}"


async def test_command_environment_is_clean_and_output_is_read_to_the_end(
        executor: LocalExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/edgesched.service")
    monkeypatch.setenv("EDGESCHED_MQTT__HOST", "broker")
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    big = ("import sys; sys.stdout.write('\"' + 'x' * (3 << 20) + '\"'); "
           "sys.stderr.write('e' * 200000)")
    reg = registry(env={"handler": "command", "command": _command(dump), "env": {"MODE": "a"}},
                   big={"handler": "command", "command": _command(big)},
                   small={"handler": "command", "command": _command(big), "timeout_s": 10})
    env = (await executor.run(reg.get("env"), None, expected_s=0.0)).value
    assert "CREDENTIALS_DIRECTORY" not in env and "EDGESCHED_MQTT__HOST" not in env
    assert env["MODE"] == "a" and env["PATH"] == os.environ["PATH"]
    out = await executor.run(reg.get("big"), None, expected_s=0.0)  # 3 MiB + 200 kB stderr
    assert len(out.value) == 3 << 20
    handler = reg.get("small").handler
    handler.max_output = 1 << 20  # type: ignore[attr-defined]
    started = time.monotonic()
    with pytest.raises(HandlerError, match=r"more than 1048576 bytes to stdout.*killed"):
        await executor.run(reg.get("small"), None, expected_s=0.0)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("name", ["CREDENTIALS_DIRECTORY", "EDGESCHED_MQTT__PASSWORD_FILE",
                                  "NOTIFY_SOCKET", "1BAD", "A-B"])
def test_command_env_names_are_checked(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(task_types={"c": {"handler": "command", "command": ["true"],
                                        "env": {name: "x"}}})
    assert info.value.problems[0][0] == "task_types.c.env"


async def test_an_overdue_task_with_a_spread_is_not_counted_as_about_to_finish(
        executor: LocalExecutor) -> None:
    """Both slots run a task expected to take 0.1 s that has run 0.3 s: with no spread the
    executor took both as finishing now (wait 0); with the cv-2 spread its estimators give a
    heavy-tailed type, each is more likely a long one and has ~0.3 s left (core/queueing)."""
    reg = registry()
    sleep = reg.get("sleep")
    value = {"seconds": 0.6}
    plain = [asyncio.create_task(executor.run(sleep, value, expected_s=0.1)) for _ in range(2)]
    await asyncio.sleep(0.3)
    assert executor.estimated_wait() == 0.0
    await asyncio.wait_for(asyncio.gather(*plain), timeout=5)
    spread = [asyncio.create_task(executor.run(sleep, value, expected_s=0.1,
                                               expected_std_s=0.2)) for _ in range(2)]
    await asyncio.sleep(0.3)
    assert executor.estimated_wait() == pytest.approx(
        remaining_s(0.1, 0.2, 0.3), rel=0.1)
    assert executor.estimated_wait() > 0.2
    await asyncio.wait_for(asyncio.gather(*spread), timeout=5)
