"""The two candidate-building refinements the simulator motivated (edgesched/core/candidates.py).

1. A neighbour's report ages: its backlog relaxes towards its average load as the report gets
   older, so a node seen busy mid-burst is not treated as busy for a whole telemetry interval.
2. This node's own wait is the executor's FIFO estimate when it has one (it knows how far
   along its running tasks are), not the coarser count model.
"""

from __future__ import annotations

import pytest

from edgesched.core.candidates import local_candidate, neighbour_candidate
from edgesched.core.estimators import EstimatorBank, ExecPrior
from edgesched.core.model import NodeState, PowerModel, TaskSpec

TASK = TaskSpec(task_type="t", input_bytes=1000, output_bytes=10, work=1000)
BANK = EstimatorBank(exec_priors={"t": ExecPrior(mean_s=0.1, cv=0.3)})
LOCAL = NodeState(node_id="me", slots=2, last_seen=10.0)


def _neighbour(age: float, util: float = 0.0) -> float:
    busy = NodeState(node_id="nb", slots=2, running=2, queued=2, cpu_util=util, last_seen=10.0)
    cand = neighbour_candidate(TASK, busy, LOCAL, BANK, 10.0 + age, power=PowerModel(),
                               origin_power=PowerModel())
    return cand.est_wait_s


def test_a_fresh_report_uses_the_count_model() -> None:
    assert _neighbour(0.0) == pytest.approx(3 * 0.1 / 2)  # 3 ahead on 2 slots


def test_an_old_report_relaxes_towards_the_average_load() -> None:
    waits = [_neighbour(age) for age in (0.05, 0.1, 0.3, 1.0)]
    assert waits == sorted(waits, reverse=True) and waits[0] < _neighbour(0.0)
    assert _neighbour(1.0) == pytest.approx(0.0, abs=1e-3)  # idle on average: drained
    assert _neighbour(1.0, util=1.0) == pytest.approx(1 * 0.1 / 2, rel=1e-2)  # busy on average


def test_the_local_wait_is_the_executors_own_estimate() -> None:
    busy = NodeState(node_id="me", slots=2, running=2, est_wait_s=0.01, last_seen=10.0)
    cand = local_candidate(TASK, busy, BANK, 10.0, power=PowerModel())
    assert cand.est_wait_s == 0.01  # one slot is about to free up
    unknown = NodeState(node_id="me", slots=2, running=2, last_seen=10.0)
    assert local_candidate(TASK, unknown, BANK, 10.0, power=PowerModel()).est_wait_s == (
        pytest.approx(0.05))
