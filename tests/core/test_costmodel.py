"""Worked examples of the cost model with hand-computed numbers, and each hard constraint."""

from __future__ import annotations

import math

import pytest

from edgesched.core.costmodel import BASELINE_CONSTRAINTS, CostParams, miss_probability
from edgesched.core.model import (
    ExecEstimate,
    LinkEstimate,
    Liveness,
    OffloadPolicy,
    PowerModel,
    RejectReason,
)
from tests.core.builders import cloud, local, neighbour, task
from tests.core.reference import evaluate, predict

Z95 = 1.6448536269514722

# 1 MB in, 125 kB out over 8 Mbit/s: upload 1.0 s, download 0.125 s.
BIG = task(input_bytes=1_000_000.0, output_bytes=125_000.0)
POWER = PowerModel(idle_w=4.0, busy_w=10.0, tx_w=1.0, rx_w=0.5)
ORIGIN = PowerModel(idle_w=4.0, busy_w=10.0, tx_w=2.0, rx_w=1.0)


def worked_neighbour(**kw: object) -> object:
    base: dict[str, object] = {
        "est_wait_s": 0.2, "wait_std_s": 0.4, "exec": ExecEstimate(mean_s=0.5, std_s=0.3),
        "link": LinkEstimate(rtt_s=0.05, bandwidth_bps=8e6), "power": POWER,
        "origin_power": ORIGIN,
    }
    base.update(kw)
    return neighbour(**base)


def test_neighbour_latency_worked_example() -> None:
    p = predict(BIG, worked_neighbour(), CostParams())  # type: ignore[arg-type]
    # T = up 1.0 + rtt 0.05 + wait 0.2 + exec 0.5 + down 0.125
    assert p.upload_s == pytest.approx(1.0)
    assert p.download_s == pytest.approx(0.125)
    assert p.latency_mean_s == pytest.approx(1.875)
    # std = sqrt(0.3² + 0.4²) = 0.5 (no link variance given)
    assert p.latency_std_s == pytest.approx(0.5)
    assert p.latency_q_s == pytest.approx(1.875 + Z95 * 0.5)


def test_neighbour_energy_worked_example() -> None:
    p = predict(BIG, worked_neighbour(), CostParams())  # type: ignore[arg-type]
    # origin: tx 2 W x 1 s + rx 1 W x 0.125 s = 2.125 J
    assert p.energy_origin_j == pytest.approx(2.125)
    # target: (10 - 4) W x 0.5 s + rx 0.5 W x 1 s + tx 1 W x 0.125 s = 3.625 J
    assert p.energy_target_j == pytest.approx(3.625)
    ev = evaluate(BIG, worked_neighbour(), CostParams())  # type: ignore[arg-type]
    assert ev.energy_j == pytest.approx(5.75)
    # mains power: score = 1 x 1.875 s + 0.002 x 5.75 J
    assert ev.score == pytest.approx(1.8865)


def test_link_variance_enters_the_quantile() -> None:
    link = LinkEstimate(rtt_s=0.05, rtt_std_s=0.1, bandwidth_bps=8e6, bandwidth_std_bps=8e5)
    cand = worked_neighbour(exec=ExecEstimate(mean_s=0.5), wait_std_s=0.0, link=link)
    p = predict(BIG, cand, CostParams())  # type: ignore[arg-type]
    # var = rtt 0.1² + (1.0 x 0.1)² + (0.125 x 0.1)²
    assert p.latency_std_s == pytest.approx(math.sqrt(0.01 + 0.01 + 0.00015625))


def test_local_has_no_transfer_terms() -> None:
    cand = local(est_wait_s=0.1, exec=ExecEstimate(mean_s=0.5), power=POWER)
    ev = evaluate(BIG, cand, CostParams())
    assert ev.latency_mean_s == pytest.approx(0.6)
    assert ev.energy_j == pytest.approx(3.0)  # (10 - 4) W x 0.5 s
    assert ev.score == pytest.approx(0.6 + 0.002 * 3.0)


