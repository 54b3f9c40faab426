"""A task without a deadline is not thrown away while this node can still queue it (issue 21).

Before, three timed-out remote attempts ended a deadline-free task with "gave up after 3
attempts" although the node's own queue had room: `cost` lost 0.2-1.4 % of the tasks of the
EdgeCloudSim scenarios that way.
"""

from __future__ import annotations

import numpy as np

from edgesched.core.costmodel import CostParams
from edgesched.core.fallback import FallbackParams, NextAttempt, Terminal, next_attempt
from edgesched.core.model import Outcome
from edgesched.core.policies import make_policy
from tests.core.builders import cloud, local, neighbour, task

PARAMS = FallbackParams(max_attempts=3, timeout_margin_s=0.5, min_timeout_s=1.0)


def _decision(*cands):
    policy = make_policy("cost", CostParams(), np.random.default_rng(0))
    return policy.decide(task(), list(cands), 0.0)


def test_attempts_used_up_without_a_deadline_go_to_the_local_queue() -> None:
    d = _decision(local(est_wait_s=30.0), neighbour("a"), neighbour("b"), cloud())
    remote = [e.node_id for e in d.ranked() if e.node_id != "gw-1"][:3]
    assert len(remote) == 3
    step = next_attempt(d, tried=remote, elapsed_s=9.0, deadline_s=None, local_allowed=True,
                        params=PARAMS)
    assert isinstance(step, NextAttempt)
    assert step.target.node_id == "gw-1" and step.last_resort and step.attempt == 4
    # ... and once the local queue has refused it too, the task fails.
    step = next_attempt(d, tried=[*remote, "gw-1"], elapsed_s=9.0, deadline_s=None,
                        local_allowed=True, params=PARAMS)
    assert isinstance(step, Terminal) and step.outcome is Outcome.FAILED


def test_attempts_used_up_with_a_deadline_still_give_up() -> None:
    d = _decision(local(est_wait_s=30.0), neighbour("a"), neighbour("b"), cloud())
    remote = [e.node_id for e in d.ranked() if e.node_id != "gw-1"][:3]
    step = next_attempt(d, tried=remote, elapsed_s=1.0, deadline_s=60.0, local_allowed=True,
                        params=PARAMS)
    assert isinstance(step, Terminal) and "gave up after 3 attempts" in step.reason


def test_a_type_that_may_not_run_here_still_gives_up() -> None:
    d = _decision(local(est_wait_s=30.0), neighbour("a"), neighbour("b"), cloud())
    remote = [e.node_id for e in d.ranked() if e.node_id != "gw-1"][:3]
    step = next_attempt(d, tried=remote, elapsed_s=1.0, deadline_s=None, local_allowed=False,
                        params=PARAMS)
    assert isinstance(step, Terminal) and "gave up after 3 attempts" in step.reason
