"""Turns a cluster snapshot and the estimators into the candidate targets for one task.

Each candidate's execution time is estimated once, for the task's `work` (or taken from its
`exact_s`), and that one estimate is what its queue wait is derived from and what the cost
model reads: the two never disagree.

The node states come from the cluster view, which takes only validated reports (counts and
slots >= 0, cpu_util and battery within 0..1, a finite est_wait_s: node/wire.py refuses
the rest, the telemetry stage counts them), and from this node's own live executor; they are
used as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from edgesched.core.estimators import EstimatorBank
from edgesched.core.model import (
    Candidate,
    ClusterSnapshot,
    ExecEstimate,
    Liveness,
    NodeState,
    OffloadPolicy,
    Placement,
    PowerModel,
    TaskSpec,
    require_finite,
)

CLOUD_ID = "cloud"
DEFAULT_POWER = PowerModel()  # frozen: one shared instance, not one per candidate per task
# A wait can be infinite (a target without slots): candidates carry at most this (s).
MAX_WAIT_S = 1e9
# Spread of an execution time the input states exactly (sleep): a little scheduling jitter.
EXACT_STD_FRACTION = 0.02
EXACT_STD_FLOOR_S = 0.002


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


def exec_estimate(task: TaskSpec, node_id: str, bank: EstimatorBank, now: float) -> ExecEstimate:
    """The execution time of `task` on `node_id`: exact when the input says it, else the
    estimators' answer for the task's work."""
    if task.exact_s is not None:
        return ExecEstimate(mean_s=task.exact_s,
                            std_s=EXACT_STD_FRACTION * task.exact_s + EXACT_STD_FLOOR_S)
    return bank.exec_estimate(task.task_type, node_id, task.work, now)


def exec_means(task: TaskSpec, bank: EstimatorBank, now: float) -> Callable[[str], float]:
    """The task's expected execution time on a node, by node id (`exec_estimate`): what
    `Shortlist.neighbours` ranks the neighbours by when the list is chosen again."""
    return lambda node_id: exec_estimate(task, node_id, bank, now).mean_s


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


def _aged_wait(node: NodeState, ex: ExecEstimate, extra: int, age: float) -> tuple[float, float]:
    """The count model on a report `age` seconds old: the tasks it counted have been worked on
    since, so the backlog relaxes towards the node's average load (cpu_util x slots), with the
    execution time as time constant — but a backlog above that average cannot drain faster
    than its slots finish tasks (`slots` per execution time), so it is at least the reported
    backlog minus what could have finished since. Our `extra` tasks it cannot show yet do not
    relax. (Relaxing a long queue with the execution time as time constant alone took a queue
    of 100 x 5 ms tasks for empty 20 ms later: issue 20's burst timed out on it.)"""
    slots = node.slots
    average = node.cpu_util * slots
    backlog = node.running + node.queued
    relaxed = average + (backlog - average) * math.exp(-age / ex.mean_s)
    if backlog > average:
        relaxed = max(relaxed, backlog - age * slots / ex.mean_s)
    ahead = relaxed + extra - slots + 1
    if ahead <= 0.0:
        return 0.0, 0.0
    wait = ahead * ex.mean_s / slots
    return wait, max(0.5 * wait, math.sqrt(ahead) * ex.std_s / slots)


def node_wait(
    node: NodeState, ex: ExecEstimate, *, extra: int = 0, age: float = 0.0
) -> tuple[float, float]:
    """Queue wait on `node` for one more task, `extra` of ours not in its report yet.

    A report `age` seconds old is aged (see `_aged_wait`), and the node's own wait estimate
    counts down by `age`: without this, a neighbour seen busy in a report taken mid-burst looks
    busy for a whole telemetry interval, however short its tasks. The node's own estimate wins
    when it is longer: it knows its real queue mix.
    """
    reported = node.est_wait_s
    if age > 0.0 and node.slots > 0 and ex.mean_s > 0.0:
        wait, std = _aged_wait(node, ex, extra, age)
        reported = max(0.0, reported - age)
    else:
        wait, std = queue_wait(node.slots, node.running + extra, node.queued, ex.mean_s,
                               ex.std_s)
    if reported > wait:
        return reported, max(std, 0.5 * reported)
    return wait, std


def _supports(node: NodeState, task_type: str) -> bool:
    # An empty list means "not announced": assume the built-in set is there.
    return not node.task_types or task_type in node.task_types


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
    ex = exec_estimate(task, node.node_id, bank, now)
    if node.est_wait_s > 0.0 and extra == 0:
        wait, wait_std = node.est_wait_s, 0.5 * node.est_wait_s
    else:
        wait, wait_std = node_wait(node, ex, extra=extra)
    return Candidate(
        node_id=node.node_id, placement=Placement.LOCAL, liveness=Liveness.ONLINE, age_s=0.0,
        slots=node.slots, running=node.running + extra, queued=node.queued,
        est_wait_s=min(wait, MAX_WAIT_S), wait_std_s=min(wait_std, MAX_WAIT_S),
        battery=node.battery, power=power, link=None, exec=ex,
        supports_type=_supports(node, task.task_type), money_cost=0.0, max_queue=max_queue,
        origin_power=power, origin_battery=node.battery, excluded=False,
    )


def neighbour_candidate(
    task: TaskSpec, node: NodeState, local: NodeState, bank: EstimatorBank, now: float, *,
    power: PowerModel, origin_power: PowerModel, extra: int = 0, excluded: bool = False,
) -> Candidate:
    """An edge neighbour as a candidate, as last heard from (`age_s` says how long ago)."""
    ex = exec_estimate(task, node.node_id, bank, now)
    age = max(0.0, now - node.last_seen)
    wait, wait_std = node_wait(node, ex, extra=extra, age=age)
    return Candidate(
        node_id=node.node_id, placement=Placement.NEIGHBOUR, liveness=node.liveness,
        age_s=age, slots=node.slots, running=node.running + extra, queued=node.queued,
        est_wait_s=min(wait, MAX_WAIT_S), wait_std_s=min(wait_std, MAX_WAIT_S),
        battery=node.battery, power=power, link=bank.link(node.node_id, now), exec=ex,
        supports_type=_supports(node, task.task_type), money_cost=0.0, max_queue=None,
        origin_power=origin_power, origin_battery=local.battery, excluded=excluded,
    )


def cloud_candidate(
    task: TaskSpec, cloud: CloudTarget, local: NodeState, bank: EstimatorBank, now: float, *,
    origin_power: PowerModel, inflight: int = 0, state: NodeState | None = None,
) -> Candidate:
    """The cloud tier as a candidate; `inflight` = tasks this node has sent there that its
    latest report does not show yet (all of them without a report).

    `state` is the cloud node's own load report (its telemetry: slots, running, queued and
    `est_wait_s` from the work it actually queued), when this node hears it: the cloud's wait
    is then aged like a neighbour's (`node_wait`). Without a report the cloud is `cloud.slots`
    slots running only this node's tasks — the configured capacity, not a measured one."""
    ex = exec_estimate(task, cloud.node_id, bank, now)
    if state is not None and state.liveness is not Liveness.OFFLINE and state.slots > 0:
        slots, running, queued = state.slots, state.running + inflight, state.queued
        wait, wait_std = node_wait(state, ex, extra=inflight, age=max(0.0, now - state.last_seen))
    else:
        slots, running, queued = cloud.slots, inflight, 0
        wait, wait_std = queue_wait(cloud.slots, inflight, 0, ex.mean_s, ex.std_s)
    return Candidate(
        node_id=cloud.node_id, placement=Placement.CLOUD, liveness=Liveness.ONLINE, age_s=0.0,
        slots=slots, running=running, queued=queued, est_wait_s=min(wait, MAX_WAIT_S),
        wait_std_s=min(wait_std, MAX_WAIT_S), battery=None, power=cloud.power,
        link=bank.link(cloud.node_id, now), exec=ex, supports_type=True,
        money_cost=cloud.money_cost, max_queue=None, origin_power=origin_power,
        origin_battery=local.battery, excluded=False,
    )


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
    held: Collection[str] = (),
    cloud_state: NodeState | None = None,
    zs: Mapping[str, float] | None = None,
    late: Mapping[str, float] | None = None,
) -> list[Candidate]:
    """Every target the task could go to: this node, each edge neighbour, and the cloud.

    Candidates the offload policy forbids are still listed (the evaluation says why they were
    not chosen) unless `offload` is given, in which case they are skipped to save the work.
    `inflight` counts tasks this node already sent to a target that its last telemetry may not
    show yet (so a burst does not herd onto one neighbour); `powers` holds known power models of
    neighbours (unknown ones get the default model); `exclude` marks targets not to use;
    `held` the targets that refused an attempt and have not reported since
    (`feedback.Refusals`: their candidates are `refused`, no capacity); `cloud_state` is the
    cloud node's own load report, when this node hears one (`cloud_candidate`); `zs` the
    calibrated z of the latency quantile per target (`calibration.QuantileCalibrator.zs`);
    `late` how overdue each target's worst attempt in flight is (`InFlight.lateness`): it is
    added to that target's wait.
    """
    now, local = snapshot.now, snapshot.local
    lp = local_power or DEFAULT_POWER
    powers = powers or {}
    inflight = inflight or {}
    out = [local_candidate(task, local, bank, now, power=lp, max_queue=local_max_queue,
                           extra=inflight.get(local.node_id, 0))]
    if offload is None or offload.allows(Placement.NEIGHBOUR):
        for node in snapshot.neighbours:
            if node.role != "edge" or node.node_id == local.node_id:
                continue
            out.append(neighbour_candidate(
                task, node, local, bank, now, power=powers.get(node.node_id, DEFAULT_POWER),
                origin_power=lp, extra=inflight.get(node.node_id, 0),
                excluded=node.node_id in exclude,
            ))
    if cloud is not None and (offload is None or offload.allows(Placement.CLOUD)):
        out.append(cloud_candidate(task, cloud, local, bank, now, origin_power=lp,
                                   inflight=inflight.get(cloud.node_id, 0), state=cloud_state))
    if held:
        mark_refused(out, held)
    if zs:
        for cand in out:
            cand.z_quantile = zs.get(cand.node_id)
    if late:
        for cand in out:
            extra = late.get(cand.node_id, 0.0)
            if extra > 0.0 and cand.placement is not Placement.LOCAL:
                cand.est_wait_s = min(MAX_WAIT_S, cand.est_wait_s + extra)
                cand.wait_std_s = min(MAX_WAIT_S, cand.wait_std_s + extra)
    return out


def mark_refused(candidates: list[Candidate], held: Collection[str]) -> None:
    """Mark the candidates of targets that refused an attempt and have not reported since
    (this node's own executor is never held back: its load is live)."""
    for cand in candidates:
        if cand.node_id in held and cand.placement is not Placement.LOCAL:
            cand.refused = True
