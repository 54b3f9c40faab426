"""A node's own wait estimate: FIFO over the expected run times of what it runs and queues.

The daemon's executor (adapters/executor.py) reports it in telemetry and uses it for
admission; the simulator's nodes compute it the same way (sim/engine.py), and the simulator's
oracle runs it on the true times (sim/brains.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


def fifo_wait(slots: int, running_left_s: Iterable[float], queued_s: Iterable[float]) -> float:
    """How long a task arriving now waits for a slot on a node serving FIFO.

    `running_left_s`: the expected remaining time of each running task (negative = overdue,
    counted as about to finish); `queued_s`: the expected run time of each queued task, in
    the order they will start. Each queued task takes the slot that frees first; the new task
    gets the first slot free after them.
    """
    free = [max(0.0, left) for left in running_left_s]
    free += [0.0] * (slots - len(free))
    if not free:
        return 0.0
    heapq.heapify(free)
    for run_s in queued_s:
        heapq.heapreplace(free, free[0] + run_s)
    return free[0]
