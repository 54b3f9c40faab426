"""The simulated world's state: tasks, attempts, nodes, and the read-only `World` record.

The engine (sim/engine.py) owns and changes all of it; a node's brain (sim/brains.py) is given
its node and the `World` at construction and reads them, never the engine. Neither of those
two modules is imported here, so the ownership runs one way: engine -> brains -> world.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgesched.core.model import Outcome, PowerModel
from edgesched.core.queueing import fifo_wait, remaining_s
from edgesched.sim.links import Link
from edgesched.sim.scenario import Scenario


def exec_time(task: SimTask, node: SimNode) -> float:
    """How long `task` runs on `node`: its work at the node's speed, or, for a type whose
    input says its execution time (`exact`, e.g. a replayed `sleep`), that time anywhere."""
    exact = task.spec.exact_s if task.spec is not None else None
    return task.work / node.speed if exact is None else float(exact)


class SimTask:
    """One submitted task and the progress of its attempts."""

    __slots__ = ("arrival", "attempt", "deadline", "decision", "done", "in_bits", "index",
                 "origin", "out_bits", "placement", "predicted", "ranked", "reason", "sent_token",
                 "spec", "started", "target", "token", "tried", "ttype", "vm", "work")

    def __init__(self, index: int, arrival: float, origin: SimNode, ttype: int, work: float,
                 in_bytes: float, out_bytes: float, deadline: float | None) -> None:
        self.index = index
        self.arrival = arrival
        self.origin = origin
        self.ttype = ttype
        self.work = work
        self.in_bits = 8.0 * in_bytes
        self.out_bits = 8.0 * out_bytes
        self.deadline = deadline  # absolute time, or None
        self.spec: Any = None  # the core TaskSpec, built by the brain
        self.decision: Any = None  # the core Decision taken at submission
        self.attempt = 0
        self.token = 0
        self.done = False
        self.placement: str | None = None
        self.predicted = 0.0
        self.target: Any = None  # the CandidateEval of the current attempt
        self.vm: Any = None  # the VM an ecs_* decision bound it to (sim/vms.py), if any
        self.reason: Outcome | None = None  # how the latest attempt failed
        self.started = 0.0  # when the current attempt was dispatched
        self.tried: list[str] = []
        self.sent_token = -1  # the origin's in-flight token of the current attempt


class SimJob:
    """One attempt of a task executing (or queued) on one node."""

    __slots__ = ("est", "est_std", "exec_s", "start", "task", "token", "wait_s")

    def __init__(self, task: SimTask, token: int, exec_s: float) -> None:
        self.task = task
        self.token = token
        self.exec_s = exec_s
        self.start = 0.0
        self.wait_s = 0.0  # time spent queued on the executing node
        self.est = 0.0  # the executing node's own estimate of exec_s (for its est_wait_s)
        self.est_std = 0.0  # ... and its spread


@dataclass(kw_only=True, slots=True)
class SimNode:
    """An edge node (or the cloud tier) and everything the engine tracks about it."""

    index: int
    id: str
    is_cloud: bool
    speed: float
    slots: int
    queue_size: int
    power: PowerModel
    battery_capacity_j: float | None = None
    battery_initial: float = 1.0
    alive: bool = True
    incarnation: int = 1
    running: list[SimJob] = field(default_factory=list)
    queue: deque[SimJob] = field(default_factory=deque)
    energy_j: float = 0.0  # marginal compute + radio energy (what the report counts)
    busy_s: float = 0.0  # slot-seconds of finished execution, for cpu_util
    busy_mark: float = 0.0  # busy slot-seconds at the last telemetry
    dead_battery: bool = False
    pending: set[SimTask] = field(default_factory=set)  # tasks submitted here, not finished
    brain: Any = None
    exec_mean: dict[int, float] = field(default_factory=dict)  # own measured exec time by type
    wait_cache: tuple[float, float, float] | None = None  # (wait, at, valid for) est_wait_s
    vms: list[Any] | None = None  # executor ecs_vms: its TimeSharedVms (sim/vms.py), no queue

    def battery_level(self, now: float) -> float | None:
        """Charge 0..1: initial minus idle drain minus the marginal energy spent so far."""
        if self.battery_capacity_j is None:
            return None
        used = self.power.idle_w * now + self.energy_j
        return max(0.0, self.battery_initial - used / self.battery_capacity_j)

    def own_estimate(self, ttype: int, default: float) -> float:
        return self.exec_mean.get(ttype, default)

    def est_wait_s(self, now: float) -> float:
        """This node's own estimate of the wait before a new task gets a slot: the core's FIFO
        model over its own expected run times, as the daemon's executor reports it."""
        running = self.running
        if len(running) < self.slots and not self.queue:
            return 0.0
        cached = self.wait_cache
        if cached is not None and now - cached[1] <= cached[2]:
            # Nothing started or finished since, and no running task has outlived its
            # expected time: every free time has just moved `now - then` closer.
            return max(0.0, cached[0] - (now - cached[1]))
        left = [remaining_s(job.est, job.est_std, now - job.start) for job in running]
        wait = fifo_wait(self.slots, left, [job.est for job in self.queue])
        # Reusable until a running task is overdue while each one's remaining time counts
        # down with the clock: only with no spread (see core/queueing.remaining_s).
        linear = all(job.est_std <= 0.0 for job in running)
        slack = max(0.0, min(left)) if left and linear else 0.0
        self.wait_cache = (wait, now, slack)
        return wait


@dataclass(frozen=True, kw_only=True, slots=True)
class World:
    """What a brain may know of the simulated world besides its own node: the scenario, the
    edge nodes and the cloud tier (their live state is the truth the oracle decides on), the
    links between them, and the execution time at speed 1 the operator configured per type.
    Built by the engine once its nodes and links exist; the record itself never changes."""

    scenario: Scenario
    nodes: Sequence[SimNode]
    cloud: SimNode | None
    links: Mapping[tuple[str, str], Link]
    priors: Sequence[float]  # by task type index

    def prior_exec(self, ttype: int) -> float:
        """Execution time at speed 1 the operator configured for a type (exec_prior_s)."""
        return self.priors[ttype]


