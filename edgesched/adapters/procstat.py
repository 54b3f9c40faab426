"""CPU utilisation of the whole machine from /proc/stat (Linux), as a 0..1 fraction."""

from __future__ import annotations

from pathlib import Path


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
