"""Property tests of the decision core (hypothesis)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from edgesched.core.costmodel import BASELINE_CONSTRAINTS, CostParams, check
from edgesched.core.model import (
    Candidate,
    ExecEstimate,
    LinkEstimate,
    Liveness,
    OffloadPolicy,
    Placement,
    PowerModel,
    TaskSpec,
)
from edgesched.core.policies import POLICY_NAMES, make_policy
from tests.core.reference import evaluate, predict, weighted_cost

pos = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
small = st.floats(min_value=0.0, max_value=2.0, allow_nan=False)


@st.composite
def powers(draw: st.DrawFn) -> PowerModel:
    return PowerModel(idle_w=draw(pos), busy_w=draw(st.floats(0, 30)), tx_w=draw(pos),
                      rx_w=draw(pos))


@st.composite
def candidates(draw: st.DrawFn, node_id: str, placement: Placement) -> Candidate:
    link = None
    if placement is not Placement.LOCAL:
        link = LinkEstimate(rtt_s=draw(small), rtt_std_s=draw(small),
                            bandwidth_bps=draw(st.floats(1e5, 1e9)),
                            bandwidth_std_bps=draw(st.floats(0, 1e5)))
    return Candidate(
        node_id=node_id, placement=placement,
        liveness=draw(st.sampled_from(Liveness)), age_s=draw(pos),
        slots=draw(st.integers(0, 4)), running=draw(st.integers(0, 4)),
        queued=draw(st.integers(0, 8)), est_wait_s=draw(small), wait_std_s=draw(small),
        battery=draw(st.none() | st.floats(0, 1)), power=draw(powers()), link=link,
        exec=ExecEstimate(mean_s=draw(small), std_s=draw(small)),
        supports_type=draw(st.booleans()),
        money_cost=draw(st.floats(0, 1)), max_queue=draw(st.none() | st.integers(0, 8)),
        origin_power=draw(powers()), origin_battery=draw(st.none() | st.floats(0, 1)),
        excluded=draw(st.integers(0, 9)) == 0,
    )


@st.composite
def cand_lists(draw: st.DrawFn) -> list[Candidate]:
    n = draw(st.integers(1, 6))
    out = [draw(candidates("local", Placement.LOCAL))]
    out += [draw(candidates(f"n{i}", Placement.NEIGHBOUR)) for i in range(n)]
    if draw(st.booleans()):
        out.append(draw(candidates("cloud", Placement.CLOUD)))
    return out


@st.composite
def tasks(draw: st.DrawFn) -> TaskSpec:
    return TaskSpec(task_type="t", input_bytes=draw(st.floats(0, 1e7)),
                    output_bytes=draw(st.floats(0, 1e6)), work=draw(st.floats(0, 1e7)),
                    deadline_s=draw(st.none() | st.floats(0.01, 5)),
                    offload=draw(st.sampled_from(OffloadPolicy)))


@st.composite
def cost_params(draw: st.DrawFn) -> CostParams:
    return CostParams(latency_weight=draw(st.floats(0.1, 10)),
                      energy_weight=draw(st.floats(0, 1)),
                      battery_energy_weight=draw(st.floats(0, 1)),
                      battery_energy_weight_max=draw(st.floats(0, 5)),
                      money_weight=draw(st.floats(0, 10)),
                      latency_quantile=draw(st.floats(0.5, 0.999)))


def decide(name: str, t: TaskSpec, cands: list[Candidate], params: CostParams, seed: int = 0):
    return make_policy(name, params, np.random.default_rng(seed)).decide(t, cands, 0.0)


@settings(max_examples=200, deadline=None)
@given(tasks(), cand_lists(), cost_params(), st.sampled_from(POLICY_NAMES))
def test_an_infeasible_candidate_is_never_chosen(t, cands, params, name) -> None:
    d = decide(name, t, cands, params)
    enforced = None if name == "cost" else BASELINE_CONSTRAINTS
    for ev in d.ranked():
        assert ev.feasible and ev.reason is None
    for ev in d.evaluations:
        assert ev.feasible == (ev.reason is None)
        if not ev.feasible:
            assert enforced is None or ev.reason in enforced
            assert ev.node_id not in {c.node_id for c in d.ranked()}
    feasible = [e for e in d.evaluations if e.feasible]
    assert len(d.ranked()) == len(feasible)
    assert (d.chosen is None) == (not feasible)


@settings(max_examples=200, deadline=None)
@given(tasks(), cand_lists(), cost_params(), st.data())
def test_cost_choice_is_the_lowest_score(t, cands, params, data) -> None:
    d = decide("cost", t, cands, params)
    scores = [e.score for e in d.ranked()]
    assert scores == sorted(scores)
    for c in cands:  # the fused hot path agrees with the readable formulas
        ev = evaluate(t, c, params)
        p = predict(t, c, params)
        assert ev.latency_mean_s == pytest.approx(p.latency_mean_s)
        assert ev.latency_q_s == pytest.approx(p.latency_q_s)
        assert ev.energy_j == pytest.approx(p.energy_j)
        if ev.feasible:
            assert ev.score == pytest.approx(weighted_cost(c, p, params, t.deadline_s))
        assert ev.reason == check(c, params, p.latency_mean_s, t.deadline_s, t)
        # ... and so does its fast path under the baselines' constraint set.
        base = evaluate(t, c, params, enforce=BASELINE_CONSTRAINTS)
        assert base.reason == check(c, params, p.latency_mean_s, t.deadline_s, t,
                                    BASELINE_CONSTRAINTS)
        if base.feasible:
            assert base.score == pytest.approx(weighted_cost(c, p, params))


WORSEN = {
    "exec": lambda c, f: dataclasses.replace(
        c, exec=ExecEstimate(mean_s=c.exec.mean_s * f + 0.01, std_s=c.exec.std_s)),
    "wait": lambda c, f: dataclasses.replace(c, est_wait_s=c.est_wait_s * f + 0.01),
    "energy": lambda c, f: dataclasses.replace(
        c, power=dataclasses.replace(c.power, busy_w=c.power.busy_w * f + 1.0,
                                     tx_w=c.power.tx_w * f, rx_w=c.power.rx_w * f)),
}


@settings(max_examples=200, deadline=None)
@given(tasks(), cand_lists(), cost_params(), st.data(), st.sampled_from(sorted(WORSEN)),
       st.floats(1.0, 10.0))
def test_worsening_a_candidate_never_makes_it_preferred(t, cands, params, data, how, f) -> None:
    before = decide("cost", t, cands, params)
    i = data.draw(st.integers(0, len(cands) - 1))
    worse = list(cands)
    worse[i] = WORSEN[how](cands[i], f)
    after = decide("cost", t, worse, params)
    target = cands[i].node_id
    rank_before = [e.node_id for e in before.ranked()]
    rank_after = [e.node_id for e in after.ranked()]
    if target not in rank_before:
        assert target not in rank_after
    elif target in rank_after:
        assert rank_after.index(target) >= rank_before.index(target)
    if before.chosen is not None and before.chosen.node_id != target:
        assert after.chosen is not None and after.chosen.node_id != target


@settings(max_examples=200, deadline=None)
@given(tasks(), cand_lists(), cost_params(), st.floats(1e-3, 1e3))
def test_scaling_all_weights_keeps_the_choice(t, cands, params, k) -> None:
    before = decide("cost", t, cands, params)
    scores = sorted(e.score for e in before.ranked())
    # Floating point: only meaningful when the two best are not a near-tie.
    assume(len(scores) < 2 or scores[1] - scores[0] > 1e-9 * max(1.0, abs(scores[0])))
    after = decide("cost", t, cands, params.scaled(k))
    assert (after.chosen and after.chosen.node_id) == (before.chosen and before.chosen.node_id)


@settings(max_examples=100, deadline=None)
@given(tasks(), cand_lists(), cost_params(), st.sampled_from(POLICY_NAMES),
       st.integers(0, 2**32 - 1))
def test_same_inputs_and_seed_give_the_same_decisions(t, cands, params, name, seed) -> None:
    a = make_policy(name, params, np.random.default_rng(seed))
    b = make_policy(name, params, np.random.default_rng(seed))
    for step in range(5):
        assert a.decide(t, cands, float(step)) == b.decide(t, cands, float(step))


BAD = [math.nan, math.inf, -math.inf]
SPEC = {"task_type": "t", "input_bytes": 1.0, "output_bytes": 1.0, "work": 1.0}


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (TaskSpec, SPEC, "input_bytes"),
        (TaskSpec, SPEC, "output_bytes"),
        (TaskSpec, SPEC, "deadline_s"),
        (TaskSpec, SPEC, "submitted_at"),
        (TaskSpec, SPEC, "work"),
        (TaskSpec, SPEC, "exact_s"),
        (LinkEstimate, {"rtt_s": 0.1}, "rtt_s"),
        (LinkEstimate, {"rtt_s": 0.1}, "rtt_std_s"),
        (LinkEstimate, {"rtt_s": 0.1}, "bandwidth_bps"),
        (LinkEstimate, {"rtt_s": 0.1}, "bandwidth_std_bps"),
        (ExecEstimate, {"mean_s": 0.1}, "mean_s"),
        (ExecEstimate, {"mean_s": 0.1}, "std_s"),
        (PowerModel, {}, "busy_w"),
        (PowerModel, {}, "kappa"),
        (CostParams, {}, "latency_weight"),
        (CostParams, {}, "energy_weight"),
        (CostParams, {}, "battery_knee"),
        (CostParams, {}, "latency_quantile"),
    ],
)
def test_nan_and_inf_are_rejected_at_construction(cls, kwargs, field, bad) -> None:
    with pytest.raises(ValueError, match=field):
        cls(**{**kwargs, field: bad})
