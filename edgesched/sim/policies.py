"""Simulator-only policies: the clairvoyant oracle and EdgeCloudSim's threshold orchestrators.

They implement the core `Policy` protocol (`decide(task, candidates, now) -> Decision`), so the
engine drives them exactly like the production policies from `edgesched.core.policies`.

The `ecs_*` policies are the NETWORK_BASED, UTILIZATION_BASED and HYBRID rules of
EdgeCloudSim's `SampleEdgeOrchestrator` (sample_app2; Sonmez et al.), as written there: the
cloud when the WAN bandwidth probe reads above 6 Mbps / when the average edge VM
utilisation is above 80 % / only when both hold; otherwise the least-loaded edge server
among *all* of them (reached over the MAN when it is not the device's own). `EcsBrain` gives
them what EdgeCloudSim's probes measure: the exact, instantaneous state of the simulated
world (docs/simulator.md says what is and is not reproduced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from edgesched.core.costmodel import ALL_CONSTRAINTS, BASELINE_CONSTRAINTS, CostParams
from edgesched.core.fallback import FallbackParams
from edgesched.core.model import Candidate, Decision, Placement, TaskSpec
from edgesched.core.policies import POLICY_NAMES, Policy, evaluate_all, make_decision, make_policy
from edgesched.sim.brains import OracleBrain
from edgesched.sim.vms import pick_vm
from edgesched.sim.world import SimNode, SimTask, World

# EdgeCloudSim's WAN probe reads 1 / (upload delay of 1024 Kb) in "Mbps" of 1024 x 1024 bit/s
# and sends to the cloud above 6 of them; its utilisation rule fires above 80 (%).
ECS_WAN_THRESHOLD_BPS = 6.0 * 1024.0 * 1024.0
ECS_UTILISATION_THRESHOLD_PCT = 80.0
ECS_MIN_TIMEOUT_S = 60.0  # attempt timeout floor of the ecs_* nodes (EdgeCloudSim has none)

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


def edge_utilisation_pct(candidates: Sequence[Candidate]) -> float:
    """Mean utilisation (%) of the edge candidates as reported (running / slots, capped);
    what an `ecs_*` rule reads when it is not given EdgeCloudSim's probe (no EcsBrain)."""
    edge = [c for c in candidates if c.placement is not Placement.CLOUD and c.slots > 0]
    if not edge:
        return 0.0
    return 100.0 * sum(min(1.0, c.running / c.slots) for c in edge) / len(edge)


def wan_bandwidth_bps(candidates: Sequence[Candidate]) -> float | None:
    """The bandwidth of the link to the cloud in the candidates, if there is a cloud."""
    for c in candidates:
        if c.placement is Placement.CLOUD and c.link is not None:
            return c.link.bandwidth_bps
    return None


class EcsThresholdPolicy:
    """EdgeCloudSim's threshold rule (`SampleEdgeOrchestrator.getDeviceToOffload`): the cloud
    when the rule holds, else the edge target; the other one is the fallback (EdgeCloudSim
    has none: there the task fails)."""

    def __init__(self, name: str, params: CostParams) -> None:
        if name not in ("ecs_network", "ecs_utilization", "ecs_hybrid"):
            raise ValueError(f"unknown EdgeCloudSim rule {name!r}")
        self.name = name
        self.params = params

    def wants_cloud(self, wan_bps: float | None, utilisation_pct: float) -> bool:
        """The rule, on the WAN probe (None: no cloud) and the edge utilisation probe."""
        if wan_bps is None:
            return False
        network = wan_bps > ECS_WAN_THRESHOLD_BPS
        busy = utilisation_pct > ECS_UTILISATION_THRESHOLD_PCT
        if self.name == "ecs_network":
            return network
        if self.name == "ecs_utilization":
            return busy
        return network and busy

    def decide(self, task: TaskSpec, candidates: Sequence[Candidate], now: float) -> Decision:
        """With ordinary candidates: probes read from them, and the least-busy edge node."""
        return self.decide_probed(task, candidates, now, wan_bps=wan_bandwidth_bps(candidates),
                                  utilisation_pct=edge_utilisation_pct(candidates))

    def decide_probed(self, task: TaskSpec, candidates: Sequence[Candidate], now: float, *,
                      wan_bps: float | None, utilisation_pct: float) -> Decision:
        evals = evaluate_all(task, candidates, self.params, now, BASELINE_CONSTRAINTS)
        edge = [i for i, e in enumerate(evals)
                if e.placement is not Placement.CLOUD and e.feasible]
        edge.sort(key=lambda i: candidates[i].running / max(1, candidates[i].slots))
        cloud = [i for i, e in enumerate(evals) if e.placement is Placement.CLOUD and e.feasible]
        ranked = (cloud + edge[:1]) if self.wants_cloud(wan_bps, utilisation_pct) else (
            edge[:1] + cloud)
        return make_decision(self.name, evals, ranked)


