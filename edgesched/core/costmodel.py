"""The latency/energy cost model: predicts one candidate's latency, energy and score for a task.

For a task with input L_in and output L_out bytes and a candidate c (DESIGN.md "The cost model"):

    T_c   = 8·L_in/bw + rtt + wait + exec + 8·L_out/bw          (local: wait + exec)
    var_c = exec_std² + rtt_std² + wait_std² + (T_up² + T_down²)·(bw_std/bw)²
    T_q   = T_c + z(q)·sqrt(var_c)                             (the deadline is judged on T_q)
    E_c   = compute energy on c (edge only; (busy_w-idle_w)·exec, or κ·f³·exec)
          + origin radio (tx_w·T_up + rx_w·T_down) + target radio (rx_w·T_up + tx_w·T_down)
    score = w_t·T_c + Σ_node w_e(battery_node)·E_node + w_$·money (+ w_t·suspect_penalty_s)

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
    OffloadPolicy,
    Placement,
    PowerModel,
    RejectReason,
    TaskSpec,
    require_finite,
)

INF = math.inf
_LOCAL = Placement.LOCAL
_CLOUD = Placement.CLOUD
_NEIGHBOUR = Placement.NEIGHBOUR
_DEFAULT_POWER = PowerModel()
_OFFLINE = Liveness.OFFLINE
_ANYWHERE = OffloadPolicy.ANYWHERE
_SUSPECT = Liveness.SUSPECT
_ONLINE = Liveness.ONLINE
# Enum attribute access costs ~0.1 µs each on 3.11; the hot path uses these module constants.
_UNSUPPORTED = RejectReason.UNSUPPORTED_TYPE
_OFFLOAD = RejectReason.OFFLOAD_POLICY
_EXCLUDED = RejectReason.EXCLUDED
_OFFLINE_R = RejectReason.OFFLINE
_STALE = RejectReason.STALE
_NO_CAPACITY = RejectReason.NO_CAPACITY
_BATTERY = RejectReason.BATTERY_FLOOR
_DEADLINE = RejectReason.DEADLINE

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
    latency_quantile: float = 0.95  # deadlines are judged on this quantile of latency
    stale_after_s: float = 5.0  # candidate state older than this is not trusted
    suspect_penalty_s: float = 0.25  # score penalty for a suspect (missed heartbeats) target
    # When no candidate is predicted to meet the deadline: False = nothing is chosen (the task
    # is refused), True = try the least late ones (Decision.best_effort).
    deadline_best_effort: bool = False
    z: float = field(init=False, default=0.0)  # z-score of latency_quantile (derived)

    def __post_init__(self) -> None:
        for name in (
            "latency_weight",
            "energy_weight",
            "battery_energy_weight",
            "battery_energy_weight_max",
            "money_weight",
            "suspect_penalty_s",
        ):
            require_finite(name, getattr(self, name), minimum=0.0)
        for name in ("battery_knee", "battery_floor"):
            require_finite(name, getattr(self, name), minimum=0.0)
            if getattr(self, name) > 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)!r}")
        require_finite("stale_after_s", self.stale_after_s, minimum=0.0)
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


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    """Latency and energy of one candidate, before constraints and weights."""

    latency_mean_s: float
    latency_std_s: float
    latency_q_s: float
    upload_s: float
    download_s: float
    energy_origin_j: float  # on the deciding node (radio)
    energy_target_j: float  # on the target (compute + radio); 0 for the cloud

    @property
    def energy_j(self) -> float:
        return self.energy_origin_j + self.energy_target_j


def _terms(task: TaskSpec, cand: Candidate) -> tuple[float, float, float, float, float, float]:
    """(mean latency, latency variance, upload s, download s, origin J, target J).

    Written with the same expressions as evaluate_many, so the two round alike: a transfer
    of b bits over bw takes b·(1/bw), and a radio drawing w watts spends w·b·(1/bw) on it."""
    ex = cand.exec
    mean = cand.est_wait_s + ex.mean_s
    var = ex.std_s * ex.std_s + cand.wait_std_s * cand.wait_std_s
    placement = cand.placement
    power = cand.power
    e_target = 0.0 if placement is _CLOUD else power.compute_energy_j(ex.mean_s)
    link = cand.link
    if placement is _LOCAL or link is None:
        return mean, var, 0.0, 0.0, 0.0, e_target
    per_bit = 1.0 / link.bandwidth_bps  # seconds per bit
    bits_in, bits_out = 8.0 * task.input_bytes, 8.0 * task.output_bytes
    # (up² + down²)·(bw_std/bw)² = (bits_in² + bits_out²)·(bw_std/bw/bw)²
    t = link.bandwidth_std_bps * per_bit * per_bit
    rtt_std = link.rtt_std_s
    mean += (bits_in + bits_out) * per_bit + link.rtt_s
    var += rtt_std * rtt_std + (bits_in * bits_in + bits_out * bits_out) * t * t
    origin = cand.origin_power or _DEFAULT_POWER
    e_origin = (origin.tx_w * bits_in + origin.rx_w * bits_out) * per_bit
    if placement is not _CLOUD:
        e_target += (power.rx_w * bits_in + power.tx_w * bits_out) * per_bit
    return mean, var, bits_in * per_bit, bits_out * per_bit, e_origin, e_target


def predict(task: TaskSpec, cand: Candidate, params: CostParams) -> Prediction:
    """Latency (mean, std, quantile) and edge energy of running `task` on `cand`."""
    mean, var, up, down, e_origin, e_target = _terms(task, cand)
    std = math.sqrt(var)
    return Prediction(
        latency_mean_s=mean,
        latency_std_s=std,
        latency_q_s=mean + params.z * std,
        upload_s=up,
        download_s=down,
        energy_origin_j=e_origin,
        energy_target_j=e_target,
    )


def check(
    cand: Candidate,
    params: CostParams,
    latency_q_s: float,
    remaining_s: float | None,
    task: TaskSpec,
    enforce: frozenset[RejectReason] = ALL_CONSTRAINTS,
) -> RejectReason | None:
    """The first hard constraint in `enforce` that `cand` violates, or None.

    Order: unsupported type, offload policy, excluded, offline, stale, capacity, battery
    floor, deadline (judged on the latency quantile). A suspect target is allowed; the score
    carries a penalty instead. The battery floor protects neighbours' batteries; this node's
    own floor applies only with `battery_floor_local` (else the last resort would be refusing).
    """
    all_enforced = enforce is ALL_CONSTRAINTS
    if not cand.supports_type and (all_enforced or _UNSUPPORTED in enforce):
        return _UNSUPPORTED
    offload = task.offload
    if (
        offload is not _ANYWHERE
        and not offload.allows(cand.placement)
        and (all_enforced or _OFFLOAD in enforce)
    ):
        return _OFFLOAD
    if cand.excluded and (all_enforced or _EXCLUDED in enforce):
        return _EXCLUDED
    if cand.liveness is _OFFLINE and (all_enforced or _OFFLINE_R in enforce):
        return _OFFLINE_R
    if cand.age_s > params.stale_after_s and (all_enforced or _STALE in enforce):
        return _STALE
    if (cand.slots <= 0 or cand.max_queue is not None) and _no_capacity(cand) and (
        all_enforced or _NO_CAPACITY in enforce
    ):
        return _NO_CAPACITY
    if (
        cand.battery is not None
        and cand.battery < params.battery_floor
        and (cand.placement is _NEIGHBOUR or params.battery_floor_local)
        and (all_enforced or _BATTERY in enforce)
    ):
        return _BATTERY
    if (
        remaining_s is not None
        and latency_q_s > remaining_s
        and (all_enforced or _DEADLINE in enforce)
    ):
        return _DEADLINE
    return None


def _no_capacity(cand: Candidate) -> bool:
    if cand.slots <= 0:
        return True
    return cand.max_queue is not None and cand.queued >= cand.max_queue and (
        cand.running >= cand.slots
    )


def weighted_cost(cand: Candidate, pred: Prediction, params: CostParams) -> float:
    """The objective: w_t·T + Σ w_e(battery)·E + w_$·money, plus the suspect penalty."""
    return _score(cand, params, pred.latency_mean_s, pred.energy_origin_j, pred.energy_target_j)


def _score(
    cand: Candidate, params: CostParams, mean: float, e_origin: float, e_target: float
) -> float:
    origin_battery = cand.battery if cand.placement is _LOCAL else cand.origin_battery
    w_origin = params.energy_weight if origin_battery is None else (
        params.energy_weight_at(origin_battery)
    )
    target_battery = cand.battery
    w_target = params.energy_weight if target_battery is None else (
        params.energy_weight_at(target_battery)
    )
    score = params.latency_weight * mean + w_origin * e_origin + w_target * e_target
    if cand.money_cost:
        score += params.money_weight * cand.money_cost
    if cand.liveness is _SUSPECT:
        score += params.latency_weight * params.suspect_penalty_s
    return score


def evaluate(
    task: TaskSpec,
    cand: Candidate,
    params: CostParams,
    *,
    remaining_s: float | None = None,
    use_task_deadline: bool = True,
    enforce: frozenset[RejectReason] = ALL_CONSTRAINTS,
) -> CandidateEval:
    """Predict, check the hard constraints in `enforce`, and score one candidate.

    `remaining_s` is the time left to the deadline; when None and `use_task_deadline`, the
    task's own `deadline_s` is used (no time elapsed yet).
    """
    if remaining_s is None and use_task_deadline:
        remaining_s = task.deadline_s
    return evaluate_many(task, (cand,), params, remaining_s, enforce)[0]


_new_tuple = tuple.__new__  # CandidateEval built in one call, fields in order
_UNSET = object()


def evaluate_many(
    task: TaskSpec,
    candidates: Sequence[Candidate],
    params: CostParams,
    remaining_s: float | None,
    enforce: frozenset[RejectReason] = ALL_CONSTRAINTS,
) -> list[CandidateEval]:
    """Evaluate every candidate of one decision, in candidate order: the hot path.

    The formulas of `_terms`, `check` and `_score`, inlined, with what the candidates share
    (task sizes, weights, limits) looked up once, and the common case (online, fresh, room,
    charged, on time) decided without the full constraint walk: this loop is most of a
    decision's time, and at 3.5-5.5 ns per bytecode here every attribute read and call counts.
    A property test keeps it equal to `predict`/`check`/`weighted_cost`.
    """
    bits_in, bits_out = 8.0 * task.input_bytes, 8.0 * task.output_bytes
    bits_sum, bits2 = bits_in + bits_out, bits_in * bits_in + bits_out * bits_out
    z, w_t, w_e = params.z, params.latency_weight, params.energy_weight
    stale_after, floor = params.stale_after_s, params.battery_floor
    # The fast path below covers both usual constraint sets; battery and deadline are judged
    # only under ALL_CONSTRAINTS (baselines ignore them). Any other set takes `check`.
    full = enforce is ALL_CONSTRAINTS
    simple = full or enforce is BASELINE_CONSTRAINTS
    offload = task.offload
    anywhere = offload is _ANYWHERE
    deadline = INF if remaining_s is None else remaining_s
    # Every offloaded candidate carries the same origin battery: its weight is computed once.
    weight_at = params.energy_weight_at
    last_battery, last_w = math.nan, 0.0  # nan: matches no charge
    # Radio energy on the deciding node: origin_bits (W·bits) x seconds per bit, per origin.
    last_origin: object = _UNSET
    origin_bits = 0.0
    new, sqrt = _new_tuple, math.sqrt
    out: list[CandidateEval] = []
    append = out.append
    for cand in candidates:
        ex = cand.exec
        exec_s = ex.mean_s
        s_exec = ex.std_s
        s_wait = cand.wait_std_s
        mean = cand.est_wait_s + exec_s
        var = s_exec * s_exec + s_wait * s_wait
        placement = cand.placement
        link = cand.link
        if placement is _LOCAL or link is None:
            e_origin = 0.0
            e_target = 0.0 if placement is _CLOUD else cand.power.compute_w * exec_s
        else:
            # One division, then products: 3.11 specialises float `*` but not `/`.
            per_bit = 1.0 / link.bandwidth_bps  # seconds per bit
            # (up² + down²)·(bw_std/bw)² = bits2·(bw_std/bw/bw)² (no bw² to underflow)
            t = link.bandwidth_std_bps * per_bit * per_bit
            rtt_std = link.rtt_std_s
            mean += bits_sum * per_bit + link.rtt_s
            var += rtt_std * rtt_std + bits2 * t * t
            origin = cand.origin_power
            if origin is not last_origin:  # the same deciding node for every candidate
                last_origin = origin
                radio = origin or _DEFAULT_POWER
                origin_bits = radio.tx_w * bits_in + radio.rx_w * bits_out
            e_origin = origin_bits * per_bit
            if placement is _CLOUD:
                e_target = 0.0
            else:
                power = cand.power
                e_target = power.compute_w * exec_s + (
                    power.rx_w * bits_in + power.tx_w * bits_out) * per_bit
        std = sqrt(var)
        q = mean + z * std
        battery = cand.battery
        if (  # the common case needs no full check: online, fresh, room, charged, on time
            simple
            and cand.liveness is _ONLINE
            and cand.supports_type
            and not cand.excluded
            and cand.slots > 0
            and (  # room: no admission limit known, or the queue is below it, or a slot free
                (max_queue := cand.max_queue) is None
                or cand.queued < max_queue
                or cand.running < cand.slots
            )
            and cand.age_s <= stale_after
            and (anywhere or offload.allows(placement))
            and (not full or ((battery is None or battery >= floor) and q <= deadline))
        ):
            score = w_t * mean
            if e_origin:  # only offloaded candidates have radio energy on this node
                origin_battery = cand.origin_battery
                if origin_battery is None:
                    score += e_origin * w_e
                else:
                    if origin_battery != last_battery:
                        last_battery, last_w = origin_battery, weight_at(origin_battery)
                    score += e_origin * last_w
            if e_target:
                if battery is None:
                    score += e_target * w_e
                else:
                    if battery != last_battery:
                        last_battery, last_w = battery, weight_at(battery)
                    score += e_target * last_w
            money = cand.money_cost
            if money:
                score += params.money_weight * money
            append(new(CandidateEval, (cand.node_id, placement, mean, q, e_origin + e_target,
                                       money, score, True, None, std)))
        else:
            reason = check(cand, params, q, remaining_s, task, enforce)
            score = INF if reason is not None else _score(cand, params, mean, e_origin, e_target)
            append(new(CandidateEval, (cand.node_id, placement, mean, q, e_origin + e_target,
                                       cand.money_cost, score, reason is None, reason, std)))
    return out
