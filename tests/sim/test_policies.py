"""The simulator-only policies: EdgeCloudSim's threshold rules and the oracle."""

from __future__ import annotations

from edgesched.core.model import (
    Candidate,
    ExecEstimate,
    LinkEstimate,
    Placement,
    TaskSpec,
)
from edgesched.core.policies import POLICY_NAMES
from edgesched.sim.policies import (
    ALL_POLICY_NAMES,
    ORACLE_PARAMS,
    EcsThresholdPolicy,
    OraclePolicy,
    edge_utilisation_pct,
)

TASK = TaskSpec(task_type="t", input_bytes=10_000, output_bytes=100, work=10_000, deadline_s=1.0)


def _cands(wan_bps: float, local_running: int, neighbour_running: int) -> list[Candidate]:
    return [
        Candidate(node_id="me", placement=Placement.LOCAL, slots=2, running=local_running,
                  exec=ExecEstimate(mean_s=0.1)),
        Candidate(node_id="nb", placement=Placement.NEIGHBOUR, slots=2,
                  running=neighbour_running, exec=ExecEstimate(mean_s=0.1),
                  link=LinkEstimate(rtt_s=0.004, bandwidth_bps=1e8)),
        Candidate(node_id="cloud", placement=Placement.CLOUD, slots=64,
                  exec=ExecEstimate(mean_s=0.02),
                  link=LinkEstimate(rtt_s=0.05, bandwidth_bps=wan_bps)),
    ]


def _choice(name: str, cands: list[Candidate]) -> list[str]:
    decision = EcsThresholdPolicy(name, ORACLE_PARAMS).decide(TASK, cands, 0.0)
    return [e.node_id for e in decision.ranked()]


def test_every_contract_policy_name_exists() -> None:
    assert set(ALL_POLICY_NAMES) == {*POLICY_NAMES, "ecs_network", "ecs_utilization",
                                     "ecs_hybrid", "oracle"}


def test_ecs_network_rule_uses_the_6_mbps_threshold() -> None:
    assert _choice("ecs_network", _cands(7e6, 0, 0)) == ["cloud", "me"]
    assert _choice("ecs_network", _cands(5e6, 0, 0)) == ["me", "cloud"]


def test_ecs_utilization_rule_uses_mean_edge_utilisation_over_80_percent() -> None:
    assert edge_utilisation_pct(_cands(1e6, 2, 2)) == 100.0
    assert _choice("ecs_utilization", _cands(1e6, 2, 2)) == ["cloud", "me"]
    # 75 %: the edge, on its least-loaded node (SampleEdgeOrchestrator), not the local one
    assert _choice("ecs_utilization", _cands(1e6, 2, 1)) == ["nb", "cloud"]


def test_ecs_hybrid_needs_both() -> None:
    assert _choice("ecs_hybrid", _cands(7e6, 2, 2)) == ["cloud", "me"]
    assert _choice("ecs_hybrid", _cands(5e6, 2, 2)) == ["me", "cloud"]
    assert _choice("ecs_hybrid", _cands(7e6, 0, 0)) == ["me", "cloud"]


def test_oracle_ranks_by_true_latency_and_respects_the_deadline() -> None:
    cands = _cands(2e7, 0, 0)
    cands[0] = Candidate(node_id="me", placement=Placement.LOCAL, slots=2, running=2,
                         est_wait_s=0.95, exec=ExecEstimate(mean_s=0.1))
    decision = OraclePolicy().decide(TASK, cands, 0.0)
    ranked = [e.node_id for e in decision.ranked()]
    assert ranked == ["cloud", "nb"]  # 0.074 s, 0.105 s; local would miss (1.05 s > 1 s)
    assert decision.evaluations[0].reason is not None
