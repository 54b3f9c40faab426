"""The latency/energy cost model: predicts one candidate's latency, energy and score for a task.

For a task with input L_in and output L_out bytes and a candidate c (docs/cost-model.md):

    T_c   = 8·L_in/bw + rtt + wait + exec + 8·L_out/bw          (local: wait + exec)
    var_c = exec_std² + rtt_std² + wait_std² + (T_up² + T_down²)·(bw_std/bw)²
    T_q   = T_c + z(q)·sqrt(var_c)                             (z: calibrated per target)
    P_miss = 1 - Φ(z(q)·(left - T_c)/(T_q - T_c))             (left: time to the deadline)
    E_c   = compute energy on c (edge only; (busy_w-idle_w)·exec, or κ·f³·exec)
          + origin radio (tx_w·T_up + rx_w·T_down) + target radio (rx_w·T_up + tx_w·T_down)
    score = w_t·T_c + Σ_node w_e(battery_node)·E_node + w_$·money (+ w_t·suspect_penalty_s)
            + w_t·w_miss·left·P_miss                           (a deadline: T_c > left rules out)

Bandwidth is in bits per second, sizes in bytes. The cloud's own energy is not counted (it is
not ours to save), matching how the simulator reports `energy_j_per_task`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist

from edgesched.core.model import (
    Candidate,
    CandidateEval,
    Liveness,
    Placement,
    PowerModel,
    RejectReason,
    TaskSpec,
    require_finite,
)

DEFAULT_POWER = PowerModel()  # the deciding node's radio when a candidate does not say

# Every hard constraint. Baseline policies enforce only BASELINE_CONSTRAINTS.
ALL_CONSTRAINTS: frozenset[RejectReason] = frozenset(RejectReason)
BASELINE_CONSTRAINTS: frozenset[RejectReason] = frozenset(
    {
        RejectReason.UNSUPPORTED_TYPE,
        RejectReason.OFFLOAD_POLICY,
        RejectReason.EXCLUDED,
        RejectReason.OFFLINE,
        RejectReason.STALE,
        RejectReason.NO_CAPACITY,
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class CostParams:
    """Weights and limits of the cost model (see docs/cost-model.md for why these defaults).

    Weights are in "seconds of latency per unit": the score is in seconds. On mains power a
    joule is worth 2 ms, so latency dominates; on a battery a joule is worth 50 ms at or above
    the knee, rising linearly to 500 ms at the battery floor.
    """

    latency_weight: float = 1.0  # per second of mean predicted latency
    energy_weight: float = 0.002  # per joule spent on a mains-powered edge node
    battery_energy_weight: float = 0.05  # per joule on a battery node at or above the knee
    battery_energy_weight_max: float = 0.5  # per joule on a battery node at the floor
    money_weight: float = 0.0  # per unit of money (cloud cost per task)
    battery_knee: float = 0.5  # below this charge the energy weight starts rising
    battery_floor: float = 0.1  # battery-powered neighbours below this are not used
    battery_floor_local: bool = False  # also refuse to run on this node below the floor
    latency_quantile: float = 0.95  # the predicted quantile a miss probability is read from
    # A deadline's weight: the score adds miss_weight x the time left x the probability of
    # missing it (0 = the deadline only rules out targets whose mean is past it).
    miss_weight: float = 0.3
    stale_after_s: float = 5.0  # candidate state older than this is not trusted
    suspect_penalty_s: float = 0.25  # score penalty for a suspect (missed heartbeats) target
    # When no candidate is predicted to meet the deadline: False = nothing is chosen (the task
    # is refused), True = try the least late ones (Decision.best_effort).
    deadline_best_effort: bool = False
    # At most this many edge neighbours are scored per decision (core/shortlist.py). Four:
    # in a 50-node cluster a short list spreads origins over idle neighbours (fewer misses and
    # a lower mean than 8, 16 or all of them; docs/scaling.md has the measurement).
    max_candidates: int = 4
    z: float = field(init=False, default=0.0)  # z-score of latency_quantile (derived)

    def __post_init__(self) -> None:
        for name in (
            "latency_weight",
            "energy_weight",
            "battery_energy_weight",
            "battery_energy_weight_max",
            "money_weight",
            "suspect_penalty_s",
            "miss_weight",
        ):
            require_finite(name, getattr(self, name), minimum=0.0)
        for name in ("battery_knee", "battery_floor"):
            require_finite(name, getattr(self, name), minimum=0.0)
            if getattr(self, name) > 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)!r}")
        require_finite("stale_after_s", self.stale_after_s, minimum=0.0)
        if self.max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {self.max_candidates!r}")
        q = self.latency_quantile
        if not (math.isfinite(q) and 0.5 <= q < 1.0):
            raise ValueError(f"latency_quantile must be within [0.5, 1), got {q!r}")
        object.__setattr__(self, "z", NormalDist().inv_cdf(q))

    def energy_weight_at(self, battery: float | None) -> float:
        """Weight of one joule spent on a node with this charge (None = mains powered)."""
        if battery is None:
            return self.energy_weight
        base, top = self.battery_energy_weight, self.battery_energy_weight_max
        knee, floor = self.battery_knee, self.battery_floor
        if battery >= knee or top <= base:
            return base
        span = knee - floor
        drained = 1.0 if span <= 0.0 or battery <= floor else (knee - battery) / span
        return base + (top - base) * drained

    def scaled(self, k: float) -> CostParams:
        """The same preferences with every weight multiplied by k > 0 (same decisions)."""
        if not (math.isfinite(k) and k > 0):
            raise ValueError(f"k must be finite and > 0, got {k!r}")
        return replace(
            self,
            latency_weight=self.latency_weight * k,
            energy_weight=self.energy_weight * k,
            battery_energy_weight=self.battery_energy_weight * k,
            battery_energy_weight_max=self.battery_energy_weight_max * k,
            money_weight=self.money_weight * k,
        )


def check(
    cand: Candidate,
    params: CostParams,
    latency_mean_s: float,
    remaining_s: float | None,
    task: TaskSpec,
    enforce: frozenset[RejectReason] = ALL_CONSTRAINTS,
) -> RejectReason | None:
    """The first hard constraint in `enforce` that `cand` violates, or None.

    Order: unsupported type, offload policy, excluded, offline, stale, capacity, battery
    floor, deadline (a target whose mean latency is past the time left: more likely to miss
    than not; a likely one is scored by its miss probability instead, `miss_probability`). A
    suspect target is allowed; the score carries a penalty instead. The battery floor protects
    neighbours' batteries; this node's own floor applies only with `battery_floor_local` (else
    the last resort would be refusing).
    """
    if not cand.supports_type and RejectReason.UNSUPPORTED_TYPE in enforce:
        return RejectReason.UNSUPPORTED_TYPE
    if not task.offload.allows(cand.placement) and RejectReason.OFFLOAD_POLICY in enforce:
        return RejectReason.OFFLOAD_POLICY
    if cand.excluded and RejectReason.EXCLUDED in enforce:
        return RejectReason.EXCLUDED
    if cand.liveness is Liveness.OFFLINE and RejectReason.OFFLINE in enforce:
        return RejectReason.OFFLINE
    if cand.age_s > params.stale_after_s and RejectReason.STALE in enforce:
        return RejectReason.STALE
    if _no_capacity(cand) and RejectReason.NO_CAPACITY in enforce:
        return RejectReason.NO_CAPACITY
    if (cand.battery is not None and cand.battery < params.battery_floor
            and (cand.placement is Placement.NEIGHBOUR or params.battery_floor_local)
            and RejectReason.BATTERY_FLOOR in enforce):
        return RejectReason.BATTERY_FLOOR
    if (remaining_s is not None and latency_mean_s > remaining_s
            and RejectReason.DEADLINE in enforce):
        return RejectReason.DEADLINE
    return None


def miss_probability(mean_s: float, q_s: float, z: float, remaining_s: float) -> float:
    """The chance that a latency of mean `mean_s` whose quantile of normal score `z` is `q_s`
    (the calibrated T_q) exceeds `remaining_s`: a normal spread read off the quantile."""
    if q_s <= mean_s or z <= 0.0:  # no spread
        return 0.0 if remaining_s >= mean_s else 1.0
    return 1.0 - _NORMAL.cdf(z * (remaining_s - mean_s) / (q_s - mean_s))


_NORMAL = NormalDist()


def _no_capacity(cand: Candidate) -> bool:
    """No slot at all, every slot busy and the admission queue full, or it refused an attempt
    and has not reported room since."""
    if cand.slots <= 0 or cand.refused:
        return True
    return cand.max_queue is not None and cand.queued >= cand.max_queue and (
        cand.running >= cand.slots
    )


def _terms(task: TaskSpec, cand: Candidate) -> tuple[float, float, float, float]:
    """Latency mean and variance, energy on the deciding node and on the target: the formulas
    of the module docstring for one candidate (before constraints and weights).

    A transfer of b bits over bw takes b·(1/bw) s and a radio drawing w watts spends
    w·b·(1/bw) J on it; (T_up² + T_down²)·(bw_std/bw)² is written (b_in² + b_out²)·(bw_std/bw²)²
    so that no bw² can overflow or underflow.
    """
    ex = cand.exec
    mean = cand.est_wait_s + ex.mean_s
    var = ex.std_s * ex.std_s + cand.wait_std_s * cand.wait_std_s
    compute_j = 0.0 if cand.placement is Placement.CLOUD else cand.power.compute_w * ex.mean_s
    link = cand.link
    if cand.placement is Placement.LOCAL or link is None:
        return mean, var, 0.0, compute_j
    bits_in, bits_out = 8.0 * task.input_bytes, 8.0 * task.output_bytes
    per_bit = 1.0 / link.bandwidth_bps  # seconds per bit
    t = link.bandwidth_std_bps * per_bit * per_bit
    mean += (bits_in + bits_out) * per_bit + link.rtt_s
    var += link.rtt_std_s * link.rtt_std_s + (bits_in * bits_in + bits_out * bits_out) * t * t
    origin = cand.origin_power or DEFAULT_POWER
    e_origin = (origin.tx_w * bits_in + origin.rx_w * bits_out) * per_bit
    e_target = compute_j
    if cand.placement is not Placement.CLOUD:
        e_target += (cand.power.rx_w * bits_in + cand.power.tx_w * bits_out) * per_bit
    return mean, var, e_origin, e_target


def _score(
    cand: Candidate, params: CostParams, mean: float, e_origin: float, e_target: float
) -> float:
    """The objective: w_t·T + Σ w_e(battery)·E + w_$·money, plus the suspect penalty."""
    origin_battery = cand.battery if cand.placement is Placement.LOCAL else cand.origin_battery
    score = params.latency_weight * mean
    if e_origin:  # only offloaded candidates spend radio energy on this node
        score += e_origin * params.energy_weight_at(origin_battery)
    if e_target:
        score += e_target * params.energy_weight_at(cand.battery)
    if cand.money_cost:
        score += params.money_weight * cand.money_cost
    if cand.liveness is Liveness.SUSPECT:
        score += params.latency_weight * params.suspect_penalty_s
    return score


def evaluate_candidate(
    task: TaskSpec,
    cand: Candidate,
    params: CostParams,
    remaining_s: float | None,
    enforce: frozenset[RejectReason] = ALL_CONSTRAINTS,
) -> CandidateEval:
    """Predict, check the hard constraints in `enforce`, and score one candidate.

    `remaining_s` is the time left to the task's deadline (None = no deadline).
    """
    mean, var, e_origin, e_target = _terms(task, cand)
    std = math.sqrt(var)
    z = params.z if cand.z_quantile is None else cand.z_quantile
    latency_q = mean + z * std
    reason = check(cand, params, mean, remaining_s, task, enforce)
    if reason is not None:
        score = math.inf
    else:
        score = _score(cand, params, mean, e_origin, e_target)
        if (remaining_s is not None and params.miss_weight > 0.0
                and RejectReason.DEADLINE in enforce):
            # a likely miss costs in proportion to its chance and to the time at stake: a
            # quantile past the deadline no longer rules a target out (a heavy-tailed
            # workload's every target has one), it weighs against it
            score += (params.latency_weight * params.miss_weight * remaining_s
                      * miss_probability(mean, latency_q, params.z, remaining_s))
    return CandidateEval(
        node_id=cand.node_id, placement=cand.placement, latency_mean_s=mean,
        latency_q_s=latency_q, energy_j=e_origin + e_target, money=cand.money_cost,
        score=score, feasible=reason is None, reason=reason, latency_std_s=std,
    )


def evaluate_many(
    task: TaskSpec,
    candidates: Sequence[Candidate],
    params: CostParams,
    remaining_s: float | None,
    enforce: frozenset[RejectReason] = ALL_CONSTRAINTS,
) -> list[CandidateEval]:
    """Evaluate every candidate of one decision, in candidate order."""
    return [evaluate_candidate(task, cand, params, remaining_s, enforce) for cand in candidates]