def test_cloud_counts_only_our_radio_and_money() -> None:
    cand = cloud(exec=ExecEstimate(mean_s=0.1), link=LinkEstimate(rtt_s=0.08, bandwidth_bps=8e6),
                 origin_power=ORIGIN, money_cost=0.01)
    ev = evaluate(BIG, cand, CostParams(money_weight=2.0))
    assert ev.latency_mean_s == pytest.approx(1.0 + 0.08 + 0.1 + 0.125)
    assert ev.energy_j == pytest.approx(2.125)  # the cloud's own compute is not ours
    assert ev.money == 0.01
    assert ev.score == pytest.approx(1.305 + 0.002 * 2.125 + 2.0 * 0.01)


def test_kappa_model_replaces_busy_minus_idle() -> None:
    power = PowerModel(kappa=1e-27, freq_hz=1e9)  # κ·f³ = 1 W
    ev = evaluate(BIG, local(exec=ExecEstimate(mean_s=0.5), power=power), CostParams())
    assert ev.energy_j == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("battery", "weight"),
    [(None, 0.002), (1.0, 0.05), (0.5, 0.05), (0.3, 0.275), (0.1, 0.5), (0.0, 0.5)],
)
def test_energy_weight_rises_below_the_knee(battery: float | None, weight: float) -> None:
    assert CostParams().energy_weight_at(battery) == pytest.approx(weight)


def test_battery_weights_apply_to_the_node_that_spends() -> None:
    # Origin on battery at 0.3 (w=0.275), target on mains (w=0.002).
    cand = worked_neighbour(origin_battery=0.3)
    ev = evaluate(BIG, cand, CostParams())  # type: ignore[arg-type]
    assert ev.score == pytest.approx(1.875 + 0.275 * 2.125 + 0.002 * 3.625)


def test_defaults_put_latency_first_on_mains() -> None:
    # 50 ms faster but 10 J more: on mains the faster one wins.
    fast = local(exec=ExecEstimate(mean_s=0.15), power=PowerModel(idle_w=0, busy_w=100.0))
    slow = local(node_id="x", exec=ExecEstimate(mean_s=0.2), power=PowerModel(idle_w=0, busy_w=50))
    params = CostParams()
    assert evaluate(task(), fast, params).score < evaluate(task(), slow, params).score


def test_energy_weighs_in_on_battery() -> None:
    # Same pair on a drained battery: the frugal one wins.
    fast = local(exec=ExecEstimate(mean_s=0.15), power=PowerModel(idle_w=0, busy_w=100.0),
                 battery=0.2)
    slow = local(node_id="x", exec=ExecEstimate(mean_s=0.2), power=PowerModel(idle_w=0, busy_w=50),
                 battery=0.2)
    params = CostParams()
    assert evaluate(task(), slow, params).score < evaluate(task(), fast, params).score


@pytest.mark.parametrize(
    ("cand", "tsk", "reason"),
    [
        (neighbour(supports_type=False), task(), RejectReason.UNSUPPORTED_TYPE),
        (neighbour(), task(offload=OffloadPolicy.LOCAL), RejectReason.OFFLOAD_POLICY),
        (cloud(), task(offload=OffloadPolicy.NEIGHBOURS), RejectReason.OFFLOAD_POLICY),
        (neighbour(excluded=True), task(), RejectReason.EXCLUDED),
        (neighbour(liveness=Liveness.OFFLINE), task(), RejectReason.OFFLINE),
        (neighbour(age_s=6.0), task(), RejectReason.STALE),
        (neighbour(slots=0), task(), RejectReason.NO_CAPACITY),
        (neighbour(running=2, queued=4, max_queue=4), task(), RejectReason.NO_CAPACITY),
        (neighbour(battery=0.05), task(), RejectReason.BATTERY_FLOOR),
        (neighbour(), task(deadline_s=0.2), RejectReason.DEADLINE),
    ],
)
def test_each_hard_constraint(cand: object, tsk: object, reason: RejectReason) -> None:
    ev = evaluate(tsk, cand, CostParams())  # type: ignore[arg-type]
    assert (ev.feasible, ev.reason, ev.score) == (False, reason, math.inf)


