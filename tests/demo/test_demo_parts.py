"""Pure parts of the demo: phase plan, workload, node configs, summary and metric parsing."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from edgesched.config import load_settings
from edgesched.demo.cluster import BrokerAddress, load_cluster_spec, node_config
from edgesched.demo.compare import build_scenario
from edgesched.demo.phases import PhaseKind, generate, plan_phases
from edgesched.demo.probe import metric_sum
from edgesched.demo.summary import Tally, percentile, summary_doc


def test_phases_cover_the_run_in_order() -> None:
    phases = plan_phases(60.0)
    assert [p.kind for p in phases] == list(PhaseKind)
    assert phases[0].start_s == 0.0
    assert phases[-1].end_s == pytest.approx(60.0)
    for before, after in itertools.pairwise(phases):
        assert before.end_s == after.start_s


def test_workload_is_seeded_and_exercises_every_phase() -> None:
    phases = plan_phases(40.0)
    one = generate(phases, np.random.default_rng(3))
    two = generate(phases, np.random.default_rng(3))
    assert [(s.at_s, s.node_id, s.task_type) for s in one] == \
           [(s.at_s, s.node_id, s.task_type) for s in two]
    assert {s.phase for s in one} == set(PhaseKind)
    assert all(0 <= s.at_s < 40.0 for s in one)
    overload = [s for s in one if s.phase is PhaseKind.OVERLOAD and s.task_type == "sleep"]
    assert overload and all(s.node_id == "gw-fast" for s in overload)


def test_every_generated_node_config_is_a_valid_edgesched_config(tmp_path: Path) -> None:
    import yaml

    from edgesched.adapters.signing import write_node_keypair

    spec = load_cluster_spec()
    broker = BrokerAddress(host="127.0.0.1", port=1883, protocol="3.1.1", topic_prefix="es")
    keys = tmp_path / "keys"
    for node in spec.nodes:
        write_node_keypair(node.node_id, keys)
    for node in spec.nodes:
        doc = node_config(node, http_port=18000, broker=broker, cloud_url="http://127.0.0.1:1",
                          state_dir=tmp_path, keys_dir=keys)
        path = tmp_path / f"{node.node_id}.yaml"
        path.write_text(yaml.safe_dump(doc))
        settings = load_settings(path)
        assert settings.node_id == node.node_id
        assert settings.role == node.role
        assert settings.mqtt.protocol == "3.1.1"
        assert (settings.cloud.url is not None) == (node.role == "edge")
        assert settings.security.key_path == keys / f"{node.node_id}.key"  # the demo signs
    assert spec.node("gw-slow").battery_device == "gw-slow-bms"


def test_summary_counts_lost_and_placements() -> None:
    tally = Tally(submitted=5)
    tally.record(phase="calm", task_type="echo", status="ok", placement="local",
                 executed_by="gw-fast", latency_s=0.01, deadline_s=1.0)
    tally.record(phase="calm", task_type="sleep", status="ok", placement="neighbour",
                 executed_by="edge-box", latency_s=2.0, deadline_s=1.5)
    tally.record(phase="calm", task_type="hash", status="expired", placement=None,
                 executed_by=None, latency_s=3.0, deadline_s=2.0)
    tally.record(phase="calm", task_type="hash", status="rejected", placement=None,
                 executed_by=None, latency_s=0.0, deadline_s=2.0, error="queue full")
    doc = summary_doc(tally, lost=1, energy_j=12.5, duration_s=10, seed=1, broker="b",
                      comparison=None)
    assert doc["tasks"] == {"submitted": 5, "completed": 2, "failed": 0, "rejected": 1,
                            "expired": 1, "lost": 1}
    assert doc["placements"] == {"local": 1, "neighbour": 1, "cloud": 0}
    assert doc["deadline_misses"] == 2  # one late completion, one expired
    assert doc["latency_s"]["p50"] == pytest.approx(1.005)


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 95) == 5.0


def test_metric_sum_adds_every_label_set_only_of_that_metric() -> None:
    text = (
        "# HELP edgesched_energy_joules_total energy\n"
        'edgesched_energy_joules_total{placement="local"} 1.5\n'
        'edgesched_energy_joules_total{placement="cloud"} 2.0\n'
        "edgesched_energy_joules_total_created 1700000000.0\n"
    )
    assert metric_sum(text, "edgesched_energy_joules_total") == pytest.approx(3.5)


def test_scenario_mirrors_the_demo_cluster() -> None:
    spec = load_cluster_spec()
    phases = plan_phases(20.0)
    scenario = build_scenario(spec, phases, seed=4, down_window=(16.0, 18.0),
                              roam_window=(14.0, 19.0))
    assert {n["id"] for n in scenario["nodes"]} == {n.node_id for n in spec.edges}
    victim = next(n for n in scenario["nodes"] if n["id"] == "edge-box")
    assert victim["down"] == [{"at_s": 16.0, "for_s": 2.0}]
    assert any(a["process"] == "bursty" for a in scenario["arrivals"])
    assert len(scenario["events"]) == 2 * len(spec.edges)
    # while the victim's devices roam, its streams arrive at gw-fast, as in the demo
    victim = [a for a in scenario["arrivals"] if a["node"] == "edge-box"]
    roamed = [a for a in scenario["arrivals"] if a["node"] == "gw-fast"
              and a.get("burst_offset_s") == 14.0]
    assert roamed and all(a["burst_for_s"] == 5.0 for a in roamed)
    assert all(a["process"] == "bursty" for a in victim)
    assert {(a["burst_offset_s"], a["burst_for_s"]) for a in victim} == {(0.0, 14.0), (19.0, 1.0)}
    from edgesched.sim.scenario import load_scenario

    assert load_scenario(scenario).duration_s == 20.0  # the simulator accepts it
