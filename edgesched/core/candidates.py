"""Turns a cluster snapshot and the estimators into the candidate targets for one task."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from edgesched.core.estimators import EstimatorBank
from edgesched.core.model import (
    CANDIDATE_FIELDS,
    Candidate,
    ClusterSnapshot,
    ExecEstimate,
    Liveness,
    NodeState,
    OffloadPolicy,
    Placement,
    PowerModel,
    TaskSpec,
    new_candidate,
    require_finite,
)

CLOUD_ID = "cloud"
_INF = math.inf
_exp, _sqrt = math.exp, math.sqrt
DEFAULT_POWER = PowerModel()  # frozen: one shared instance, not one per candidate per task


@dataclass(frozen=True, kw_only=True, slots=True)
class CloudTarget:
    """The cloud tier as a candidate: many slots, no battery, maybe a money cost per task."""

    node_id: str = CLOUD_ID
    slots: int = 64
    money_cost: float = 0.0
    power: PowerModel = field(default_factory=lambda: PowerModel(idle_w=0.0, busy_w=0.0))

    def __post_init__(self) -> None:
        require_finite("money_cost", self.money_cost, minimum=0.0)
        if self.slots < 1:
            raise ValueError(f"cloud slots must be >= 1, got {self.slots!r}")


def queue_wait(
    slots: int, running: int, queued: int, exec_mean_s: float, exec_std_s: float = 0.0
) -> tuple[float, float]:
    """Predicted wait before a new task starts, and its std.

    With every slot busy, the new task waits for n = running + queued - slots + 1 completions
    that happen about `slots` at a time: wait ≈ n·exec/slots. The spread grows with √n (sums of
    independent service times) and is at least half the mean (we do not know how far along
    the running tasks are).
    """
    if slots <= 0:
        return math.inf, 0.0
    ahead = running + queued - slots + 1
    if ahead <= 0:
        return 0.0, 0.0
    wait = ahead * exec_mean_s / slots
    std = max(0.5 * wait, math.sqrt(ahead) * exec_std_s / slots)
    return wait, std


def _supports(node: NodeState, task_type: str) -> bool:
    # An empty list means "not announced": assume the built-in set is there.
    return not node.task_types or task_type in node.task_types


def _wait(node: NodeState, extra: int, ex: ExecEstimate, age: float = 0.0) -> tuple[float, float]:
    """Queue wait on `node` for one more task, `extra` of ours not in its report yet.

    A report `age` seconds old is aged: the tasks it counted have been worked on since, so the
    reported backlog relaxes towards the node's average load (cpu_util x slots) with the
    execution time as time constant, and the node's own wait estimate counts down by `age`.
    Without this, a neighbour seen busy in a report taken mid-burst looks busy for a whole
    telemetry interval, however short its tasks.
    """
    # Written with comparisons instead of max/min/isfinite calls: this runs for every
    # neighbour of every task (a NaN fails each `0.0 <= x < INF` test, as isfinite would).
    running, queued, slots, mean_s = node.running, node.queued, node.slots, ex.mean_s
    if running < 0:
        running = 0
    if queued < 0:
        queued = 0
    reported = node.est_wait_s
    if not 0.0 <= reported < _INF:
        reported = 0.0
    if not (0.0 < age < _INF and slots > 0 and mean_s > 0.0):
        wait, std = queue_wait(slots, running + extra, queued, mean_s, ex.std_s)
    else:
        util = node.cpu_util
        if not 0.0 <= util <= 1.0:
            util = 1.0 if 1.0 < util < _INF else 0.0
        average = util * slots
        ahead = average + (running + queued - average) * _exp(-age / mean_s) + extra - slots + 1
        if ahead > 0.0:
            wait = ahead * mean_s / slots
            std = _sqrt(ahead) * ex.std_s / slots
            if std < 0.5 * wait:
                std = 0.5 * wait
        else:
            wait = std = 0.0
        reported = reported - age if reported > age else 0.0
    if reported > wait:  # the node's own estimate knows its real queue mix
        return reported, (std if std >= 0.5 * reported else 0.5 * reported)
    return wait, std


def _battery(node: NodeState) -> float | None:
    """A reported charge, or None when missing or nonsense (one bad reading must not make the
    whole decision fail; the view is where bad telemetry gets counted and refused)."""
    b = node.battery
    return b if b is not None and math.isfinite(b) and 0.0 <= b <= 1.0 else None


def _age(node: NodeState, now: float) -> float:
    """Seconds since last heard; an unknown `last_seen` counts as too old to trust."""
    age = now - node.last_seen
    if math.isnan(age):
        return math.inf
    return max(0.0, age)


_LOCAL, _NEIGHBOUR, _CLOUD = Placement.LOCAL, Placement.NEIGHBOUR, Placement.CLOUD
_ONLINE = Liveness.ONLINE


def _candidate(*values: Any) -> Candidate:
    """Candidate(*values) without re-validating what this module computed and its inputs'
    constructors (NodeState via the view, estimates, power models, CloudTarget) validated.

    The computed times and the running count are still checked, cheaply (a NaN fails every
    comparison): if one is bad, the regular constructor is used so the error says which field.
    """
    age, wait, wait_std = values[3], values[7], values[8]
    if 0.0 <= age <= 1e12 and 0.0 <= wait <= 1e9 and 0.0 <= wait_std <= 1e9 and values[5] >= 0:
        return new_candidate(*values)
    return Candidate(**dict(zip(CANDIDATE_FIELDS, values, strict=True)))


def local_candidate(
    task: TaskSpec, node: NodeState, bank: EstimatorBank, now: float, *,
    power: PowerModel, max_queue: int | None = None, extra: int = 0,
) -> Candidate:
    """This node as a candidate (no transfer; its own state is never stale).

    The executor's own wait estimate (FIFO over the expected remaining times of what it runs
    and queues) is used when it has one: it knows how far along the running tasks are, which
    the count model cannot (with every slot busy the count model assumes a whole execution
    time per slot ahead, and would send work away from a node about to free a slot).
    """
    return _local(task.task_type, task.input_bytes, node, bank, now, power, max_queue, extra)


def _local(
    task_type: str, input_bytes: float, node: NodeState, bank: EstimatorBank, now: float,
    power: PowerModel, max_queue: int | None, extra: int,
) -> Candidate:
    # Once per task: positional, with the clamps written out (see _neighbour).
    ex = bank.exec_estimate(task_type, node.node_id, input_bytes, now)
    own = node.est_wait_s
    if 0.0 < own < _INF and extra == 0:
        wait, wait_std = own, 0.5 * own
    else:
        wait, wait_std = _wait(node, extra, ex)
    battery = node.battery
    if battery is not None and not 0.0 <= battery <= 1.0:
        battery = None
    slots, running, queued, types = node.slots, node.running, node.queued, node.task_types
    values = (
        node.node_id, _LOCAL, _ONLINE, 0.0, slots if slots > 0 else 0,
        (running if running > 0 else 0) + extra, queued if queued > 0 else 0,
        1e9 if wait > 1e9 else wait, 1e9 if wait_std > 1e9 else wait_std, battery, power,
        None, ex, not types or task_type in types, 0.0, max_queue, power, battery, False,
    )
    if wait >= 0.0 and wait_std >= 0.0 and extra >= 0:  # NaN fails: the slow path names it
        return new_candidate(*values)
    return _candidate(*values)


def neighbour_candidate(
    task: TaskSpec, node: NodeState, local: NodeState, bank: EstimatorBank, now: float, *,
    power: PowerModel, origin_power: PowerModel, extra: int = 0, excluded: bool = False,
) -> Candidate:
    """An edge neighbour as a candidate, as last heard from (`age_s` says how long ago)."""
    return _neighbour(task.task_type, task.input_bytes, node, _battery(local), bank, now,
                      power, origin_power, extra, excluded)


def _neighbour(
    task_type: str, input_bytes: float, node: NodeState, origin_battery: float | None,
    bank: EstimatorBank, now: float, power: PowerModel, origin_power: PowerModel, extra: int,
    excluded: bool,
) -> Candidate:
    # Runs for every neighbour of every task: positional, and _age, _battery, _supports and
    # _candidate's range check written out as comparisons. A report in range (the usual case)
    # needs no clamp; otherwise the values are clamped as always and a NaN still ends in the
    # validating constructor, which names the field.
    node_id = node.node_id
    ex = bank.exec_estimate(task_type, node_id, input_bytes, now)
    age = now - node.last_seen
    age = (age if age > 0.0 else 0.0) if age == age else _INF
    wait, wait_std = _wait(node, extra, ex, age)
    slots, running, queued = node.slots, node.running, node.queued
    battery = node.battery
    if battery is not None and not 0.0 <= battery <= 1.0:
        battery = None
    types = node.task_types
    link = bank.link(node_id, now)
    if (age <= 1e12 and slots >= 0 and running >= 0 and queued >= 0 and extra >= 0
            and 0.0 <= wait <= 1e9 and 0.0 <= wait_std <= 1e9):
        return new_candidate(
            node_id, _NEIGHBOUR, node.liveness, age, slots, running + extra, queued, wait,
            wait_std, battery, power, link, ex, not types or task_type in types, 0.0, None,
            origin_power, origin_battery, excluded,
        )
    return _candidate(
        node_id, _NEIGHBOUR, node.liveness, 1e12 if age > 1e12 else age,
        slots if slots > 0 else 0, (running if running > 0 else 0) + extra,
        queued if queued > 0 else 0, 1e9 if wait > 1e9 else wait,
        1e9 if wait_std > 1e9 else wait_std, battery, power, link, ex,
        not types or task_type in types, 0.0, None, origin_power, origin_battery, excluded,
    )


def cloud_candidate(
    task: TaskSpec, cloud: CloudTarget, local: NodeState, bank: EstimatorBank, now: float, *,
    origin_power: PowerModel, inflight: int = 0,
) -> Candidate:
    """The cloud tier as a candidate; `inflight` = tasks this node has running there."""
    return _cloud(task.task_type, task.input_bytes, cloud, _battery(local), bank, now,
                  origin_power, inflight)


def _cloud(
    task_type: str, input_bytes: float, cloud: CloudTarget, origin_battery: float | None,
    bank: EstimatorBank, now: float, origin_power: PowerModel, inflight: int,
) -> Candidate:
    ex = bank.exec_estimate(task_type, cloud.node_id, input_bytes, now)
    slots = cloud.slots
    if inflight < slots:  # queue_wait's common case, written out: a slot is free
        wait = wait_std = 0.0
    else:
        wait, wait_std = queue_wait(slots, inflight, 0, ex.mean_s, ex.std_s)
    values = (
        cloud.node_id, _CLOUD, _ONLINE, 0.0, slots, inflight, 0, wait, wait_std, None,
        cloud.power, bank.link(cloud.node_id, now), ex, True, cloud.money_cost, None,
        origin_power, origin_battery, False,
    )
    if 0.0 <= wait <= 1e9 and 0.0 <= wait_std <= 1e9 and inflight >= 0:
        return new_candidate(*values)
    return _candidate(*values)


def build_candidates(
    task: TaskSpec,
    snapshot: ClusterSnapshot,
    bank: EstimatorBank,
    *,
    offload: OffloadPolicy | None = None,
    cloud: CloudTarget | None = None,
    local_power: PowerModel | None = None,
    powers: Mapping[str, PowerModel] | None = None,
    local_max_queue: int | None = None,
    inflight: Mapping[str, int] | None = None,
    exclude: Collection[str] = (),
) -> list[Candidate]:
    """Every target the task could go to: this node, each edge neighbour, and the cloud.

    Candidates the offload policy forbids are still listed (the evaluation says why they were
    not chosen) unless `offload` is given, in which case they are skipped to save the work.
    `inflight` counts tasks this node already sent to a target that its last telemetry may not
    show yet (so a burst does not herd onto one neighbour); `powers` holds known power models of
    neighbours (unknown ones get the default model); `exclude` marks targets not to use.
    """
    now, local = snapshot.now, snapshot.local
    lp = local_power or DEFAULT_POWER
    task_type, input_bytes, local_id = task.task_type, task.input_bytes, local.node_id
    out = [
        _local(task_type, input_bytes, local, bank, now, lp, local_max_queue,
               inflight.get(local_id, 0) if inflight else 0)
    ]
    origin_battery = _battery(local)
    if offload is None or offload.allows(_NEIGHBOUR):
        for node in snapshot.neighbours:
            node_id = node.node_id
            if node.role != "edge" or node_id == local_id:
                continue
            out.append(_neighbour(
                task_type, input_bytes, node, origin_battery, bank, now,
                powers.get(node_id, DEFAULT_POWER) if powers else DEFAULT_POWER, lp,
                inflight.get(node_id, 0) if inflight else 0,
                node_id in exclude if exclude else False,
            ))
    if cloud is not None and (offload is None or offload.allows(_CLOUD)):
        out.append(_cloud(task_type, input_bytes, cloud, origin_battery, bank, now, lp,
                          inflight.get(cloud.node_id, 0) if inflight else 0))
    return out

