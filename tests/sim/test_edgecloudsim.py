"""EdgeCloudSim's sample_app2, side by side (issue 21), on shortened runs of the three shipped
equivalents (benchmarks/bench_edgecloudsim.py runs them in full and prints the table).

The claims: the `ecs_*` rules' cloud shares within 5 points of EdgeCloudSim's, their mean
latencies within 30 % of EdgeCloudSim's mean service time, EdgeCloudSim's ordering
HYBRID <= UTILIZATION < NETWORK at 200 and 600 devices, and `cost` losing no deadline-free
task. Plus the network models' own rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from edgesched.sim.links import (
    ECS_WAN_KBPS,
    KBPS,
    ClientCount,
    EmpiricalLink,
    ManQueue,
    ecs_man_mean_bits,
)
from edgesched.sim.policies import ECS_WAN_THRESHOLD_BPS
from edgesched.sim.runner import run_scenario
from edgesched.sim.scenario import _Loader, load_scenario

ROOT = Path(__file__).resolve().parents[2]

# EdgeCloudSim's outputs (issue 21): mean service time (s) and cloud share (%).
EDGECLOUDSIM = {
    200: {"ecs_network": (1.289, 98.7), "ecs_utilization": (1.076, 0.0),
          "ecs_hybrid": (1.053, 0.0)},
    600: {"ecs_network": (1.513, 68.1), "ecs_utilization": (1.259, 0.0),
          "ecs_hybrid": (1.266, 0.0)},
    1000: {"ecs_network": (1.520, 51.7), "ecs_utilization": (1.556, 0.0),
           "ecs_hybrid": (1.456, 0.0)},
}
# Simulated seconds per device count in the suite (the shipped files run 1800/1800/900 s).
SHORT_S = {200: 300.0, 600: 240.0, 1000: 180.0}
RULES = ("ecs_network", "ecs_utilization", "ecs_hybrid")
# Cloud share tolerance (points) on the shortened runs. The full runs are within 5 points of
# EdgeCloudSim's everywhere (benchmarks/bench_edgecloudsim.py); in the first minutes of the
# 600-device run the devices are still spread evenly over the access points (they start
# uniformly, then gather at the attractive ones), so fewer of them hit the WAN rule's
# 11-client limit and ecs_network sends 73.7 % to the cloud instead of 69.6 % over 30 min.
SHARE_POINTS = {200: 5.0, 600: 7.0, 1000: 5.0}
# cost runs where it lost most before the fallback fix (issue 21), to bound the suite's time
COST_AT = (200, 1000)


def _shortened(devices: int) -> dict[str, Any]:
    path = ROOT / "configs" / "scenarios" / f"edgecloudsim_app2_{devices}.yaml"
    raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    raw["duration_s"] = SHORT_S[devices]
    return dict(raw)


@pytest.fixture(scope="module")
def reports() -> dict[int, dict[str, Any]]:
    return {d: run_scenario(_shortened(d), [*RULES, *(["cost"] if d in COST_AT else [])])
            for d in EDGECLOUDSIM}


def _cloud_pct(summary: dict[str, Any]) -> float:
    placed = summary["placements"]
    return 100.0 * placed["cloud"] / max(1, sum(placed.values()))


@pytest.mark.slow
@pytest.mark.parametrize("devices", sorted(EDGECLOUDSIM))
def test_ecs_rules_match_edgecloudsims_cloud_share_and_latency(
        reports: dict[int, dict[str, Any]], devices: int) -> None:
    pols = reports[devices]["policies"]
    for rule in RULES:
        mean, share = EDGECLOUDSIM[devices][rule]
        ours = pols[rule]
        assert abs(_cloud_pct(ours) - share) <= SHARE_POINTS[devices], (
            devices, rule, _cloud_pct(ours), share)
        assert abs(ours["mean_latency_s"] / mean - 1.0) <= 0.30, (devices, rule, ours, mean)
        assert ours["completed"] == reports[devices]["tasks"], ours["failures"]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [200, 600])
def test_edgecloudsims_ordering_of_the_rules(reports: dict[int, dict[str, Any]],
                                             devices: int) -> None:
    net, util, hyb = (reports[devices]["policies"][r]["mean_latency_s"] for r in RULES)
    assert hyb <= util < net


@pytest.mark.slow
@pytest.mark.parametrize("devices", COST_AT)
def test_cost_loses_no_deadline_free_task(reports: dict[int, dict[str, Any]],
                                          devices: int) -> None:
    cost = reports[devices]["policies"]["cost"]
    assert cost["failures"] == {} and cost["completed"] == reports[devices]["tasks"]


# ---- the network models' rules -------------------------------------------------------------


class _Engine:
    """Just enough of the engine for a link: a clock and a list of scheduled calls."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple[float, Any, Any]] = []

    def schedule(self, at: float, fn: Any, arg: Any) -> None:
        self.calls.append((at, fn, arg))


