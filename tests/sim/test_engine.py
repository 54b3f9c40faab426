"""Engine behaviour: same task stream for every policy, outages and fallback, batteries,
energy accounting, and the memoised candidates matching the core's build_candidates."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from edgesched.core.candidates import build_candidates
from edgesched.core.estimators import EstimatorBank
from edgesched.core.model import Candidate, ClusterSnapshot
from edgesched.sim.engine import Engine
from edgesched.sim.runner import _brain_factory, run_policy, run_scenario
from edgesched.sim.scenario import load_scenario
from edgesched.sim.workload import draw_stream

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "configs" / "scenarios"


def _cluster(**overrides: Any) -> dict[str, Any]:
    sc: dict[str, Any] = {
        "version": 1, "seed": 5, "duration_s": 120,
        "cloud": {"rtt_s": 0.08, "bandwidth_bps": 2e7, "speed": 4.0, "slots": 64},
        "nodes": [
            {"id": "a", "speed": 1.0, "slots": 2,
             "power": {"idle_w": 2.0, "busy_w": 6.0, "tx_w": 1.5, "rx_w": 1.0}},
            {"id": "b", "speed": 1.0, "slots": 2},
        ],
        "task_types": [{"name": "t", "work": {"dist": "lognormal", "mean": 0.1, "cv": 0.3},
                        "input_bytes": 50_000, "output_bytes": 500, "deadline_s": 0.6}],
        "arrivals": [{"node": "a", "type": "t", "process": "poisson", "rate_per_s": 15},
                     {"node": "b", "type": "t", "process": "bursty", "rate_per_s": 1,
                      "burst_rate_per_s": 10, "burst_every_s": 30, "burst_for_s": 5}],
    }
    sc.update(overrides)
    return sc


def test_same_seed_same_stream_for_every_policy() -> None:
    sc = load_scenario(_cluster())
    one, two = draw_stream(sc, 9), draw_stream(sc, 9)
    for field in ("time", "origin", "ttype", "work", "input_bytes", "output_bytes"):
        assert np.array_equal(getattr(one, field), getattr(two, field))
    assert not np.array_equal(draw_stream(sc, 10).time[:50], one.time[:50])
    report = run_scenario(sc, ["cost", "local", "random"], seed=9)
    assert report["tasks"] == len(one)
    for pol in report["policies"].values():  # every task accounted for, in every run
        assert pol["completed"] + sum(pol["failures"].values()) == len(one)


def test_bursty_arrivals_follow_their_rates() -> None:
    sc = load_scenario(_cluster(duration_s=3000))
    st = draw_stream(sc, 1)
    t = st.time[st.origin == 1]
    in_burst = (t % 30.0) < 5.0
    assert abs(in_burst.sum() / (3000 / 30 * 5) - 10) < 0.5
    assert abs((~in_burst).sum() / (3000 / 30 * 25) - 1) < 0.1


def test_outage_loses_work_and_fallback_recovers_it() -> None:
    sc = _cluster(nodes=[
        {"id": "a", "speed": 1.0, "slots": 1},
        {"id": "b", "speed": 4.0, "slots": 4, "down": [{"at_s": 40, "for_s": 30}]},
    ], arrivals=[{"node": "a", "type": "t", "process": "poisson", "rate_per_s": 8}],
        cloud={"rtt_s": 0.03, "bandwidth_bps": 5e7, "speed": 2.0, "slots": 64})
    scenario = load_scenario(sc)
    stream = draw_stream(scenario, 5)
    outcome, engine = run_policy(scenario, "cost", stream, 5)
    # Attempts lost on b ended by timeout, and were retried elsewhere (cloud or a).
    assert outcome.placements["neighbour"] > 0 and outcome.placements["cloud"] > 0
    lost = sum(outcome.failures.values())
    assert lost < 0.05 * len(stream), outcome.failures
    assert engine.by_id["b"].incarnation == 2  # it went down once, and came back:
    view = engine.by_id["a"].brain.view
    (b_state,) = view.neighbours(40 + 30 + 5)  # the Will of incarnation 1 did not bury it
    assert b_state.incarnation == 2 and b_state.liveness.value == "online"


def test_a_drained_battery_takes_its_node_down() -> None:
    sc = _cluster(nodes=[
        {"id": "a", "speed": 1.0, "slots": 2,
         "power": {"idle_w": 10.0, "busy_w": 12.0}, "battery": {"capacity_j": 500,
                                                                 "initial": 1.0}},
        {"id": "b"},
    ])
    scenario = load_scenario(sc)
    stream = draw_stream(scenario, 5)
    outcome, engine = run_policy(scenario, "local", stream, 5)
    a = engine.by_id["a"]
    assert a.dead_battery and not a.alive  # 500 J at >= 10 W lasts < 50 s of a 120 s run
    assert outcome.failures.get("origin_down", 0) > 0.4 * int((stream.origin == 0).sum())


def test_energy_is_marginal_compute_plus_radio() -> None:
    sc = load_scenario(_cluster(
        arrivals=[{"node": "a", "type": "t", "process": "poisson", "rate_per_s": 2}]))
    stream = draw_stream(sc, 5)
    _, engine = run_policy(sc, "local", stream, 5)
    a = engine.by_id["a"]
    assert engine.record.placements["local"] == len(stream)
    assert abs(a.energy_j - (6.0 - 2.0) * a.busy_s) < 1e-6  # nothing sent: compute only
    _, engine = run_policy(sc, "cloud", stream, 5)
    # Only radio: 1.5 W while sending 400 kbit at 20 Mbit/s, 1 W while receiving 4 kbit.
    expected = len(stream) * (1.5 * 8 * 50_000 / 2e7 + 1.0 * 8 * 500 / 2e7)
    assert abs(engine.by_id["a"].energy_j - expected) / expected < 0.01


def _same(memo: Any, fresh: Any) -> bool:
    """Equal but for what ESTIMATE_TTL_S of estimator staleness decay may change (very little)."""
    close = math.isclose
    exact = ("node_id", "placement", "liveness", "slots", "running", "queued", "battery",
             "supports_type", "excluded", "power", "origin_power", "money_cost")
    return (all(getattr(memo, f) == getattr(fresh, f) for f in exact)
            and memo.age_s == fresh.age_s
            and close(memo.est_wait_s, fresh.est_wait_s, rel_tol=1e-2, abs_tol=1e-9)
            and close(memo.exec.mean_s, fresh.exec.mean_s, rel_tol=1e-2)
            and (memo.link is None) == (fresh.link is None)
            and (memo.link is None or close(memo.link.bandwidth_bps, fresh.link.bandwidth_bps,
                                            rel_tol=1e-2)))


class _Unmemoised:
    """A MemoBank's estimators answered fresh, as the plain EstimatorBank would."""

    def __init__(self, bank: EstimatorBank) -> None:
        self._bank = bank

    def exec_estimate(self, task_type: str, node_id: str, work: float, now: float) -> Any:
        return EstimatorBank.exec_estimate(self._bank, task_type, node_id, work, now)

    def link(self, target: str, now: float) -> Any:
        return EstimatorBank.link(self._bank, target, now)


