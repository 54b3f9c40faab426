"""The bounded candidate set: at most `max_candidates` neighbours per decision (issue 19)."""

from __future__ import annotations

import pytest

from edgesched.core.model import Liveness, NodeState
from edgesched.core.shortlist import Shortlist, pre_score
from edgesched.core.view import ClusterView, NodeTelemetry, ViewParams

PARAMS = ViewParams(interval_s=1.0, max_nodes=256)


def cluster(n: int, *, local: str = "me", waits: dict[str, float] | None = None,
            now: float = 0.0) -> ClusterView:
    view = ClusterView(local_id=local, params=PARAMS)
    waits = waits or {}
    for i in range(n):
        node_id = f"n{i:02d}"
        view.observe_telemetry(node_id, NodeTelemetry(
            incarnation=1, slots=2, running=0, queued=0,
            est_wait_s=waits.get(node_id, 0.0)), now=now)
    return view


def no_rtt(node_id: str, now: float) -> float:
    return 0.001


def test_small_cluster_keeps_every_neighbour() -> None:
    view = cluster(3)
    got = Shortlist(view, max_candidates=4, rtt_of=no_rtt).neighbours(0.0)
    assert [n.node_id for n in got] == ["n00", "n01", "n02"]


def test_big_cluster_keeps_the_best_by_reported_wait() -> None:
    waits = {f"n{i:02d}": 1.0 for i in range(30)}
    waits.update({"n07": 0.0, "n21": 0.1, "n29": 0.2})
    view = cluster(30, waits=waits)
    got = Shortlist(view, max_candidates=3, rtt_of=no_rtt).neighbours(0.0)
    assert sorted(n.node_id for n in got) == ["n07", "n21", "n29"]


def test_measured_rtt_puts_the_same_site_first() -> None:
    view = cluster(10)
    far = {"n00", "n01", "n02", "n03", "n04"}

    def rtt(node_id: str, now: float) -> float:
        return 0.060 if node_id in far else 0.002

    got = Shortlist(view, max_candidates=4, rtt_of=rtt).neighbours(0.0)
    assert not far & {n.node_id for n in got}


def test_the_decided_tasks_execution_time_puts_fast_idle_neighbours_first() -> None:
    """Every neighbour idle, speeds 0.5-2x: the list is the fastest ones for the task being
    decided, not the hash's pick (which is what it is without a task)."""
    view = cluster(12)
    speed = {f"n{i:02d}": 0.5 + i / 8 for i in range(12)}  # n11 fastest, n00 slowest

    def exec_of(node_id: str) -> float:
        return 0.05 / speed[node_id]

    got = Shortlist(view, max_candidates=4, rtt_of=no_rtt).neighbours(0.0, exec_of)
    assert sorted(n.node_id for n in got) == ["n08", "n09", "n10", "n11"]
    blind = Shortlist(view, max_candidates=4, rtt_of=no_rtt).neighbours(0.0)
    assert sorted(n.node_id for n in blind) != ["n08", "n09", "n10", "n11"]
    # a fast neighbour with a queue ranks behind a slower idle one when its wait outweighs
    busy = cluster(12, waits={"n11": 0.5, "n10": 0.5})
    got = Shortlist(busy, max_candidates=2, rtt_of=no_rtt).neighbours(0.0, exec_of)
    assert sorted(n.node_id for n in got) == ["n08", "n09"]


def test_members_are_read_at_their_latest_report_and_chosen_again_each_interval() -> None:
    view = cluster(10)
    short = Shortlist(view, max_candidates=2, rtt_of=no_rtt)
    first = {n.node_id for n in short.neighbours(0.0)}
    member = sorted(first)[0]
    # A member's new report is used at once, before the next choice...
    view.observe_telemetry(member, NodeTelemetry(incarnation=1, slots=2, running=2, queued=9,
                                                 est_wait_s=30.0), now=0.2)
    again = {n.node_id: n for n in short.neighbours(0.3)}
    assert set(again) == first and again[member].queued == 9
    # ... and the next choice (one telemetry interval later) drops it for an idle one.
    for i in range(10):
        node_id = f"n{i:02d}"
        if node_id != member:
            view.observe_telemetry(node_id, NodeTelemetry(incarnation=1, slots=2), now=1.1)
    later = {n.node_id for n in short.neighbours(1.2)}
    assert member not in later and len(later) == 2


def test_offline_and_suspect_neighbours_rank_last() -> None:
    base = NodeState(node_id="x", slots=2, last_seen=0.0)
    online = pre_score(base, 0.01, 0.0)
    suspect = pre_score(NodeState(node_id="x", slots=2, liveness=Liveness.SUSPECT), 0.01, 0.0)
    offline = pre_score(NodeState(node_id="x", slots=2, liveness=Liveness.OFFLINE), 0.01, 0.0)
    assert online < suspect < offline


def test_origins_break_ties_differently_so_they_do_not_herd() -> None:
    picks = set()
    for origin in ("a", "b", "c", "d", "e", "f"):
        view = cluster(20, local=origin)
        got = Shortlist(view, max_candidates=3, rtt_of=no_rtt).neighbours(0.0)
        picks.add(frozenset(n.node_id for n in got))
    assert len(picks) > 3  # equal-looking idle neighbours: not the same three for everyone


def test_rejects_a_zero_bound() -> None:
    with pytest.raises(ValueError, match="max_candidates"):
        Shortlist(cluster(1), max_candidates=0, rtt_of=no_rtt)
