"""Issue 20's estimates: borrowed lessons, a backlog that drains no faster than its slots, the
cloud's reported queue, refusals as evidence, calibrated quantiles (pure core, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from edgesched.core.calibration import CalibrationParams, QuantileCalibrator, conformal_z
from edgesched.core.candidates import CloudTarget, build_candidates, node_wait
from edgesched.core.costmodel import CostParams, evaluate_candidate
from edgesched.core.estimators import EstimatorBank, ExecPrior
from edgesched.core.feedback import Refusals
from edgesched.core.model import (
    ClusterSnapshot,
    ExecEstimate,
    NodeState,
    RejectReason,
    TaskSpec,
)


def spec(**kw: object) -> TaskSpec:
    base: dict[str, object] = {"task_type": "hash", "input_bytes": 100.0,
                               "output_bytes": 100.0, "work": 3000.0}
    base.update(kw)
    return TaskSpec(**base)  # type: ignore[arg-type]


def test_a_node_that_never_ran_a_type_borrows_another_nodes_lesson_speed_scaled() -> None:
    bank = EstimatorBank(exec_priors={"hash": ExecPrior(mean_s=0.05)},
                         speeds={"a": 1.0, "b": 2.0})
    assert bank.exec_estimate("hash", "b", 3000, 0.0).mean_s == pytest.approx(0.025)
    for i in range(10):
        bank.observe_exec("hash", "a", 3000, 0.004, float(i))
    learned = bank.exec_estimate("hash", "a", 3000, 10.0).mean_s
    borrowed = bank.exec_estimate("hash", "b", 3000, 10.0)
    assert borrowed.mean_s == pytest.approx(learned / 2.0)  # b is twice as fast
    assert borrowed.std_s >= 0.5 * borrowed.mean_s  # the prior's cv: a guess, not b's own
    assert not bank.has_exec("hash", "b")
    bank.observe_exec("hash", "b", 3000, 0.010, 11.0)  # b's own lesson wins from now on
    assert bank.exec_estimate("hash", "b", 3000, 11.0).mean_s > borrowed.mean_s


def test_a_reported_backlog_drains_no_faster_than_its_slots() -> None:
    busy = NodeState(node_id="b", slots=2, running=2, queued=98, last_seen=0.0)
    ex = ExecEstimate(mean_s=0.01, std_s=0.001)
    wait, _ = node_wait(busy, ex, age=0.2)  # 0.2 s: at most 40 of the 100 finished
    assert wait == pytest.approx((100 - 40 - 2 + 1) * 0.01 / 2, rel=1e-6)
    idle = NodeState(node_id="b", slots=2, running=0, queued=0, last_seen=0.0)
    assert node_wait(idle, ex, age=0.2)[0] == 0.0


def test_the_cloud_is_modelled_from_its_own_report_when_there_is_one() -> None:
    local = NodeState(node_id="a", slots=2)
    snap = ClusterSnapshot(now=1.0, local=local)
    bank = EstimatorBank()
    task = spec(deadline_s=3.0, submitted_at=1.0)
    blind = build_candidates(task, snap, bank, cloud=CloudTarget())[-1]
    report = NodeState(node_id="cloud-1", role="cloud", slots=2, running=2, queued=6,
                       est_wait_s=16.0, last_seen=0.7)
    seen = build_candidates(task, snap, bank, cloud=CloudTarget(), cloud_state=report)[-1]
    assert blind.est_wait_s == 0.0 and blind.slots == 64
    assert seen.slots == 2 and seen.est_wait_s == pytest.approx(15.7)
    ev = evaluate_candidate(task, seen, CostParams(), remaining_s=3.0)
    assert ev.reason is RejectReason.DEADLINE


def test_a_refused_target_is_held_back_until_a_newer_report_or_its_backoff() -> None:
    refusals = Refusals(backoff_s=1.0, max_backoff_s=4.0)
    refusals.refused("cloud", 10.0)
    assert refusals.held({}, 10.5) == {"cloud"}
    assert refusals.held({"cloud": 10.2}, 10.6) == frozenset()  # a report after it: free
    refusals.refused("cloud", 11.0)  # the second in a row (no success between): 2 s
    assert refusals.held({}, 12.9) == {"cloud"}
    assert refusals.held({}, 13.1) == frozenset()
    refusals.refused("cloud", 14.0)  # the third: 4 s (the cap)
    assert refusals.held({}, 17.9) == {"cloud"}
    refusals.accepted("cloud")
    refusals.refused("cloud", 20.0)  # after a success: 1 s again
    assert refusals.held({}, 21.1) == frozenset()
    refusals.refused("b", 20.0)
    refusals.accepted("b")
    assert refusals.held({}, 20.1) == frozenset()
    local = NodeState(node_id="a", slots=2)
    snap = ClusterSnapshot(now=1.0, local=local, neighbours=(
        NodeState(node_id="b", slots=2, last_seen=1.0),))
    cands = build_candidates(spec(), snap, EstimatorBank(), cloud=CloudTarget(),
                             held={"b", "cloud", "a"})
    assert [c.refused for c in cands] == [False, True, True]  # never this node itself
    ev = evaluate_candidate(spec(), cands[1], CostParams(), remaining_s=None)
    assert ev.reason is RejectReason.NO_CAPACITY


def test_refusals_are_bounded() -> None:
    refusals = Refusals(max_targets=3)
    for i in range(10):
        refusals.refused(f"n{i}", float(i))
    assert len(refusals) == 3


def test_conformal_z_covers_heavy_tailed_errors() -> None:
    rng = np.random.default_rng(1)
    cal = QuantileCalibrator(CalibrationParams(quantile=0.95, window=400))
    z_normal = 1.645
    covered_raw = covered_cal = 0
    n = 4000
    for _ in range(n):
        mean, std = 1.0, 0.1
        actual = mean + std * float(rng.standard_t(2))  # heavy tails
        z = cal.zs.get("b", z_normal)
        covered_cal += actual <= mean + z * std
        covered_raw += actual <= mean + z_normal * std
        cal.observe("b", "neighbour", actual_s=actual, mean_s=mean, std_s=std,
                    q_s=mean + z * std)
    assert covered_raw / n < 0.93  # t(2) errors: the normal z covers ~0.88
    assert 0.93 <= covered_cal / n <= 0.97
    hit, total = cal.coverage("neighbour")
    assert total == 400 and 0.9 <= hit / total <= 1.0
    assert not cal.observe("b", "neighbour", actual_s=float("nan"), mean_s=1, std_s=1, q_s=2)


def test_conformal_z_is_the_rank_quantile() -> None:
    assert conformal_z([float(i) for i in range(1, 20)], 0.95) == 19.0
    assert conformal_z([float(i) for i in range(1, 100)], 0.9) == 90.0


def test_a_calibrated_z_replaces_the_normal_one_in_the_quantile() -> None:
    local = NodeState(node_id="a", slots=2)
    snap = ClusterSnapshot(now=0.0, local=local)
    cand = build_candidates(spec(), snap, EstimatorBank(), zs={"a": 3.0})[0]
    assert cand.z_quantile == 3.0
    ev = evaluate_candidate(spec(), cand, CostParams(), remaining_s=None)
    assert ev.latency_q_s == pytest.approx(ev.latency_mean_s + 3.0 * ev.latency_std_s)


def test_an_overdue_attempt_adds_its_lateness_to_the_targets_wait() -> None:
    from edgesched.core.feedback import InFlight

    inflight = InFlight()
    token = inflight.sent("cloud", 10.0, expect_s=0.2)
    inflight.sent("b", 10.0)  # no expectation: never overdue
    assert inflight.lateness(10.1) == {}
    assert inflight.lateness(11.0) == {"cloud": pytest.approx(0.8)}
    local = NodeState(node_id="a", slots=2)
    snap = ClusterSnapshot(now=11.0, local=local)
    plain = build_candidates(spec(), snap, EstimatorBank(), cloud=CloudTarget())[-1]
    late = build_candidates(spec(), snap, EstimatorBank(), cloud=CloudTarget(),
                            late=inflight.lateness(11.0))[-1]
    assert late.est_wait_s == pytest.approx(plain.est_wait_s + 0.8)
    inflight.settled("cloud", token)
    assert inflight.lateness(12.0) == {}


def test_a_calibrated_z_is_computed_again_every_recompute_every_errors() -> None:
    cal = QuantileCalibrator(CalibrationParams(quantile=0.95, min_samples=5, recompute_every=3,
                                               adapt_rate=0.0))

    def err(r: float) -> None:
        cal.observe("b", "neighbour", actual_s=1.0 + r, mean_s=1.0, std_s=1.0, q_s=2.0)

    for _ in range(5):
        err(0.5)
    assert cal.zs["b"] == 0.5  # computed as soon as there are min_samples errors
    err(3.0)
    err(3.0)
    assert cal.zs["b"] == 0.5  # not yet: 2 new errors of 3
    err(3.0)
    assert cal.zs["b"] == 3.0  # the third: computed again


def test_misses_raise_a_targets_z_and_hits_lower_it_until_misses_run_at_one_in_twenty() -> None:
    """Adaptive conformal: whatever the window's quantile says, a target whose latencies keep
    landing past the quantile gets a wider one, and its misses settle at 1 - quantile."""
    cal = QuantileCalibrator(CalibrationParams(quantile=0.95, min_samples=5, adapt_rate=0.05))
    rng = np.random.default_rng(7)
    misses = []
    for i in range(4000):
        # errors drift upwards over time: a window of past errors always lags them
        r = float(rng.standard_normal()) + i / 1000
        z = cal.zs.get("b", 1.645)
        misses.append(r > z)
        cal.observe("b", "neighbour", actual_s=1.0 + r, mean_s=1.0, std_s=1.0, q_s=1.0 + z)
    late = np.mean(misses[1000:])
    assert 0.04 <= late <= 0.056  # the window's conformal z alone: 0.061 (adapt_rate=0)


def test_a_target_without_errors_of_its_own_borrows_its_placements_pooled_z() -> None:
    cal = QuantileCalibrator(CalibrationParams(quantile=0.95, min_samples=5, adapt_rate=0.0))
    for i in range(10):  # five neighbours, two errors each: none has min_samples
        cal.observe(f"n{i % 5}", "neighbour", actual_s=3.0, mean_s=1.0, std_s=1.0, q_s=2.6)
    assert cal.zs["n0"] == 2.0 and cal.zs["n4"] == 2.0
    assert "n9" not in cal.zs  # never observed: the normal z
    cal.observe("c", "cloud", actual_s=1.0, mean_s=1.0, std_s=1.0, q_s=2.6)
    assert "c" not in cal.zs  # one cloud error is not a quantile yet
