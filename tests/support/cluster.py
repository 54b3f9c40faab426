"""Helpers for tests and benchmarks that run many node processes at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.support.nodes import NodeProcess

CLK_TCK = os.sysconf("SC_CLK_TCK")


def start_all(nodes: list[NodeProcess], timeout: float) -> None:
    """Start every node at once, then wait (bounded) until each answers /healthz."""
    for node in nodes:
        node.start(wait=False)
    deadline = time.monotonic() + timeout
    for node in nodes:
        node.wait_healthy(max(1.0, deadline - time.monotonic()))


def stop_all(nodes: list[NodeProcess]) -> None:
    """SIGTERM to all, then wait for each (a graceful stop takes ~1 s, in parallel)."""
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
    for node in nodes:
        if node.proc is None:
            continue
        try:
            node.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (pool workers), in seconds."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (after pid and comm)
    return total / CLK_TCK
