"""Candidates from a cluster snapshot, and the shared queue-wait model."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesched.core.candidates import CloudTarget, build_candidates, queue_wait
from edgesched.core.costmodel import CostParams
from edgesched.core.estimators import EstimatorBank, ExecPrior
from edgesched.core.model import (
    ClusterSnapshot,
    LinkEstimate,
    Liveness,
    NodeState,
    OffloadPolicy,
    Placement,
    PowerModel,
    RejectReason,
)
from tests.core.builders import task
from tests.core.reference import evaluate

CLOUD_LINK = LinkEstimate(rtt_s=0.08, bandwidth_bps=2e7)


def bank() -> EstimatorBank:
    b = EstimatorBank(exec_priors={"detect": ExecPrior(mean_s=0.2, cv=0.1)},
                      speeds={"cloud": 8.0})
    b.set_link_prior("cloud", CLOUD_LINK)
    return b


def snapshot() -> ClusterSnapshot:
    return ClusterSnapshot(
        now=100.0,
        local=NodeState(node_id="gw-1", slots=2, running=2, queued=1, last_seen=100.0,
                        battery=0.4, task_types=frozenset({"detect"})),
        neighbours=(
            NodeState(node_id="gw-2", slots=4, last_seen=98.0, battery=0.9),
            NodeState(node_id="gw-3", liveness=Liveness.OFFLINE, last_seen=10.0),
            NodeState(node_id="gw-4", task_types=frozenset({"hash"}), last_seen=100.0),
            NodeState(node_id="big", role="cloud", last_seen=100.0),
        ),
    )


@pytest.mark.parametrize(
    ("slots", "running", "queued", "wait"),
    [(2, 0, 0, 0.0), (2, 1, 0, 0.0), (2, 2, 0, 0.1), (2, 2, 3, 0.4), (1, 1, 1, 0.4)],
)
def test_queue_wait(slots: int, running: int, queued: int, wait: float) -> None:
    # n = running + queued - slots + 1 completions ahead, `slots` at a time, 0.2 s each
    assert queue_wait(slots, running, queued, 0.2)[0] == pytest.approx(wait)
    assert queue_wait(0, 0, 0, 0.2)[0] == math.inf


def test_build_candidates_from_a_snapshot() -> None:
    power = PowerModel(idle_w=1.0, busy_w=2.0)
    cands = build_candidates(task(), snapshot(), bank(), cloud=CloudTarget(money_cost=0.01),
                             local_power=power, local_max_queue=8)
    by_id = {c.node_id: c for c in cands}
    assert list(by_id) == ["gw-1", "gw-2", "gw-3", "gw-4", "cloud"]  # no cloud-role node
    loc = by_id["gw-1"]
    assert loc.placement is Placement.LOCAL and loc.link is None
    assert loc.est_wait_s == pytest.approx(0.2)  # 2 ahead on 2 slots at 0.2 s
    assert (loc.max_queue, loc.battery, loc.power) == (8, 0.4, power)
    n2 = by_id["gw-2"]
    assert n2.age_s == pytest.approx(2.0) and n2.est_wait_s == 0.0
    assert n2.origin_power == power and n2.origin_battery == 0.4 and n2.battery == 0.9
    assert by_id["gw-3"].liveness is Liveness.OFFLINE
    assert not by_id["gw-4"].supports_type
    c = by_id["cloud"]
    assert c.exec.mean_s == pytest.approx(0.025) and c.link == CLOUD_LINK
    assert c.money_cost == 0.01


def test_inflight_and_exclusions() -> None:
    cands = build_candidates(task(), snapshot(), bank(), cloud=CloudTarget(),
                             inflight={"gw-2": 5, "cloud": 3}, exclude={"gw-2"})
    by_id = {c.node_id: c for c in cands}
    assert by_id["gw-2"].running == 5 and by_id["gw-2"].excluded
    assert by_id["gw-2"].est_wait_s == pytest.approx(2 * 0.2 / 4)
    assert by_id["cloud"].running == 3


def test_offload_argument_skips_forbidden_targets() -> None:
    cands = build_candidates(task(), snapshot(), bank(), cloud=CloudTarget(),
                             offload=OffloadPolicy.LOCAL)
    assert [c.node_id for c in cands] == ["gw-1"]


def test_reported_wait_wins_when_longer() -> None:
    snap = snapshot()
    busy = NodeState(node_id="gw-2", slots=4, last_seen=100.0, est_wait_s=3.0)
    snap = ClusterSnapshot(now=100.0, local=snap.local, neighbours=(busy,))
    (_, n2) = build_candidates(task(), snap, bank())
    assert n2.est_wait_s == 3.0


def test_a_node_without_slots_is_refused_with_a_finite_wait() -> None:
    # Telemetry may say slots = 0 (node/wire.py accepts it): no wait ever ends there.
    full = NodeState(node_id="gw-9", slots=0, running=0, last_seen=100.0)
    snap = ClusterSnapshot(now=100.0, local=NodeState(node_id="gw-1", last_seen=100.0),
                           neighbours=(full,))
    _, n9 = build_candidates(task(), snap, bank())
    assert n9.est_wait_s == 1e9
    assert evaluate(task(), n9, CostParams()).reason is RejectReason.NO_CAPACITY


@settings(max_examples=300, deadline=None)
@given(
    slots=st.integers(0, 6), running=st.integers(0, 12), queued=st.integers(0, 12),
    reported=st.floats(0.0, 1e9), util=st.floats(0.0, 1.0), age=st.floats(0.0, 1e9),
    extra=st.integers(0, 3),
)
def test_a_neighbours_candidate_stays_in_range(
    slots: int, running: int, queued: int, reported: float, util: float, age: float,
    extra: int,
) -> None:
    """Any report the view accepts (node/wire.py's ranges) gives a candidate with the
    reported counts plus ours, and a wait within 0..MAX_WAIT_S."""
    node = NodeState(node_id="gw-2", slots=slots, running=running, queued=queued,
                     est_wait_s=reported, cpu_util=util, last_seen=100.0 - age)
    snap = ClusterSnapshot(now=100.0, local=NodeState(node_id="gw-1", last_seen=100.0),
                           neighbours=(node,))
    n2 = build_candidates(task(), snap, bank(), inflight={"gw-2": extra})[1]
    assert (n2.slots, n2.running, n2.queued) == (slots, running + extra, queued)
    assert 0.0 <= n2.est_wait_s <= 1e9 and 0.0 <= n2.wait_std_s <= 1e9
    assert n2.age_s == pytest.approx(age)


def test_a_neighbours_wait_is_built_on_the_exec_estimate_it_carries() -> None:
    """The seam bug of issue 16: waits came from an estimate at x = input_bytes while the
    candidate's exec field said x = work (1.68 s against 0.50 s). One estimate now serves
    both, at the task's work."""
    b = EstimatorBank(exec_priors={"matmul": ExecPrior(mean_s=0.5, s_per_mb=0.2, cv=0.1)})
    busy = NodeState(node_id="gw-2", slots=1, running=1, queued=1, last_seen=100.0)
    snap = ClusterSnapshot(now=100.0, local=NodeState(node_id="gw-1", last_seen=100.0),
                           neighbours=(busy,))
    spec = task(task_type="matmul", input_bytes=300.0, work=5.9e6)  # n=180: n³/1000 units
    _, n2 = build_candidates(spec, snap, b)
    assert n2.exec.mean_s == pytest.approx(0.5 + 0.2 * 5.9)  # 1.68 s, at x = work
    assert n2.est_wait_s == pytest.approx(queue_wait(1, 1, 1, n2.exec.mean_s)[0])
    assert n2.est_wait_s == pytest.approx(2 * 1.68)  # two tasks ahead on one slot


def test_an_exact_execution_time_is_used_for_every_target() -> None:
    busy = NodeState(node_id="gw-2", slots=1, running=1, last_seen=100.0)
    snap = ClusterSnapshot(now=100.0, local=NodeState(node_id="gw-1", last_seen=100.0),
                           neighbours=(busy,))
    cands = build_candidates(task(task_type="sleep", exact_s=0.3), snap, bank(),
                             cloud=CloudTarget())
    assert [c.exec.mean_s for c in cands] == [0.3, 0.3, 0.3]
    assert cands[1].est_wait_s == pytest.approx(0.3)
    assert cands[0].exec.std_s == pytest.approx(0.02 * 0.3 + 0.002)
