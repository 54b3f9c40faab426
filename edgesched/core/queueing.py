"""A node's own wait estimate: FIFO over the expected run times of what it runs and queues.

The daemon's executor (adapters/executor.py) reports it in telemetry and uses it for
admission; the simulator's nodes compute it the same way (sim/engine.py), and the simulator's
oracle runs it on the true times (sim/brains.py).
"""

from __future__ import annotations

import heapq
import math
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


# Beyond this many standard deviations past its median a task's remaining time is read at
# this bound (the tail ratio below underflows further out; a task that ran this long is
# an outlier the estimate should not chase).
MAX_TAIL_Z = 30.0


def remaining_s(expected_s: float, std_s: float, elapsed_s: float) -> float:
    """The expected remaining run time of a task expected to take `expected_s` (spread
    `std_s`) that has been running `elapsed_s`.

    Without a spread: `expected_s - elapsed_s` (negative = overdue). With one, the run time is
    taken as lognormal with that mean and spread, and the answer is its mean residual life
    E[X - t | X > t]: a task past its expected time is not "about to finish" when run times
    are heavy-tailed, it is more likely one of the long ones (with cv 2, one that has run
    twice its mean has about 2.5 means left).
    """
    if std_s <= 0.0 or expected_s <= 0.0:
        return expected_s - elapsed_s
    if elapsed_s <= 0.0:
        return expected_s
    sigma2 = math.log1p((std_s / expected_s) ** 2)
    sigma = math.sqrt(sigma2)
    mu = math.log(expected_s) - 0.5 * sigma2
    z = min(MAX_TAIL_Z, (math.log(elapsed_s) - mu) / sigma)
    # E[X | X > t] = mean * Phi(sigma - z) / Phi(-z), each Phi(x) as erfc(-x / sqrt 2) / 2
    tail = math.erfc(z / _SQRT2)
    if tail <= 0.0:
        return 0.0
    return max(0.0, expected_s * math.erfc((z - sigma) / _SQRT2) / tail - elapsed_s)


_SQRT2 = math.sqrt(2.0)