def _fresh_candidates(brain: Any, task: Any, now: float) -> list[Candidate]:
    """`build_candidates` on a fresh snapshot and unmemoised estimates."""
    snap = ClusterSnapshot(now=now, local=brain.local_state(now),
                           neighbours=brain.view.neighbours(now))
    return build_candidates(
        task.spec, snap, _Unmemoised(brain.bank),  # type: ignore[arg-type]
        offload=task.spec.offload, cloud=brain.cloud, local_power=brain.node.power,
        local_max_queue=brain.node.queue_size,
        inflight=brain.inflight.unreported(brain.reported_at),
        late=brain.inflight.lateness(now), zs=brain.calibrator.zs,
    )


def test_memoised_candidates_equal_build_candidates() -> None:
    sc = load_scenario(SCENARIOS / "hotspot.yaml")
    stream = draw_stream(sc, sc.seed)
    engine = Engine(sc, stream, _brain_factory(sc, "cost", sc.seed))
    brain = engine.nodes[0].brain
    checked = 0
    original = brain.decide

    def decide(task: Any, now: float) -> Any:
        nonlocal checked
        memo, fresh = brain.candidates(task, now), _fresh_candidates(brain, task, now)
        assert len(memo) == len(fresh) == 4
        for m, f in zip(memo, fresh, strict=True):
            assert _same(m, f), (m, f)
        checked += 1
        return original(task, now)

    brain.decide = decide
    engine.run()
    assert checked > 1000


def test_parallel_workers_give_the_same_report() -> None:
    sc = load_scenario(_cluster(duration_s=40))
    policies = ["cost", "random", "oracle"]
    assert run_scenario(sc, policies, workers=2) == run_scenario(sc, policies)


def test_cached_wait_estimate_equals_recomputing_it(monkeypatch: Any) -> None:
    from edgesched.sim.engine import SimNode

    original = SimNode.est_wait_s
    checked = 0

    def est_wait_s(self: SimNode, now: float) -> float:
        nonlocal checked
        value = original(self, now)
        saved, self.wait_cache = self.wait_cache, None
        fresh = original(self, now)
        self.wait_cache = saved
        assert math.isclose(value, fresh, rel_tol=1e-9, abs_tol=1e-9)
        checked += 1
        return value

    monkeypatch.setattr(SimNode, "est_wait_s", est_wait_s)
    sc = load_scenario(_cluster(duration_s=60))
    run_policy(sc, "local", draw_stream(sc, 5), 5)
    assert checked > 500