class _Node:
    def __init__(self, node_id: str, is_cloud: bool = False) -> None:
        self.id = node_id
        self.is_cloud = is_cloud
        self.energy_j = 0.0

        class _Power:
            tx_w = rx_w = 0.0

        self.power = _Power()


def test_empirical_wan_fixes_the_rate_at_start_by_the_access_points_clients() -> None:
    eng, clients = _Engine(), ClientCount()
    up = EmpiricalLink(eng, _Node("ap"), _Node("cloud", True), 0.0, clients, ECS_WAN_KBPS)
    down = EmpiricalLink(eng, _Node("cloud", True), _Node("ap"), 0.0, clients, ECS_WAN_KBPS)
    bits = 1500 * 1024 * 8.0  # EdgeCloudSim's AR upload: 1500 KB
    first = up.start(bits, lambda tr: None, None)
    assert eng.calls[-1][0] == pytest.approx(12000 / 20703.973)  # alone: 20.7 "Mbps"
    down.start(bits, lambda tr: None, None)  # the other direction counts at the same AP
    assert eng.calls[-1][0] == pytest.approx(12000 / 12023.957)
    assert clients.active == 2
    up.cancel(first)
    assert clients.active == 1
    for _ in range(24):
        up.start(bits, lambda tr: None, None)
    assert clients.active == 25 and up.rate_bps() is None  # 25 clients: EdgeCloudSim fails
    lost = up.start(bits, lambda tr: None, None)
    assert lost.finished and up.lost == 1 and clients.active == 25


def test_the_network_rule_sends_to_the_cloud_with_at_most_10_other_wan_clients() -> None:
    # EdgeCloudSim: 1 / (delay of a 1024 Kb probe) > 6 "Mbps", i.e. table[n] > 6144 Kbps.
    fast = [n for n, kbps in enumerate(ECS_WAN_KBPS) if kbps * KBPS > ECS_WAN_THRESHOLD_BPS]
    assert fast == list(range(11))


def test_man_delay_is_edgecloudsims_mm1_formula() -> None:
    sc = load_scenario(_shortened(200))
    up_bits, down_bits = ecs_man_mean_bits(sc)  # type: ignore[misc]
    # sum of usage share x mean size over the four apps, / 4 (SampleNetworkModel.initialize)
    assert up_bits == pytest.approx((0.3 * 1500 + 0.2 * 20 + 0.2 * 2500 + 0.3 * 25) / 4 * 8192)
    assert down_bits == pytest.approx((0.3 * 25 + 0.2 * 1250 + 0.2 * 200 + 0.3 * 1000) / 4
                                      * 8192)
    man = ManQueue(1300 * 1024 * 1024.0, up_bits)
    assert man.delay(1e6, 0.0, 1.0) == pytest.approx(up_bits / (1300 * 1024 * 1024.0))
    for i in range(499):  # 500 transfers in the first 5 s: lambda = 100/s from then on
        man.delay(1e6, i * 0.01, 1.0)
    mu = 1300 * 1024 * 1024.0 / up_bits
    assert man.delay(1e6, 5.0, 1.0) == pytest.approx(1.0 / (mu - 100.0))


def test_time_shared_vm_shares_its_cores_and_refuses_when_full() -> None:
    from edgesched.sim.vms import TimeSharedVm, pick_vm

    eng, done = _Engine(), []
    vm = TimeSharedVm(eng, cores=2, speed=10_000.0, done=done.append)
    vm.add("a", 9000.0, 6.0)  # alone: a whole core, 0.9 s
    assert eng.calls[-1][0] == pytest.approx(0.9)
    vm.add("b", 9000.0, 6.0)
    vm.add("c", 9000.0, 6.0)  # three tasks on two cores: each at 2/3 of a core
    at, fn, arg = eng.calls[-1]
    assert at == pytest.approx(9000.0 / (10_000.0 * 2 / 3))
    eng.now = at
    fn(arg)
    assert sorted(done) == ["a", "b", "c"] and vm.load_pct == 0.0
    full = TimeSharedVm(eng, cores=2, speed=1.0, done=done.append)
    full.add("heavy", 1.0, 80.0)
    assert pick_vm([full, vm], 30.0) is vm  # the most free capacity that fits
    assert pick_vm([full], 30.0) is None  # 80 + 30 > 100: EdgeCloudSim refuses
    assert pick_vm([full], 20.0) is full


def test_ecs_vms_executor_needs_vms_dividing_slots() -> None:
    from edgesched.errors import ScenarioError

    raw = _shortened(200)
    raw["nodes"][0] = {"id": "edge-00", "slots": 16, "vms": 5, "executor": "ecs_vms"}
    with pytest.raises(ScenarioError, match=r"nodes\.0\.vms"):
        load_scenario(raw)
    raw["nodes"][0] = {"id": "edge-00", "slots": 16, "vms": 8, "executor": "fifo"}
    with pytest.raises(ScenarioError, match=r"nodes\.0\.executor"):
        load_scenario(raw)