def test_constraints_that_allow() -> None:
    params = CostParams()
    # A free slot admits even with a full queue limit; local ignores the battery floor.
    assert evaluate(task(), neighbour(running=1, max_queue=0), params).feasible
    assert evaluate(task(), local(battery=0.05), params).feasible
    assert not evaluate(task(), local(battery=0.05), CostParams(battery_floor_local=True)).feasible
    assert evaluate(task(), neighbour(age_s=4.9), params).feasible


def test_a_mean_past_the_deadline_rules_out_a_likely_miss_weighs_against() -> None:
    cand = local(exec=ExecEstimate(mean_s=0.4, std_s=0.1))
    assert evaluate(task(deadline_s=0.3), cand, CostParams()).reason is RejectReason.DEADLINE
    ev = evaluate(task(deadline_s=0.5), cand, CostParams())
    assert ev.latency_mean_s < 0.5 < ev.latency_q_s and ev.feasible
    # P(miss) = P(N(0.4, 0.1) > 0.5) = 0.1587; it costs 0.3 x 0.5 s x 0.1587
    plain = evaluate(task(deadline_s=0.5), cand, CostParams(miss_weight=0.0))
    assert ev.score - plain.score == pytest.approx(0.3 * 0.5 * 0.158655, rel=1e-4)
    # a target sure to make it pays nothing; the miss chance is read off the quantile
    assert miss_probability(0.4, 0.4 + 1.645 * 0.1, 1.645, 10.0) == pytest.approx(0.0)
    assert miss_probability(0.4, 0.4 + 3.29 * 0.1, 1.645, 0.5) == pytest.approx(0.3085, rel=1e-3)
    assert miss_probability(0.4, 0.4, 1.645, 0.5) == 0.0


def test_remaining_time_overrides_the_task_deadline() -> None:
    ev = evaluate(task(deadline_s=10.0), local(), CostParams(), remaining_s=0.1)
    assert ev.reason is RejectReason.DEADLINE


def test_suspect_is_allowed_with_a_penalty() -> None:
    ok = evaluate(task(), neighbour(), CostParams())
    sus = evaluate(task(), neighbour(liveness=Liveness.SUSPECT), CostParams())
    assert sus.feasible
    assert sus.score == pytest.approx(ok.score + 0.25)


def test_baseline_constraints_ignore_deadline_and_battery() -> None:
    ev = evaluate(task(deadline_s=0.01), neighbour(battery=0.0), CostParams(),
                  enforce=BASELINE_CONSTRAINTS)
    assert ev.feasible and math.isfinite(ev.score)
    ev = evaluate(task(), neighbour(liveness=Liveness.OFFLINE), CostParams(),
                  enforce=BASELINE_CONSTRAINTS)
    assert ev.reason is RejectReason.OFFLINE


@pytest.mark.parametrize(
    "kw",
    [{"latency_weight": -1.0}, {"energy_weight": math.nan}, {"latency_quantile": 1.0},
     {"latency_quantile": 0.4}, {"battery_knee": 1.5}, {"stale_after_s": math.inf}],
)
def test_bad_params_are_rejected(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CostParams(**kw)  # type: ignore[arg-type]


def test_scaled_params_keep_their_limits() -> None:
    scaled = CostParams(latency_quantile=0.9).scaled(3.0)
    assert scaled.latency_weight == 3.0 and scaled.latency_quantile == 0.9
    assert scaled.z == pytest.approx(CostParams(latency_quantile=0.9).z)
    with pytest.raises(ValueError):
        CostParams().scaled(0.0)
