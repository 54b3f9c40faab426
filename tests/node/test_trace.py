"""The per-task trace (node/trace.py): what the dispatcher writes into it, its record form,
the ε-greedy exploration wrapper and the live regret's re-prediction.

The dispatcher parts reuse the in-process World of test_fallback_chain (a real Dispatcher,
policy, EstimatorBank; scripted fakes for the executor, offload and cloud clients)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgesched.core.candidates import CLOUD_ID
from edgesched.core.costmodel import CostParams
from edgesched.core.estimators import EstimatorBank
from edgesched.core.exploration import ExploringPolicy
from edgesched.core.model import Candidate, ExecEstimate, LinkEstimate, Placement, TaskSpec
from edgesched.core.policies import CostPolicy
from edgesched.node import protocol as p
from edgesched.node.trace import TaskTrace, hindsight_best_s, new_trace
from tests.node.test_fallback_chain import World, reply_from


def _trace(w: World) -> TaskTrace:
    job = w.job(deadline_s=5.0)
    return new_trace(task_id=job.request.id, task_type="echo", origin="a", role="edge",
                     received_at=job.received_at, work=job.work, exact_s=None,
                     input_bytes=100, output_bytes=100, deadline_s=5.0, priority=0,
                     device_id=None)


async def test_the_dispatcher_fills_candidates_choice_and_each_attempt() -> None:
    w = World(max_attempts=4)
    w.executor.fill()  # local refused by admission
    w.offload.scripts["b"] = reply_from("b", p.Status.OK, result=1, wait_s=0.01, exec_s=0.02)
    trace = _trace(w)
    reply = await w.dispatcher.place(w.job(deadline_s=5.0), trace)
    assert reply.status is p.Status.OK
    assert [c.node_id for c in trace.candidates] == ["a", "b", "c", CLOUD_ID]
    assert trace.chosen == "a" and trace.policy == "cost" and trace.propensity == 1.0
    by_id = {c.node_id: c for c in trace.candidates}
    assert by_id["c"].running == 1 and by_id["c"].queued == 2  # the view's numbers
    assert by_id["a"].rtt_s is None and by_id[CLOUD_ID].rtt_s == pytest.approx(0.08)
    assert all(c.latency_mean_s is not None for c in trace.candidates)
    assert [(a.node_id, a.outcome) for a in trace.attempts] == [("a", "rejected"), ("b", "ok")]
    ok = trace.attempts[1]
    assert ok.wait_s == pytest.approx(0.01) and ok.exec_s == pytest.approx(0.02)
    assert ok.exchange_s == pytest.approx(max(0.0, ok.duration_s - 0.03), abs=1e-6)
    assert trace.energy_j is not None and trace.energy_j >= 0


def test_record_form_round_trips_through_json() -> None:
    w = World()
    trace = _trace(w)
    w.dispatcher.decide(w.job(deadline_s=5.0), trace)
    trace.status, trace.latency_s = "ok", 0.05
    doc = json.loads(json.dumps(trace.to_dict()))
    assert doc["kind"] == "task" and doc["v"] == 1
    back = TaskTrace.from_dict(doc)
    assert back.to_dict() == trace.to_dict()
    cands = [c.to_candidate() for c in back.candidates]
    assert cands[0].placement is Placement.LOCAL and cands[0].link is None


@pytest.mark.parametrize("doc", [
    {"kind": "telemetry", "v": 1},
    {"kind": "task", "v": 99, "id": "x", "type": "echo", "origin": "a"},
    {"kind": "task", "v": 1, "id": 3, "type": "echo", "origin": "a"},
    {"kind": "task", "v": 1, "id": "x", "type": "echo", "origin": "a", "bogus": 1,
     "candidates": [{"nope": 1}]},
])
def test_foreign_documents_are_refused_with_an_exception(doc: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError, KeyError)):
        TaskTrace.from_dict(doc)


def _cands() -> list[Candidate]:
    return [
        Candidate(node_id="a", placement=Placement.LOCAL, exec=ExecEstimate(mean_s=0.05)),
        Candidate(node_id="b", placement=Placement.NEIGHBOUR, exec=ExecEstimate(mean_s=0.05),
                  link=LinkEstimate(rtt_s=0.005)),
        Candidate(node_id=CLOUD_ID, placement=Placement.CLOUD, exec=ExecEstimate(mean_s=0.01),
                  link=LinkEstimate(rtt_s=0.08)),
    ]


def test_exploration_propensities_match_the_choice_frequencies() -> None:
    task = TaskSpec(task_type="echo", input_bytes=100, output_bytes=100, work=100)
    policy = ExploringPolicy(CostPolicy(CostParams()), 0.3, np.random.default_rng(1))
    counts: dict[str, int] = {}
    props: dict[str, float] = {}
    n = 6000
    for _ in range(n):
        d = policy.decide(task, _cands(), 0.0)
        assert d.chosen is not None and d.policy == "cost"
        counts[d.chosen.node_id] = counts.get(d.chosen.node_id, 0) + 1
        props[d.chosen.node_id] = policy.last_propensity
        assert len(d.ranked()) == 3  # the others stay as fallbacks
    # greedy picks local; ε = 0.3 over 3 feasible: 0.7 + 0.1 for it, 0.1 for each other
    assert props == pytest.approx({"a": 0.8, "b": 0.1, CLOUD_ID: 0.1})
    for node, prop in props.items():
        assert counts[node] / n == pytest.approx(prop, abs=0.025)


def test_exploration_off_is_the_inner_policy() -> None:
    task = TaskSpec(task_type="echo", input_bytes=100, output_bytes=100, work=100)
    policy = ExploringPolicy(CostPolicy(CostParams()), 0.0, np.random.default_rng(1))
    for _ in range(50):
        d = policy.decide(task, _cands(), 0.0)
        assert d.chosen is not None and d.chosen.node_id == "a"
        assert policy.last_propensity == 1.0 and not policy.last_explored
    with pytest.raises(ValueError):
        ExploringPolicy(CostPolicy(CostParams()), 1.5, np.random.default_rng(1))


def test_hindsight_re_predicts_with_what_was_learned_since() -> None:
    w = World()
    trace = _trace(w)
    job = w.job(deadline_s=5.0)
    w.dispatcher.decide(job, trace)
    spec = w.dispatcher.spec(job)
    bank: EstimatorBank = w.dispatcher.bank
    before = hindsight_best_s(trace, spec, bank, w.clock())
    assert before is not None and before > 0
    for _ in range(30):  # the local node turns out to be 100x slower than the prior said
        bank.observe_exec("echo", "a", 100.0, 5.0, w.clock())
    after = hindsight_best_s(trace, spec, bank, w.clock())
    assert after is not None and after > before  # local no longer the best: a remote is
    assert after < 5.0
