"""What each simulated node knows and how it decides: the daemon's view, or the oracle's truth.

`DaemonBrain` gives a node exactly what an edgesched daemon has: a `ClusterView` fed by the
neighbours' periodic telemetry (so neighbour state is up to one interval old, and a dead node
is noticed only by silence or its Will), an `EstimatorBank` that starts from priors and learns
from the node's own completions, and a policy from the core. `OracleBrain` replaces the
candidates with the true state of the world at decision time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from edgesched.core.admission import admit
from edgesched.core.calibration import CalibrationParams, QuantileCalibrator
from edgesched.core.candidates import CloudTarget, build_candidates, exec_estimate, exec_means
from edgesched.core.costmodel import CostParams
from edgesched.core.estimators import EstimatorBank, ExecPrior
from edgesched.core.fallback import FallbackParams, NextAttempt, Terminal, next_attempt
from edgesched.core.feedback import InFlight, learn_from_reply
from edgesched.core.model import (
    Candidate,
    CandidateEval,
    ClusterSnapshot,
    Decision,
    ExecEstimate,
    LinkEstimate,
    Liveness,
    NodeState,
    Placement,
    TaskSpec,
)
from edgesched.core.policies import Policy
from edgesched.core.probing import ProbeParams, UplinkProbes
from edgesched.core.queueing import fifo_wait
from edgesched.core.shortlist import Shortlist
from edgesched.core.view import ClusterView, NodeAnnouncement, NodeTelemetry, ViewParams
from edgesched.sim.scenario import CLOUD_ID, Scenario
from edgesched.sim.world import SimNode, SimTask, World, exec_time

# How long (simulated s) an estimator's answer is reused when nothing new was observed about
# its key: its staleness weight exp(-(age/decay)²) moves by at most 0.86/decay per second
# (decay 300-600 s), so the blend between learned value and prior moves by < 0.3%.
ESTIMATE_TTL_S = 1.0


class MemoBank(EstimatorBank):
    """The core EstimatorBank, reusing an answer until it learns something new about that key
    or ESTIMATE_TTL_S of simulated time passes. Between observations an estimate changes only
    by its staleness decay (time constants of 300-600 s), so reuse changes nothing measurable,
    and it spares the same computation for every candidate of every task.

    One answer is kept per (task type, node): the one for the latest input size asked about
    (a type's sizes either repeat, and hit, or are drawn from a distribution, and would not).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # (input size, reusable until, answer) and (reusable until, answer); simulated time
        # only moves forward, and a restarted node gets a new bank.
        self._exec_memo: dict[tuple[str, str], tuple[float, float, ExecEstimate]] = {}
        self._link_memo: dict[str, tuple[float, LinkEstimate]] = {}

    def exec_estimate(self, task_type: str, node_id: str, input_bytes: float,
                      now: float) -> ExecEstimate:
        key = (task_type, node_id)
        hit = self._exec_memo.get(key)
        if hit is not None and hit[0] == input_bytes and now <= hit[1]:
            return hit[2]
        est = super().exec_estimate(task_type, node_id, input_bytes, now)
        self._exec_memo[key] = (input_bytes, now + ESTIMATE_TTL_S, est)
        return est

    def link(self, target: str, now: float) -> LinkEstimate:
        hit = self._link_memo.get(target)
        if hit is not None and now <= hit[0]:
            return hit[1]
        est = super().link(target, now)
        self._link_memo[target] = (now + ESTIMATE_TTL_S, est)
        return est

    def observe_exec(self, task_type: str, node_id: str, input_bytes: float, seconds: float,
                     now: float) -> bool:
        memo = self._exec_memo
        memo.pop((task_type, node_id), None)
        # the nodes that have not run the type borrow this lesson (EstimatorBank._borrowed)
        for key in [k for k in memo if k[0] == task_type and not self.has_exec(*k)]:
            del memo[key]
        return super().observe_exec(task_type, node_id, input_bytes, seconds, now)

    def observe_rtt(self, target: str, seconds: float, now: float) -> bool:
        self._link_memo.pop(target, None)
        return super().observe_rtt(target, seconds, now)

    def observe_transfer(self, target: str, nbytes: float, seconds: float, now: float) -> bool:
        self._link_memo.pop(target, None)
        return super().observe_transfer(target, nbytes, seconds, now)

    def observe_probe(self, target: str, rtts: Sequence[float], nbytes: float,
                      seconds: Sequence[float], now: float) -> bool:
        self._link_memo.pop(target, None)
        return super().observe_probe(target, rtts, nbytes, seconds, now)

    def set_speed(self, node_id: str, speed: float) -> None:
        self._exec_memo.clear()
        super().set_speed(node_id, speed)


class DaemonBrain:
    """One edge node's decision making, with only the information its daemon would have.

    Built by the engine (through runner's brain factory) with its node and the `World`; the
    engine calls it, it never calls the engine: it reads its node and the world, and the
    engine passes the simulated time to every call that needs it."""

    probes_uplink = True  # learns its uplink by probing it (core/probing.py) as a daemon does

    def __init__(self, node: SimNode, world: World, policy: Policy, params: CostParams,
                 fallback: FallbackParams) -> None:
        self.world = world
        self.node = node
        self.policy = policy
        self.params = params
        self.fallback = fallback
        sc = world.scenario
        self._types = sc.task_types
        self._type_names = frozenset(t.name for t in sc.task_types)
        self._view_params = ViewParams(interval_s=sc.telemetry_interval_s)
        self.cloud = None if world.cloud is None else CloudTarget(
            slots=sc.cloud.slots, money_cost=sc.cloud.cost_per_task)
        # Attempts under way that their targets' telemetry may not show yet (core/feedback.py,
        # as the daemon counts them), and when each target's latest telemetry arrived.
        self.inflight = InFlight()
        self.reported_at: dict[str, float] = {}
        self._own_cache: tuple[tuple[str, float, float], ExecEstimate] | None = None
        self.restarted(0.0)
        for other in world.nodes:
            if other is not node:
                self.announce(other, online=True, now=0.0)

    def restarted(self, now: float) -> None:
        """A (re)start: empty view, estimators back at their priors (they live in memory)."""
        self.view = ClusterView(local_id=self.node.id, params=self._view_params)
        priors = {t.name: ExecPrior(mean_s=self.world.prior_exec(i), cv=0.5)
                  for i, t in enumerate(self._types)}
        # Priors, as an operator configures them: the node's own speed (executor.speed), the
        # cloud tier's relative speed, and the nominal figures of its links (LAN, uplink).
        # Neighbours' speeds arrive with their state documents (see `announce`); everything
        # else is learned from completions.
        speeds = {self.node.id: self.node.speed}
        if self.world.cloud is not None:
            speeds[CLOUD_ID] = self.world.cloud.speed
        self.bank = MemoBank(exec_priors=priors, speeds=speeds,
                             link_priors=self._nominal_links())
        self.inflight = InFlight()
        # What the latency quantile covers per target, and its correction (as the daemon's).
        self.calibrator = QuantileCalibrator(
            CalibrationParams(quantile=self.params.latency_quantile))
        # The neighbours a decision scores, as the daemon picks them (core/shortlist.py).
        self.shortlist = Shortlist(self.view, max_candidates=self.params.max_candidates,
                                   rtt_of=lambda node_id, now: self.bank.link(node_id, now).rtt_s)
        self.uplink_probes = UplinkProbes(ProbeParams(
            interval_s=self.world.scenario.cloud.probe_interval_s))
        self._own_cache = None

    def _nominal_links(self) -> dict[str, LinkEstimate]:
        sc, me = self.world.scenario, self.node.id
        lan = LinkEstimate(rtt_s=sc.links.rtt_s, rtt_std_s=0.25 * sc.links.rtt_s,
                           bandwidth_bps=sc.links.bandwidth_bps,
                           bandwidth_std_bps=0.1 * sc.links.bandwidth_bps)
        out = {n.id: lan for n in sc.nodes if n.id != me}
        up = sc.node(me).uplink or sc.cloud
        out[CLOUD_ID] = LinkEstimate(rtt_s=up.rtt_s, rtt_std_s=0.25 * up.rtt_s,
                                     bandwidth_bps=up.bandwidth_bps,
                                     bandwidth_std_bps=0.1 * up.bandwidth_bps)
        return out

    # ---- what the node hears --------------------------------------------------------------
    def announce(self, other: SimNode, *, online: bool, now: float,
                 incarnation: int | None = None) -> None:
        """A state document of `other` (its current incarnation unless told: a Will)."""
        inc = other.incarnation if incarnation is None else incarnation
        doc = NodeAnnouncement(incarnation=inc, online=online,
                               task_types=self._type_names, slots=other.slots)
        self.view.observe_announcement(other.id, doc, now=now)
        if online:  # the state document's `speed` (executor.speed of that node)
            self.bank.set_speed(other.id, other.speed)

    def telemetry(self, other: SimNode, tel: NodeTelemetry, now: float) -> None:
        self.view.observe_telemetry(other.id, tel, now=now)
        self.reported_at[other.id] = now

    def uplink_reading(self, bps: float, rtt_s: float, now: float) -> None:
        """Device telemetry `uplink_bps`/`rtt_s` about the cloud link, fed into the estimators
        the way the daemon's LinkReadingFeeder does (node/telemetry.py)."""
        self.bank.observe_rtt(CLOUD_ID, rtt_s, now)
        self.bank.observe_bandwidth(CLOUD_ID, bps, now)

    def probe_due(self, now: float) -> int | None:
        """The payload bytes of an uplink probe to send now, or None (core/probing.py)."""
        return self.uplink_probes.due_on(self.bank, CLOUD_ID, now)

    def probed(self, rtts: Sequence[float], nbytes: float, seconds: Sequence[float],
               now: float) -> None:
        """An uplink probe's round trips and exchanges, learned as the daemon learns them."""
        self.uplink_probes.learn(self.bank, CLOUD_ID, rtts, nbytes, seconds, now)

    # ---- deciding -------------------------------------------------------------------------
    def local_state(self, now: float) -> NodeState:
        node = self.node
        return NodeState(
            node_id=node.id, role="edge", liveness=Liveness.ONLINE, incarnation=0,
            last_seen=now, slots=node.slots, running=len(node.running),
            queued=len(node.queue), est_wait_s=node.est_wait_s(now), cpu_util=0.0,
            battery=node.battery_level(now), power_w=None, task_types=self._type_names,
        )

    def candidates(self, task: SimTask, now: float) -> list[Candidate]:
        """The core's candidates for this task (`build_candidates`), from a snapshot of the
        shortlisted neighbours (as the daemon's) and an estimator bank that reuses its answers
        until it learns something."""
        local = self.local_state(now)
        spec, node = task.spec, self.node
        snap = ClusterSnapshot(now=now, local=local, neighbours=self.shortlist.neighbours(
            now, exec_means(spec, self.bank, now)))
        out = build_candidates(
            spec, snap, self.bank, offload=spec.offload, cloud=self.cloud,
            local_power=node.power, local_max_queue=node.queue_size,
            inflight=self.inflight.unreported(self.reported_at),
            late=self.inflight.lateness(now), zs=self.calibrator.zs,
        )
        self._own_cache = ((spec.task_type, spec.work, now), out[0].exec)
        return out

    def decide(self, task: SimTask, now: float) -> Decision:
        return self.policy.decide(task.spec, self.candidates(task, now), now)

    def next_attempt(self, task: SimTask, now: float) -> NextAttempt | Terminal:
        return next_attempt(
            task.decision, tried=task.tried, elapsed_s=now - task.arrival,
            deadline_s=task.spec.deadline_s,
            local_allowed=True, params=self.fallback,
        )

    # ---- what the node learns -------------------------------------------------------------
    def dispatched(self, target: str, now: float, expect_s: float = math.inf) -> int:
        """Count an attempt to `target`, expected back within `expect_s`; returns the token
        to pass to `settled`."""
        if target == self.node.id:  # this node's own queue is in its live local state
            return -1
        return self.inflight.sent(target, now, expect_s)

    def settled(self, target: str, token: int, now: float) -> None:
        """The attempt was answered (a result or a refusal)."""
        self.inflight.settled(target, token, now)

    def gave_up(self, target: str, token: int, now: float) -> None:
        """The attempt timed out: its lateness is held as evidence (`InFlight.gave_up`)."""
        self.inflight.gave_up(target, token, now)

    def executed(self, type_name: str, work: float, exec_s: float, now: float) -> None:
        """This node ran a task (its own or a neighbour's): it learns its own speed."""
        self.bank.observe_exec(type_name, self.node.id, work, exec_s, now)
        self._own_cache = None

    def calibrate(self, target: CandidateEval, latency_s: float) -> None:
        """An attempt chosen by this node finished in `latency_s` (its decision's prediction
        in `target`): the calibrator learns what the latency quantile covers."""
        self.calibrator.observe(target.node_id, target.placement.value, actual_s=latency_s,
                                mean_s=target.latency_mean_s, std_s=target.latency_std_s,
                                q_s=target.latency_q_s)

    def observed(self, task: SimTask, target: SimNode, exec_s: float, wait_s: float,
                 now: float) -> None:
        """A reply from a remote target, learned from as the daemon learns from one
        (core/feedback.py): its execution time, and the round trip minus the target's own
        time as one exchange of the input and output bytes."""
        if target is self.node:
            return  # already learned in `executed`, as the daemon's executor path does
        learn_from_reply(self.bank, task.spec, target.id, local=False,
                         round_trip_s=now - task.started, wait_s=wait_s, exec_s=exec_s,
                         nbytes=(task.in_bits + task.out_bits) / 8.0, now=now)

    def own_exec_estimate(self, task: SimTask, now: float) -> ExecEstimate:
        spec = task.spec
        key = (spec.task_type, spec.work, now)
        if self._own_cache is not None and self._own_cache[0] == key:
            return self._own_cache[1]  # just computed for the local candidate, same inputs
        return exec_estimate(spec, self.node.id, self.bank, now)


class OracleBrain(DaemonBrain):
    """Decides on the truth: real execution times, current link states, exact queue waits."""

    probes_uplink = False  # it reads the links' true state

    def candidates(self, task: SimTask, now: float) -> list[Candidate]:
        world, origin = self.world, self.node
        out = [self._true_candidate(task, origin, Placement.LOCAL, now)]
        if task.spec.offload.allows(Placement.NEIGHBOUR):
            out += [self._true_candidate(task, n, Placement.NEIGHBOUR, now)
                    for n in world.nodes if n is not origin and n.alive]
        if world.cloud is not None and task.spec.offload.allows(Placement.CLOUD):
            out.append(self._true_candidate(task, world.cloud, Placement.CLOUD, now))
        return out

    def _true_candidate(self, task: SimTask, node: SimNode, placement: Placement,
                        now: float) -> Candidate:
        origin = self.node
        link_est = None
        arrive_after = 0.0
        if placement is not Placement.LOCAL:
            link = self.world.links[(origin.id, node.id)]
            back = self.world.links[(node.id, origin.id)]
            # One bandwidth figure per candidate: the worse of the two directions' shares.
            bw = min(link.share_bps(), back.share_bps())
            link_est = LinkEstimate(rtt_s=link.rtt_s, bandwidth_bps=bw)
            arrive_after = task.in_bits / link.share_bps() + link.rtt_s / 2.0
        wait = max(0.0, true_slot_free_in(node, now) - arrive_after)
        battery, origin_battery = node.battery_level(now), origin.battery_level(now)
        exec_s = exec_time(task, node)
        money = self.world.scenario.cloud.cost_per_task if node.is_cloud else 0.0
        return Candidate(
            node_id=node.id, placement=placement, liveness=Liveness.ONLINE, age_s=0.0,
            slots=node.slots, running=len(node.running), queued=len(node.queue),
            est_wait_s=wait, wait_std_s=0.0, battery=battery, power=node.power, link=link_est,
            exec=ExecEstimate(mean_s=exec_s), supports_type=True, money_cost=money,
            max_queue=None, origin_power=origin.power, origin_battery=origin_battery,
            excluded=False,
        )


def true_slot_free_in(node: SimNode, now: float) -> float:
    """Exactly how long until a task arriving now would start on `node` (FIFO, k slots)."""
    return fifo_wait(node.slots, [job.start + job.exec_s - now for job in node.running],
                     [job.exec_s for job in node.queue])


def admit_here(node: SimNode, task: SimTask, exec_s: float, now: float) -> bool:
    """The target's admission control (core/admission.py), with the target's own estimate."""
    remaining = None if task.deadline is None else task.deadline - now
    verdict = admit(slots=node.slots, running=len(node.running), queued=len(node.queue),
                    queue_limit=node.queue_size, exec_s=exec_s, wait_s=node.est_wait_s(now),
                    remaining_s=remaining)
    return verdict.accepted


def task_spec(scenario: Scenario, task: SimTask) -> TaskSpec:
    """The core's view of a simulated task. A simulated daemon knows the input's size, not the
    work it hides (that is the simulator's truth, `task.work`): its estimators are linear in
    the input bytes, as a daemon's are for a task type without `work_units`."""
    tt = scenario.task_types[task.ttype]
    in_bytes = task.in_bits / 8.0
    return TaskSpec(task_type=tt.name, input_bytes=in_bytes, output_bytes=task.out_bits / 8.0,
                    work=in_bytes, deadline_s=tt.deadline_s, offload=tt.offload,
                    submitted_at=task.arrival,
                    # a type whose input says its execution time (like `sleep`): known exactly
                    exact_s=task.work if tt.exact else None)