class EcsBrain(OracleBrain):
    """A node deciding as EdgeCloudSim's `SampleEdgeOrchestrator` does, on what its probes
    measure in EdgeCloudSim: the exact state of the world at decision time.

    - WAN probe: the rate a new transfer from this node to the cloud would get now (with
      `links.wan.model: ecs_empirical`, the empirical table at the current number of WAN
      clients of this access point; 0 when a transfer would fail);
    - utilisation probe: the average over every edge VM of the nominal utilisation of the
      tasks it holds (`task_types[].vm_utilization_pct`, running and queued), over
      `nodes[].vms` VMs per node;
    - edge target: the edge node whose least-loaded VM (with room for the task) has the most
      free capacity, the first in the scenario's order on a tie, as EdgeCloudSim scans hosts
      in order (exact with `executor: ecs_vms`; with FIFO slots a node holding fewer tasks
      than VMs counts as having an empty VM). The task is bound to that VM when decided, as
      in EdgeCloudSim: tasks decided before it arrives may pick the same VM.
    Its candidates are built from the truth like the oracle's (they only set the attempt
    timeouts and the prediction error: the rule itself ignores latency estimates).
    """

    def __init__(self, node: SimNode, world: World, policy: EcsThresholdPolicy,
                 params: CostParams, fallback: FallbackParams) -> None:
        # EdgeCloudSim never gives up on a task it sent: wait for the result (a lost
        # transfer, a failure there, is recovered after ECS_MIN_TIMEOUT_S here).
        patient = replace(fallback, min_timeout_s=max(fallback.min_timeout_s,
                                                      ECS_MIN_TIMEOUT_S))
        super().__init__(node, world, policy, params, patient)
        self.rule = policy
        types = world.scenario.task_types
        specs = {n.id: n for n in world.scenario.nodes}
        self._vms = {n.id: specs[n.id].vms or n.slots for n in world.nodes}
        # Nominal % of a VM per task type; by default one slot's share of a VM.
        self._pct = {n.id: tuple(t.vm_utilization_pct if t.vm_utilization_pct is not None
                                 else 100.0 * self._vms[n.id] / n.slots for t in types)
                     for n in world.nodes}

    def _load_pct(self, node: SimNode) -> float:
        pct = self._pct[node.id]
        return (sum(pct[job.task.ttype] for job in node.running)
                + sum(pct[job.task.ttype] for job in node.queue))

    def _best_vm(self, node: SimNode, load: float, need: float) -> tuple[float, Any]:
        """(free capacity, VM) of the node's least-loaded VM that can take `need` %
        (-1 when none can). Exact with `executor: ecs_vms`; with FIFO slots (VM None), a node
        holding fewer tasks than VMs has an empty VM, else its VMs count as evenly loaded."""
        if node.vms is not None:
            vm = pick_vm(node.vms, need)
            return (-1.0, None) if vm is None else (vm.free_pct(), vm)
        vms = self._vms[node.id]
        jobs = len(node.running) + len(node.queue)
        return (100.0 if jobs < vms else 100.0 - load / vms), None

    def probes(self, ttype: int = 0) -> tuple[float | None, float, SimNode, Any]:
        """(WAN probe in bit/s or None without a cloud, average edge VM utilisation in %,
        the edge target for a task of type `ttype` and its VM when it has VMs)."""
        world, origin = self.world, self.node
        wan = None
        if world.cloud is not None:
            link = world.links[(origin.id, world.cloud.id)]
            rate = getattr(link, "rate_bps", None)
            wan = (rate() or 0.0) if rate is not None else link.share_bps()
        total_load, total_vms = 0.0, 0
        best, best_free, best_vm = origin, -1.0, None
        for node in world.nodes:
            if not node.alive:
                continue
            vms = self._vms[node.id]
            load = self._load_pct(node)
            total_load += load
            total_vms += vms
            free, vm = self._best_vm(node, load, self._pct[node.id][ttype])
            if free > best_free:
                best, best_free, best_vm = node, free, vm
        return wan, (total_load / total_vms if total_vms else 0.0), best, best_vm

    def decide(self, task: SimTask, now: float) -> Decision:
        wan, utilisation, target, task.vm = self.probes(task.ttype)
        placement = Placement.LOCAL if target is self.node else Placement.NEIGHBOUR
        candidates = [self._true_candidate(task, target, placement, now)]
        cloud = self.world.cloud
        if cloud is not None and task.spec.offload.allows(Placement.CLOUD):
            candidates.append(self._true_candidate(task, cloud, Placement.CLOUD, now))
        return self.rule.decide_probed(task.spec, candidates, now, wan_bps=wan,
                                       utilisation_pct=utilisation)


def make_sim_policy(name: str, params: CostParams, rng: np.random.Generator) -> Policy:
    """Any policy of contract §5 by name: the core's, the EdgeCloudSim rules or the oracle."""
    if name == "oracle":
        return OraclePolicy()
    if name.startswith("ecs_"):
        return EcsThresholdPolicy(name, params)
    return make_policy(name, params, rng)
