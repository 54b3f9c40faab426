"""Small runtime parts: incarnation counter, /proc/stat sampling, sd_notify datagrams."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from edgesched.adapters.procstat import CpuSampler, read_cpu_times
from edgesched.adapters.systemd import Notifier
from edgesched.config import read_process_environment
from edgesched.node.service import next_incarnation


def test_incarnation_grows_even_when_the_clock_steps_back(tmp_path: Path) -> None:
    first = next_incarnation(tmp_path / "state", wall_ms=5_000)
    second = next_incarnation(tmp_path / "state", wall_ms=1_000)  # clock went back
    third = next_incarnation(tmp_path / "state", wall_ms=9_000)
    assert (first, second, third) == (5_000, 5_001, 9_000)
    assert (tmp_path / "state" / "incarnation").read_text().strip() == "9000"
    assert next_incarnation(None, wall_ms=123) == 123


def test_cpu_sampler_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    sampler = CpuSampler(stat)
    stat.write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")  # 100 busy of 200 jiffies
    assert sampler.sample() == 0.5
    assert read_cpu_times(tmp_path / "missing") is None
    assert CpuSampler(tmp_path / "missing").sample() == 0.0
    assert 0.0 <= CpuSampler().sample() <= 1.0  # the real /proc/stat


async def test_notifier_sends_datagrams_and_pings_the_watchdog(tmp_path: Path) -> None:
    name = f"@edgesched-test-{os.getpid()}"  # abstract socket: no path length trouble
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:])
    sock.setblocking(False)
    try:
        env = read_process_environment({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "100000"})
        notifier = Notifier(env)
        assert notifier.watchdog_interval_s == 0.05
        async with notifier:
            notifier.ready("up")
            await asyncio.sleep(0.18)
            notifier.stopping()
        got = []
        while True:
            try:
                got.append(sock.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        sock.close()
    assert got[0] == "READY=1\nSTATUS=up" and got[-1] == "STOPPING=1"
    assert got.count("WATCHDOG=1") >= 3


def test_notifier_is_a_noop_without_systemd() -> None:
    notifier = Notifier(read_process_environment({}))
    assert not notifier.enabled and notifier.ready() is False
    other_pid = read_process_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000",
                                          "WATCHDOG_PID": str(os.getpid() + 1)})
    assert Notifier(other_pid).watchdog_interval_s is None  # the watchdog is someone else's
