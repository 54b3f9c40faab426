"""The executor's process pool: started lazily, sized min(slots, CPUs), light workers, usage."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from edgesched.adapters.executor import LocalExecutor, default_process_workers
from edgesched.adapters.metrics import Metrics
from edgesched.config import ExecutorSettings, load_settings
from edgesched.errors import HandlerError
from edgesched.tasks.builtins import hash_digest
from edgesched.tasks.registry import TaskRegistry

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def registry(**types: dict[str, Any]) -> TaskRegistry:
    return TaskRegistry.from_settings(load_settings(task_types=types).task_types)


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # children of every thread
        try:
            found = (task / "children").read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for child in found:
            out += [int(child), *descendants(int(child))]
    return out


def mapped(pid: int, needle: str) -> bool:
    """Whether a file whose path contains `needle` is mapped into `pid` (an imported C
    extension: numpy's, pydantic_core's)."""
    return needle in Path(f"/proc/{pid}/maps").read_text()


def test_default_workers_are_one_per_slot_at_most_one_per_cpu() -> None:
    cpus = os.cpu_count() or 1
    assert default_process_workers(1) == 1
    assert default_process_workers(16) == min(16, cpus)
    assert LocalExecutor(ExecutorSettings(slots=16)).process_workers == min(16, cpus)
    assert LocalExecutor(ExecutorSettings(slots=16, process_workers=3)).process_workers == 3


async def test_no_pool_until_a_cpu_bound_task_then_light_workers() -> None:
    reg = registry()
    before = set(descendants(os.getpid()))  # a forkserver an earlier test started stays
    async with LocalExecutor(ExecutorSettings(slots=2, process_workers=2)) as ex:
        for name, value in (("echo", {"a": 1}), ("sleep", {"seconds": 0.0})):
            await ex.run(reg.get(name), reg.validate(name, value), expected_s=0.0)
        assert set(descendants(os.getpid())) == before, "no process before a cpu-bound task"
        assert ex.pool_usage().processes == 0

        out = await ex.run(reg.get("hash"), {"data": "a", "rounds": 5}, expected_s=0.0)
        assert out.value == {"digest": hash_digest("a", 5)}
        # the pool's start counts as this first task's wait, not in its run time (learned)
        assert out.wait_s > out.exec_s, out
        pids = ex.pool_pids()
        assert len(pids) == 2, pids  # every worker started with the pool
        for pid in pids:  # neither numpy nor the daemon's own modules (pydantic) loaded
            assert not mapped(pid, "numpy") and not mapped(pid, "pydantic_core")
        usage = ex.pool_usage()
        assert usage.processes == 2 and 8 << 20 < usage.rss_bytes < 80 << 20, usage

        out = await ex.run(reg.get("matmul"), {"n": 8, "seed": 1}, expected_s=0.0)
        assert isinstance(out.value["trace"], float)
        assert any(mapped(p, "numpy") for p in ex.pool_pids()), "matmul imports numpy"


async def test_pool_cpu_seconds_survive_a_replaced_pool() -> None:
    reg = registry(die={"handler": "python:tests.tasks.handlers_fixture:die", "cpu_bound": True})
    async with LocalExecutor(ExecutorSettings(slots=1, process_workers=1)) as ex:
        await ex.run(reg.get("hash"), {"data": "a", "rounds": 400_000}, expected_s=0.0)
        before = ex.pool_usage()
        assert before.cpu_seconds > 0.05, before  # ~0.2 s of hashing
        with pytest.raises(HandlerError, match="worker process died"):
            await ex.run(reg.get("die"), {}, expected_s=0.0)
        await ex.run(reg.get("hash"), {"data": "a", "rounds": 3}, expected_s=0.0)
        after = ex.pool_usage()
        assert after.processes == 1 and after.cpu_seconds >= before.cpu_seconds


async def test_a_stopped_executor_starts_no_pool() -> None:
    reg = registry()
    before = set(descendants(os.getpid()))
    ex = LocalExecutor(ExecutorSettings(slots=1, process_workers=1))
    async with ex:
        pass
    with pytest.raises(HandlerError, match="stopping its process pool"):
        await ex.run(reg.get("hash"), {"data": "a", "rounds": 1}, expected_s=0.0)
    assert ex.pool_pids() == [] and set(descendants(os.getpid())) == before


def sample(text: str, name: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(line.split()[1])


async def test_pool_usage_is_exported_as_metrics() -> None:
    reg = registry()
    metrics = Metrics()
    async with LocalExecutor(ExecutorSettings(slots=1, process_workers=1)) as ex:
        metrics.bind_pool(ex.pool_usage)
        text = metrics.exposition().decode()
        assert sample(text, "edgesched_pool_workers") == 0
        assert sample(text, "edgesched_pool_resident_memory_bytes") == 0
        await ex.run(reg.get("hash"), {"data": "a", "rounds": 300_000}, expected_s=0.0)
        text = metrics.exposition().decode()
        assert sample(text, "edgesched_pool_workers") == 1
        assert sample(text, "edgesched_pool_resident_memory_bytes") > 4 << 20
        assert sample(text, "edgesched_pool_cpu_seconds_total") > 0.02
