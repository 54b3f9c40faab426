"""From /proc (Linux): the whole machine's CPU utilisation as a 0..1 fraction (/proc/stat),
and one process's resident memory and CPU time (/proc/PID/statm and /proc/PID/stat)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class ProcessUsage:
    """Resident memory and CPU time of one process, or summed over several."""

    processes: int
    rss_bytes: int
    cpu_seconds: float


def read_process_usage(pid: int, proc: Path = Path("/proc")) -> ProcessUsage | None:
    """RSS (statm's resident pages) and user + system CPU seconds (stat's utime, stime) of
    `pid`; None when the process is gone or /proc is unavailable."""
    try:
        statm = (proc / str(pid) / "statm").read_bytes().split()
        stat = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rsplit(b")", 1)[-1].split()
    try:
        rss = int(statm[1]) * _PAGE_BYTES
        cpu = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S  # fields 14, 15 of stat(5)
    except (IndexError, ValueError):
        return None
    return ProcessUsage(processes=1, rss_bytes=rss, cpu_seconds=cpu)


def read_cpu_times(path: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(busy, total) jiffies of the aggregate `cpu` line; None where /proc is unavailable."""
    try:
        with path.open("rb") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    if not first or first[0] != b"cpu":
        return None
    fields = [int(x) for x in first[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    # already counted in user/nice, so it is left out of the total.
    total = sum(fields[:8])
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


class CpuSampler:
    """Utilisation between successive calls to `sample()` (0.0 on the first call)."""

    def __init__(self, path: Path = Path("/proc/stat")) -> None:
        self._path = path
        self._last = read_cpu_times(path)

    def sample(self) -> float:
        now = read_cpu_times(self._path)
        if now is None or self._last is None:
            self._last = now
            return 0.0
        busy = now[0] - self._last[0]
        total = now[1] - self._last[1]
        self._last = now
        if total <= 0:
            return 0.0
        return min(1.0, max(0.0, busy / total))
