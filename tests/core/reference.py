"""A readable reference of the cost model (the oracle of the property tests), and `evaluate`,
a one-candidate convenience over the live `costmodel.evaluate_candidate`.

The reference is written from the formulas of docs/cost-model.md (and the docstring of
edgesched/core/costmodel.py), not from the live code: the live code must agree with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgesched.core.costmodel import ALL_CONSTRAINTS, CostParams, evaluate_candidate
from edgesched.core.model import (
    Candidate,
    CandidateEval,
    Liveness,
    Placement,
    PowerModel,
    RejectReason,
    TaskSpec,
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


def predict(task: TaskSpec, cand: Candidate, params: CostParams) -> Prediction:
    """T = up + rtt + wait + exec + down; var = exec² + rtt² + wait² + (up² + down²)·(bw_std/bw)²;
    E = compute on an edge target + the radios of both ends."""
    ex, link = cand.exec, cand.link
    remote = cand.placement is not Placement.LOCAL and link is not None
    up = 8.0 * task.input_bytes / link.bandwidth_bps if remote and link else 0.0
    down = 8.0 * task.output_bytes / link.bandwidth_bps if remote and link else 0.0
    rtt = link.rtt_s if remote and link else 0.0
    rtt_std = link.rtt_std_s if remote and link else 0.0
    rel_bw = link.bandwidth_std_bps / link.bandwidth_bps if remote and link else 0.0
    mean = up + rtt + cand.est_wait_s + ex.mean_s + down
    var = ex.std_s**2 + rtt_std**2 + cand.wait_std_s**2 + (up**2 + down**2) * rel_bw**2
    std = math.sqrt(var)
    origin = cand.origin_power or PowerModel()
    e_origin = origin.tx_w * up + origin.rx_w * down if remote else 0.0
    e_target = 0.0
    if cand.placement is not Placement.CLOUD:
        e_target = cand.power.compute_energy_j(ex.mean_s)
        if remote:
            e_target += cand.power.rx_w * up + cand.power.tx_w * down
    return Prediction(latency_mean_s=mean, latency_std_s=std, latency_q_s=mean + params.z * std,
                      upload_s=up, download_s=down, energy_origin_j=e_origin,
                      energy_target_j=e_target)


def miss_chance(pred: Prediction, params: CostParams, remaining_s: float) -> float:
    """P(latency > remaining) for a normal latency whose z(q)-quantile is T_q."""
    spread = (pred.latency_q_s - pred.latency_mean_s) / params.z if params.z > 0 else 0.0
    if spread <= 0.0:
        return 0.0 if remaining_s >= pred.latency_mean_s else 1.0
    return 0.5 * math.erfc((remaining_s - pred.latency_mean_s) / (spread * math.sqrt(2.0)))


def weighted_cost(cand: Candidate, pred: Prediction, params: CostParams,
                  remaining_s: float | None = None) -> float:
    """w_t·T + Σ w_e(battery of the node spending it)·E + w_$·money (+ suspect penalty)
    (+ w_t·w_miss·left·P_miss with a deadline `remaining_s` away)."""
    origin_battery = cand.battery if cand.placement is Placement.LOCAL else cand.origin_battery
    score = (params.latency_weight * pred.latency_mean_s
             + params.energy_weight_at(origin_battery) * pred.energy_origin_j
             + params.energy_weight_at(cand.battery) * pred.energy_target_j
             + params.money_weight * cand.money_cost)
    if cand.liveness is Liveness.SUSPECT:
        score += params.latency_weight * params.suspect_penalty_s
    if remaining_s is not None:
        score += (params.latency_weight * params.miss_weight * remaining_s
                  * miss_chance(pred, params, remaining_s))
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
    """The live evaluation of one candidate; `remaining_s` defaults to the task's deadline."""
    if remaining_s is None and use_task_deadline:
        remaining_s = task.deadline_s
    return evaluate_candidate(task, cand, params, remaining_s, enforce)
