"""Scenario loading and validation: the contract §5 format and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgesched.errors import ScenarioError
from edgesched.sim.scenario import load_scenario

REPO = Path(__file__).resolve().parents[2]

CONTRACT_EXAMPLE = """
version: 1
duration_s: 600          # arrivals stop here; the run ends when all tasks finish
seed: 7
cloud: {rtt_s: 0.08, bandwidth_bps: 2.0e7, speed: 8.0, slots: 64, cost_per_task: 0.0}
links: {rtt_s: 0.004, bandwidth_bps: 1.0e8}        # default edge<->edge link
nodes:
  - id: gw-1
    speed: 1.0
    slots: 2
    power: {idle_w: 3.0, busy_w: 6.0, tx_w: 1.5, rx_w: 1.0}
    battery: {capacity_j: 20000, initial: 0.5}      # optional
    uplink: {rtt_s: 0.08, bandwidth_bps: 1.0e7}     # optional override of the cloud link
    down: [{at_s: 200, for_s: 60}]                  # optional outages
  - id: gw-2
task_types:
  - name: detect
    work: {dist: lognormal, mean: 0.2, cv: 0.3}     # or {dist: fixed, value: 0.2} / exponential
    input_bytes: {dist: fixed, value: 200000}
    output_bytes: 1000
    deadline_s: 0.5
    offload: anywhere
arrivals:
  - {node: gw-1, type: detect, process: poisson, rate_per_s: 6}
  - {node: gw-2, type: detect, process: bursty, rate_per_s: 2, burst_rate_per_s: 20,
     burst_every_s: 60, burst_for_s: 10}
events:                   # optional time-varying conditions
  - {at_s: 300, link: {node: gw-1, to: cloud, rtt_s: 0.4, bandwidth_bps: 1.0e6}}
"""


def _problems(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    return dict(info.value.problems)


def test_the_contract_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(CONTRACT_EXAMPLE)
    sc = load_scenario(path)
    assert sc.name == "example" and sc.seed == 7 and sc.duration_s == 600
    gw1 = sc.node("gw-1")
    assert gw1.uplink is not None and gw1.uplink.bandwidth_bps == 1.0e7  # "1.0e7" is a number
    assert gw1.battery is not None and gw1.battery.initial == 0.5
    assert gw1.down[0].at_s == 200 and gw1.down[0].for_s == 60
    assert sc.task_type("detect").output_bytes.expected == 1000  # a bare number is fixed
    assert sc.events[0].to == "cloud" and sc.events[0].bandwidth_bps == 1.0e6
    assert sc.arrivals[1].process == "bursty" and sc.arrivals[1].burst_for_s == 10


def test_every_problem_is_reported_with_its_dotted_key(tmp_path: Path) -> None:
    problems = _problems(tmp_path, """
version: 2
duration_s: -1
nodes:
  - {id: gw-1, speed: 0, slots: 1.5, colour: red}
  - {id: gw-1}
task_types:
  - name: t
    work: {dist: gamma, mean: 1}
    input_bytes: {dist: uniform, low: 5, high: 1}
arrivals:
  - {node: gw-9, type: t, process: poisson, rate_per_s: 1}
  - {node: gw-1, type: nope, process: bursty, rate_per_s: 1}
events:
  - {at_s: 5, link: {node: gw-1, to: gw-1, rtt_s: 0.1}}
policy: {energy_weight: -1, nonsense: 3}
""")
    assert problems["version"] == "must be 1"
    assert problems["duration_s"] == "must be > 0"
    assert problems["nodes.0.speed"] == "must be > 0"
    assert problems["nodes.0.slots"] == "must be an integer"
    assert problems["nodes.0.colour"] == "unknown key"
    assert "duplicate" in problems["nodes.1.id"]
    assert "must be one of" in problems["task_types.0.work.dist"]
    assert problems["task_types.0.input_bytes.high"] == "must be >= low"
    assert "unknown node 'gw-9'" in problems["arrivals.0.node"]
    assert "unknown task type" in problems["arrivals.1.type"]
    assert problems["arrivals.1.burst_rate_per_s"] == "is required"
    assert "another node" in problems["events.0.link.to"]
    assert "greater than or equal to 0" in problems["policy.energy_weight"]
    assert problems["policy.nonsense"] == "unknown key"


def test_policy_block_uses_the_config_keys(tmp_path: Path) -> None:
    text = CONTRACT_EXAMPLE + "policy: {energy_weight: 0.01, latency_quantile: 0.9}\n"
    path = tmp_path / "p.yaml"
    path.write_text(text)
    params = load_scenario(path).policy_params
    assert params.energy_weight == 0.01 and params.latency_quantile == 0.9


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    assert "" in _problems(tmp_path, "- just\n- a list\n")
    assert "not valid YAML" in _problems(tmp_path, "a: [unclosed\n")[""]


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "scenarios").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_scenarios_are_valid(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem and sc.description


def test_load_from_a_mapping() -> None:
    sc = load_scenario({"version": 1, "duration_s": 10, "nodes": [{"id": "a"}],
                        "task_types": [{"name": "t", "work": 0.1}],
                        "arrivals": [{"node": "a", "type": "t", "rate_per_s": 1}]})
    assert sc.nodes[0].slots == 1 and sc.arrivals[0].process == "poisson"


def test_cloud_false_means_no_cloud_tier() -> None:
    from edgesched.sim.runner import run_scenario

    report = run_scenario({"version": 1, "duration_s": 20, "cloud": False,
                           "nodes": [{"id": "a"}, {"id": "b"}],
                           "task_types": [{"name": "t", "work": 0.1, "deadline_s": 1}],
                           "arrivals": [{"node": "a", "type": "t", "rate_per_s": 5}]},
                          ["cost", "cloud"])
    for pol in report["policies"].values():
        assert pol["placements"]["cloud"] == 0 and pol["completed"] == report["tasks"]
