"""The event-loop stall guard: detects a blocked loop, stands down under systemd's watchdog."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.stallguard import (
    STALL_EXIT_CODE,
    StallGuard,
    stall_guard_for,
    systemd_watchdog_in_charge,
)
from edgesched.config import load_settings, read_process_environment

REPO = Path(__file__).resolve().parents[2]


async def test_blocked_loop_triggers_on_stall() -> None:
    stalls: list[float] = []
    async with StallGuard(0.2, on_stall=stalls.append):
        await asyncio.sleep(0.05)
        time.sleep(0.8)  # noqa: ASYNC251 - blocks the event loop: the checker thread must notice meanwhile
        assert stalls, "the checker thread saw no stall while the loop was blocked"
    assert 0.2 < stalls[0] < 0.8


async def test_busy_but_turning_loop_is_not_a_stall() -> None:
    stalls: list[float] = []
    metrics = Metrics()
    async with StallGuard(0.3, on_stall=stalls.append, metrics=metrics):
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            time.sleep(0.01)  # noqa: ASYNC251 - short blocking slices, as real work does
            await asyncio.sleep(0)
    assert stalls == []
    count = metrics.registry.get_sample_value("edgesched_event_loop_lag_seconds_count")
    assert count is not None and count >= 5


async def test_disabled_guard_measures_lag_but_never_acts() -> None:
    stalls: list[float] = []
    metrics = Metrics()
    async with StallGuard(0.1, enabled=False, on_stall=stalls.append, metrics=metrics) as guard:
        await asyncio.sleep(0.05)
        time.sleep(0.4)  # noqa: ASYNC251 - on purpose
        await asyncio.sleep(0.05)
        assert guard._thread is None
    assert stalls == []
    lag_sum = metrics.registry.get_sample_value("edgesched_event_loop_lag_seconds_sum")
    assert lag_sum is not None and lag_sum >= 0.2, "the blocked interval shows as loop lag"


@pytest.mark.parametrize(
    ("environ", "in_charge"),
    [
        ({}, False),
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, False),  # notify without watchdog
        ({"WATCHDOG_USEC": "30000000"}, False),  # watchdog without a socket to ping
        ({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}, True),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, False),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "0"}, False),
        ({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "junk"}, False),
    ],
)
def test_systemd_watchdog_in_charge(environ: dict[str, str], in_charge: bool) -> None:
    assert systemd_watchdog_in_charge(read_process_environment(environ), pid=4242) is in_charge


def test_stall_guard_for_follows_config_and_environment() -> None:
    settings = load_settings(None, watchdog={"stall_limit_s": 7.5})
    under_systemd = read_process_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000"})
    guard = stall_guard_for(settings, env=under_systemd)
    assert guard.limit_s == 7.5 and guard.enabled is False
    assert stall_guard_for(settings, env=read_process_environment({})).enabled is True


def test_real_process_exits_non_zero_when_its_loop_blocks(tmp_path: Path) -> None:
    """A separate interpreter: the default action really ends the process, from the thread."""
    script = tmp_path / "stall.py"
    script.write_text(textwrap.dedent("""
        import asyncio, logging, time
        from edgesched.adapters.stallguard import StallGuard

        async def main():
            async with StallGuard(0.3):
                await asyncio.sleep(0.1)
                time.sleep(30)  # never returns in time
            print("guard did not fire")

        logging.basicConfig(level=logging.INFO)
        asyncio.run(main())
    """))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=20,
        cwd=REPO, check=False,
    )
    assert proc.returncode == STALL_EXIT_CODE != 0, proc.stderr
    assert "event loop stalled" in proc.stderr
    assert "time.sleep(30)" in proc.stderr, "the log shows where the loop is stuck"
    assert "guard did not fire" not in proc.stdout
