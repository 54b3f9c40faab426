"""Simulator-only policies: the clairvoyant oracle and EdgeCloudSim's threshold orchestrators.

They implement the core `Policy` protocol (`decide(task, candidates, now) -> Decision`), so the
engine drives them exactly like the production policies from `edgesched.core.policies`.

The `ecs_*` policies reproduce the *decision rules* of the threshold-based orchestrators that
ship with EdgeCloudSim (Sonmez et al.; `BasicEdgeOrchestrator`: NETWORK_BASED,
UTILIZATION_BASED, HYBRID), applied to edgesched's own candidates. They do not reproduce
EdgeCloudSim's network, mobility or load models: the workload and the world are ours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgesched.core.costmodel import ALL_CONSTRAINTS, BASELINE_CONSTRAINTS, CostParams
from edgesched.core.model import Candidate, Decision, Placement, TaskSpec
from edgesched.core.policies import POLICY_NAMES, Policy, evaluate_all, make_decision, make_policy

ECS_WAN_THRESHOLD_BPS = 6e6  # EdgeCloudSim: offload to the cloud above 6 Mbps of WAN bandwidth
ECS_UTILISATION_THRESHOLD = 0.8  # ... or when mean edge utilisation is above 80 %

SIM_POLICY_NAMES: tuple[str, ...] = ("ecs_network", "ecs_utilization", "ecs_hybrid", "oracle")
ALL_POLICY_NAMES: tuple[str, ...] = (*POLICY_NAMES, *SIM_POLICY_NAMES)

# The oracle judges true latencies: no spread, so the deadline quantile is the mean itself.
ORACLE_PARAMS = CostParams(
    energy_weight=0.0, battery_energy_weight=0.0, battery_energy_weight_max=0.0,
    latency_quantile=0.5, suspect_penalty_s=0.0,
)


class OraclePolicy:
    """Clairvoyant: the engine hands it candidates built from the true state of the world
    (true execution time, current link state and share, exact queue wait on arrival); it
    picks the lowest true latency that meets the deadline, then the next lowest, and so on.
    """

    name = "oracle"

    def __init__(self, params: CostParams = ORACLE_PARAMS) -> None:
        self.params = params

    def decide(self, task: TaskSpec, candidates: Sequence[Candidate], now: float) -> Decision:
        evals = evaluate_all(task, candidates, self.params, now, ALL_CONSTRAINTS)
        ranked = sorted((i for i, e in enumerate(evals) if e.feasible),
                        key=lambda i: evals[i].latency_mean_s)
        return make_decision(self.name, evals, ranked)


def edge_utilisation(candidates: Sequence[Candidate]) -> float:
    """Mean utilisation of the edge nodes as reported (running / slots, capped at 1)."""
    edge = [c for c in candidates if c.placement is not Placement.CLOUD and c.slots > 0]
    if not edge:
        return 0.0
    return sum(min(1.0, c.running / c.slots) for c in edge) / len(edge)


def wan_bandwidth_bps(candidates: Sequence[Candidate]) -> float | None:
    """The measured (estimated) bandwidth of the link to the cloud, if there is a cloud."""
    for c in candidates:
        if c.placement is Placement.CLOUD and c.link is not None:
            return c.link.bandwidth_bps
    return None


class EcsThresholdPolicy:
    """EdgeCloudSim's threshold orchestrator: the cloud when the rule holds, else the local
    edge node (the device's own gateway); the other one is the fallback."""

    def __init__(self, name: str, params: CostParams) -> None:
        if name not in ("ecs_network", "ecs_utilization", "ecs_hybrid"):
            raise ValueError(f"unknown EdgeCloudSim rule {name!r}")
        self.name = name
        self.params = params

    def wants_cloud(self, candidates: Sequence[Candidate]) -> bool:
        bw = wan_bandwidth_bps(candidates)
        network = bw is not None and bw > ECS_WAN_THRESHOLD_BPS
        busy = edge_utilisation(candidates) > ECS_UTILISATION_THRESHOLD
        if self.name == "ecs_network":
            return network
        if self.name == "ecs_utilization":
            return busy and bw is not None
        return network and busy

    def decide(self, task: TaskSpec, candidates: Sequence[Candidate], now: float) -> Decision:
        evals = evaluate_all(task, candidates, self.params, now, BASELINE_CONSTRAINTS)
        first = Placement.CLOUD if self.wants_cloud(candidates) else Placement.LOCAL
        second = Placement.LOCAL if first is Placement.CLOUD else Placement.CLOUD
        ranked = [i for p in (first, second) for i, e in enumerate(evals)
                  if e.placement is p and e.feasible]
        return make_decision(self.name, evals, ranked)


def make_sim_policy(name: str, params: CostParams, rng: np.random.Generator) -> Policy:
    """Any policy of contract §5 by name: the core's, the EdgeCloudSim rules or the oracle."""
    if name == "oracle":
        return OraclePolicy()
    if name.startswith("ecs_"):
        return EcsThresholdPolicy(name, params)
    return make_policy(name, params, rng)
