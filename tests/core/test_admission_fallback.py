"""Admission control and the fallback chain."""

from __future__ import annotations

import numpy as np
import pytest

from edgesched.core.admission import AdmissionReject, admit
from edgesched.core.costmodel import CostParams
from edgesched.core.fallback import FallbackParams, NextAttempt, Terminal, next_attempt
from edgesched.core.model import ExecEstimate, Liveness, Outcome
from edgesched.core.policies import make_policy
from tests.core.builders import cloud, local, neighbour, task


def test_admission_accepts_with_a_free_slot_even_at_queue_limit_zero() -> None:
    a = admit(slots=2, running=1, queued=0, queue_limit=0, exec_s=0.1)
    assert a.accepted and a.predicted_wait_s == 0.0


def test_admission_rejects_a_full_queue() -> None:
    a = admit(slots=2, running=2, queued=4, queue_limit=4, exec_s=0.1)
    assert (a.accepted, a.reason) == (False, AdmissionReject.QUEUE_FULL)
    assert "limit 4" in a.detail


def test_admission_rejects_what_cannot_meet_its_deadline() -> None:
    # 3 ahead on 2 slots at 0.2 s -> wait 0.3 + exec 0.2 > 0.4 left
    a = admit(slots=2, running=2, queued=2, queue_limit=10, exec_s=0.2, remaining_s=0.4)
    assert (a.accepted, a.reason) == (False, AdmissionReject.DEADLINE)
    assert a.predicted_wait_s == pytest.approx(0.3)
    assert admit(slots=2, running=2, queued=2, queue_limit=10, exec_s=0.2,
                 remaining_s=0.6).accepted
    assert not admit(slots=1, running=0, queued=0, queue_limit=1, exec_s=0.1, wait_s=1.0,
                     remaining_s=0.5).accepted


def test_admission_rejects_nonsense_counts() -> None:
    with pytest.raises(ValueError):
        admit(slots=0, running=0, queued=0, queue_limit=1, exec_s=0.1)


def decision(*cands, t=None):
    policy = make_policy("cost", CostParams(), np.random.default_rng(0))
    return policy.decide(t or task(), list(cands), 0.0)


PARAMS = FallbackParams(max_attempts=3, timeout_margin_s=0.5, min_timeout_s=1.0)


def test_fallback_walks_the_ranking_then_local() -> None:
    d = decision(local(est_wait_s=5.0, slots=0), neighbour("a"),
                 neighbour("b", est_wait_s=0.1), cloud())
    order = [e.node_id for e in d.ranked()]
    tried: list[str] = []
    for expected in order:
        step = next_attempt(d, tried=tried, elapsed_s=0.0, deadline_s=None, local_allowed=True,
                            params=FallbackParams(max_attempts=10))
        assert isinstance(step, NextAttempt) and step.target.node_id == expected
        assert not step.last_resort and step.attempt == len(tried) + 1
        tried.append(expected)
    # The ranking is used up; local (infeasible: no capacity) is the last resort.
    step = next_attempt(d, tried=tried, elapsed_s=0.0, deadline_s=None, local_allowed=True,
                        params=FallbackParams(max_attempts=10))
    assert isinstance(step, NextAttempt) and step.last_resort and step.target.node_id == "gw-1"
    tried.append("gw-1")
    step = next_attempt(d, tried=tried, elapsed_s=0.0, deadline_s=None, local_allowed=True,
                        params=FallbackParams(max_attempts=10))
    assert isinstance(step, Terminal) and step.outcome is Outcome.FAILED
    assert "all targets failed" in step.reason


def test_fallback_timeout_rule() -> None:
    slow = neighbour("a", exec=ExecEstimate(mean_s=2.0))
    d = decision(slow)
    step = next_attempt(d, tried=(), elapsed_s=0.0, deadline_s=None, local_allowed=False,
                        params=PARAMS)
    assert isinstance(step, NextAttempt)
    assert step.timeout_s == pytest.approx(d.chosen.latency_q_s + 0.5)  # type: ignore[union-attr]
    fast = decision(neighbour("a", exec=ExecEstimate(mean_s=0.01)))
    step = next_attempt(fast, tried=(), elapsed_s=0.0, deadline_s=None, local_allowed=False,
                        params=PARAMS)
    assert isinstance(step, NextAttempt) and step.timeout_s == 1.0  # the floor
    step = next_attempt(fast, tried=(), elapsed_s=4.8, deadline_s=5.0, local_allowed=False,
                        params=PARAMS)
    assert isinstance(step, NextAttempt) and step.timeout_s == pytest.approx(0.2)  # deadline


def test_fallback_terminal_outcomes() -> None:
    d = decision(neighbour("a"), neighbour("b"), neighbour("c"), neighbour("d"))
    step = next_attempt(d, tried=("a",), elapsed_s=5.0, deadline_s=5.0, local_allowed=True,
                        params=PARAMS)
    assert isinstance(step, Terminal) and step.outcome is Outcome.EXPIRED
    step = next_attempt(d, tried=("a", "b", "c"), elapsed_s=0.0, deadline_s=None,
                        local_allowed=True, params=PARAMS)
    assert isinstance(step, Terminal) and "gave up after 3 attempts" in step.reason


def test_fallback_explains_an_empty_decision() -> None:
    d = decision(neighbour("a", liveness=Liveness.OFFLINE), local(supports_type=False))
    step = next_attempt(d, tried=(), elapsed_s=0.0, deadline_s=None, local_allowed=True,
                        params=PARAMS)
    assert isinstance(step, Terminal) and step.outcome is Outcome.FAILED
    assert "a: offline" in step.reason and "gw-1: unsupported_type" in step.reason


def test_fallback_params_validate() -> None:
    with pytest.raises(ValueError):
        FallbackParams(max_attempts=0)
