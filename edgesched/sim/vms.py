"""EdgeCloudSim-style servers (`nodes[].executor: ecs_vms`): VMs with time-shared cores.

EdgeCloudSim (over CloudSim) runs a server's tasks on VMs: a task is placed on the VM with
the most free nominal capacity (100 % minus the `vm_utilization_pct` of the tasks it holds;
refused when no VM has room for it) and a VM's tasks share its cores (CloudSim's time-shared
scheduler): with n tasks on c cores each progresses at min(1, c/n) cores' speed. There is no
queue. The engine uses this instead of the FIFO slots for such a node (sim/engine.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EPS_WORK = 1e-9


class TimeSharedVm:
    """One VM: `cores` cores of `speed` work units per second, shared by its tasks.

    Every task on the VM progresses at the same rate, so like a shared link (sim/links.py) the
    VM tracks the work each task has received since it was created (`service`); a task is
    done when `service` reaches its tag (service at its start + its work). One pending
    completion event at a time; a `version` number makes superseded ones harmless.
    """

    __slots__ = ("_done", "cores", "engine", "jobs", "last", "load_pct", "service", "speed",
                 "version")

    def __init__(self, engine: Any, cores: int, speed: float,
                 done: Callable[[Any], None]) -> None:
        self.engine = engine
        self.cores = cores
        self.speed = speed
        self._done = done
        self.jobs: list[tuple[float, float, Any]] = []  # (tag, nominal %, job)
        self.load_pct = 0.0  # EdgeCloudSim's VM utilisation: the nominal % of its tasks
        self.service = 0.0
        self.last = 0.0
        self.version = 0

    def rate(self) -> float:
        """Work per second each task gets now."""
        n = len(self.jobs)
        return self.speed * min(1.0, self.cores / n) if n else self.speed

    def free_pct(self) -> float:
        return 100.0 - self.load_pct

    def _advance(self, now: float) -> None:
        if self.jobs and now > self.last:
            self.service += (now - self.last) * self.rate()
        self.last = now

    def _reschedule(self, now: float) -> None:
        self.version += 1
        if self.jobs:
            left = max(0.0, min(tag for tag, _, _ in self.jobs) - self.service)
            self.engine.schedule(now + left / self.rate(), self._on_event, self.version)

    def add(self, job: Any, work: float, pct: float) -> None:
        now = self.engine.now
        self._advance(now)
        self.jobs.append((self.service + work, pct, job))
        self.load_pct += pct
        self._reschedule(now)

    def _on_event(self, version: int) -> None:
        if version != self.version:
            return
        now = self.engine.now
        self._advance(now)
        limit = self.service + EPS_WORK * max(1.0, self.service)
        first = min(tag for tag, _, _ in self.jobs)
        finished = [item for item in self.jobs if item[0] <= max(limit, first)]
        self.jobs = [item for item in self.jobs if item[0] > max(limit, first)]
        for _, pct, _ in finished:
            self.load_pct -= pct
        if not self.jobs:
            self.load_pct = 0.0  # no drift from float sums
        self._reschedule(now)
        for _, _, job in finished:
            self._done(job)

    def clear(self) -> None:
        """The server went down: every task on it is lost."""
        self.jobs = []
        self.load_pct = 0.0
        self.version += 1


def pick_vm(vms: list[TimeSharedVm], pct: float) -> TimeSharedVm | None:
    """EdgeCloudSim's least-loaded VM: the most free capacity that still fits `pct` (the
    first such VM on a tie); None when no VM has room."""
    best: TimeSharedVm | None = None
    best_free = 0.0
    for vm in vms:
        free = vm.free_pct()
        if pct <= free and free > best_free:
            best, best_free = vm, free
    return best
