"""The pure cluster view: liveness transitions, incarnation rules, device table bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgesched.core.model import Liveness
from edgesched.core.view import ClusterView, NodeAnnouncement, NodeTelemetry, Observed, ViewParams

PARAMS = ViewParams(interval_s=1.0, suspect_after_intervals=3, offline_after_intervals=10,
                    max_devices=3, device_ttl_s=100.0, max_nodes=4,
                    forget_offline_after_s=50.0)


def view() -> ClusterView:
    return ClusterView(local_id="me", params=PARAMS)


def status(v: ClusterView, node_id: str, now: float) -> Liveness | None:
    for n in v.neighbours(now):
        if n.node_id == node_id:
            return n.liveness
    return None


def online(inc: int) -> NodeAnnouncement:
    return NodeAnnouncement(incarnation=inc, online=True, slots=2, task_types=frozenset({"echo"}))


def offline(inc: int) -> NodeAnnouncement:
    return NodeAnnouncement(incarnation=inc, online=False)


def test_silence_turns_online_into_suspect_then_offline() -> None:
    v = view()
    assert v.observe_telemetry("a", NodeTelemetry(incarnation=1), now=0.0) is Observed.APPLIED
    assert status(v, "a", 3.0) is Liveness.ONLINE
    assert status(v, "a", 3.01) is Liveness.SUSPECT
    assert status(v, "a", 10.01) is Liveness.OFFLINE
    v.observe_telemetry("a", NodeTelemetry(incarnation=1), now=11.0)
    assert status(v, "a", 11.0) is Liveness.ONLINE


def test_offline_state_is_immediate_and_final_for_its_incarnation() -> None:
    v = view()
    v.observe_announcement("a", online(5), now=0.0)
    v.observe_announcement("a", offline(5), now=1.0)
    assert status(v, "a", 1.0) is Liveness.OFFLINE
    # telemetry of the same run that was still queued is not a resurrection
    assert v.observe_telemetry("a", NodeTelemetry(incarnation=5), now=1.1) \
        is Observed.STALE_INCARNATION
    assert status(v, "a", 1.1) is Liveness.OFFLINE


def test_will_of_a_live_node_is_undone_by_its_next_message() -> None:
    # The broker fired the Will (stamped with the run's start) while the node lived on,
    # e.g. across a broker restart; its next telemetry or state doc revives it.
    v = view()
    v.observe_announcement("a", NodeAnnouncement(incarnation=5, online=True, ts=100.0), now=0.0)
    v.observe_announcement("a", NodeAnnouncement(incarnation=5, online=False, ts=100.0), now=1.0)
    assert status(v, "a", 1.0) is Liveness.OFFLINE
    assert v.observe_telemetry("a", NodeTelemetry(incarnation=5, ts=150.0), now=2.0) \
        is Observed.APPLIED
    assert status(v, "a", 2.0) is Liveness.ONLINE
    v.observe_announcement("a", NodeAnnouncement(incarnation=5, online=False, ts=100.0), now=3.0)
    assert v.observe_announcement(
        "a", NodeAnnouncement(incarnation=5, online=True, ts=151.0), now=4.0) is Observed.APPLIED
    assert status(v, "a", 4.0) is Liveness.ONLINE


def test_goodbye_is_not_undone_by_telemetry_sent_before_it() -> None:
    v = view()
    v.observe_telemetry("a", NodeTelemetry(incarnation=5, ts=190.0), now=0.0)
    v.observe_announcement("a", NodeAnnouncement(incarnation=5, online=False, ts=200.0), now=1.0)
    assert v.observe_telemetry("a", NodeTelemetry(incarnation=5, ts=199.0), now=1.1) \
        is Observed.STALE_INCARNATION
    assert status(v, "a", 1.1) is Liveness.OFFLINE


def test_will_of_an_older_incarnation_is_ignored() -> None:
    v = view()
    v.observe_announcement("a", online(5), now=0.0)
    v.observe_announcement("a", online(6), now=1.0)  # restarted
    assert v.observe_announcement("a", offline(5), now=2.0) is Observed.STALE_INCARNATION
    assert status(v, "a", 2.0) is Liveness.ONLINE
    assert v.neighbours(2.0)[0].incarnation == 6


def test_new_incarnation_brings_an_offline_node_back() -> None:
    v = view()
    v.observe_announcement("a", online(5), now=0.0)
    v.observe_announcement("a", offline(5), now=1.0)
    assert v.observe_telemetry("a", NodeTelemetry(incarnation=7, running=1), now=2.0) \
        is Observed.APPLIED
    state = v.neighbours(2.0)[0]
    assert (state.liveness, state.incarnation, state.running) == (Liveness.ONLINE, 7, 1)


def test_retained_offline_state_of_unknown_node_lists_it_offline() -> None:
    v = view()
    v.observe_announcement("old", offline(3), now=0.0)
    assert status(v, "old", 0.0) is Liveness.OFFLINE


def test_own_messages_are_not_neighbours() -> None:
    v = view()
    assert v.observe_announcement("me", online(1), now=0.0) is Observed.SELF
    assert v.observe_telemetry("me", NodeTelemetry(incarnation=1), now=0.0) is Observed.SELF
    assert v.neighbours(0.0) == ()


def test_node_table_is_bounded_and_forgets_long_offline_nodes() -> None:
    v = view()
    for i in range(4):
        assert v.observe_telemetry(f"n{i}", NodeTelemetry(incarnation=1), now=0.0) \
            is Observed.APPLIED
    assert v.observe_telemetry("n9", NodeTelemetry(incarnation=1), now=1.0) is Observed.TABLE_FULL
    # offline after 10 s of silence, forgotten 50 s later
    assert v.observe_telemetry("n9", NodeTelemetry(incarnation=1), now=61.0) is Observed.APPLIED
    assert [n.node_id for n in v.neighbours(61.0)] == ["n9"]


def test_devices_are_conflated_bounded_and_expire() -> None:
    v = view()
    v.observe_device("d1", {"battery": 0.5}, now=0.0, ts=100.0)
    v.observe_device("d1", {"rtt_s": 0.01}, now=1.0, ts=101.0)
    v.observe_device("d1", {"battery": 0.9}, now=2.0, ts=50.0)  # late, older sample
    assert v.devices(2.0)[0].values == {"battery": 0.5, "rtt_s": 0.01}
    v.observe_device("d2", {"x": 1.0}, now=3.0)
    v.observe_device("d3", {"x": 1.0}, now=4.0)
    assert v.observe_device("d4", {"x": 1.0}, now=5.0) is Observed.TABLE_FULL
    assert [d.device_id for d in v.devices(5.0)] == ["d3", "d2", "d1"]
    # d1 (last seen at 2.0) is past its 100 s TTL at 102.5: its slot is reused
    assert v.observe_device("d4", {"x": 2.0}, now=102.5) is Observed.APPLIED
    assert {d.device_id for d in v.devices(102.5)} == {"d2", "d3", "d4"}


def test_snapshot_is_consistent_copy() -> None:
    from edgesched.core.model import NodeState

    v = view()
    v.observe_announcement("a", online(1), now=0.0)
    snap = v.snapshot(NodeState(node_id="me"), now=0.5)
    v.observe_announcement("a", offline(1), now=1.0)
    assert snap.neighbours[0].liveness is Liveness.ONLINE
    assert snap.neighbours[0].task_types == frozenset({"echo"})


@given(st.lists(st.tuples(st.sampled_from(["state_on", "state_off", "tel"]),
                          st.integers(min_value=1, max_value=5)), max_size=40))
def test_incarnation_never_goes_backwards(events: list[tuple[str, int]]) -> None:
    v = view()
    seen = 0
    for i, (kind, inc) in enumerate(events):
        now = float(i)
        if kind == "tel":
            v.observe_telemetry("a", NodeTelemetry(incarnation=inc), now=now)
        else:
            v.observe_announcement("a", NodeAnnouncement(incarnation=inc,
                                                         online=kind == "state_on"), now=now)
        state = v.neighbours(now)[0]
        assert state.incarnation >= seen  # never goes backwards
        if kind == "state_off" and inc >= seen:
            assert state.liveness is Liveness.OFFLINE
        if kind != "state_off" and inc > seen:
            assert state.liveness is Liveness.ONLINE  # a newer run is alive
        seen = state.incarnation


@pytest.mark.parametrize("interval", [0.2, 1.0])
def test_thresholds_scale_with_interval(interval: float) -> None:
    v = ClusterView(local_id="me", params=ViewParams(interval_s=interval))
    v.observe_telemetry("a", NodeTelemetry(incarnation=1), now=0.0)
    assert status(v, "a", 3 * interval + 1e-6) is Liveness.SUSPECT
    assert status(v, "a", 10 * interval + 1e-6) is Liveness.OFFLINE


def test_a_full_table_refuses_new_ids_while_all_live_and_evicts_the_longest_offline() -> None:
    refused: list[str] = []
    v = ClusterView(local_id="me", params=PARAMS, on_refused=refused.append)
    for i in range(4):
        v.observe_announcement(f"n{i}", online(1), now=float(i))
    assert v.observe_announcement("x", online(1), now=4.0) is Observed.TABLE_FULL
    assert v.observe_telemetry("y", NodeTelemetry(incarnation=1), now=4.0) is Observed.TABLE_FULL
    assert refused == ["x", "y"]
    v.observe_announcement("n2", offline(1), now=5.0)  # a goodbye: offline at once
    # n2 is offline (not yet forgotten, that takes 50 s): it makes room for a newcomer
    assert v.observe_announcement("x", online(1), now=6.0) is Observed.APPLIED
    assert [n.node_id for n in v.neighbours(6.0)] == ["n0", "n1", "n3", "x"]
    # silence: n0 (last heard at 0) goes offline first and is the one evicted
    v.observe_telemetry("x", NodeTelemetry(incarnation=1), now=10.5)
    assert v.observe_announcement("z", online(1), now=10.5) is Observed.APPLIED
    assert [n.node_id for n in v.neighbours(10.5)] == ["n1", "n3", "x", "z"]
    assert refused == ["x", "y"]


def test_snapshots_leave_out_long_offline_neighbours() -> None:
    from edgesched.core.model import NodeState

    v = view()
    v.observe_telemetry("a", NodeTelemetry(incarnation=1), now=0.0)
    v.observe_telemetry("b", NodeTelemetry(incarnation=1), now=0.0)
    v.observe_announcement("b", offline(1), now=1.0)

    def listed(now: float) -> list[tuple[str, Liveness]]:
        snap = v.snapshot(NodeState(node_id="me"), now=now)
        return [(n.node_id, n.liveness) for n in snap.neighbours]

    # b said goodbye at 1.0: it stays visible for offline_after (10 s) so a running attempt
    # sees it went offline, then only the status page lists it
    assert listed(10.0) == [("a", Liveness.SUSPECT), ("b", Liveness.OFFLINE)]
    assert listed(11.5) == [("a", Liveness.OFFLINE)]  # a offline since 10.0, b gone
    assert listed(20.5) == []
    assert [n.node_id for n in v.neighbours(20.5)] == ["a", "b"]


@given(st.lists(st.tuples(st.sampled_from(["on", "off", "tel", "read", "expire"]),
                          st.sampled_from(["a", "b", "c", "d", "e", "f"]),
                          st.floats(min_value=0.0, max_value=8.0)), max_size=60))
def test_cached_neighbour_lists_equal_a_fresh_computation(
        events: list[tuple[str, str, float]]) -> None:
    v = view()
    now = 0.0
    for kind, node, step in events:
        now += step
        if kind == "on":
            v.observe_announcement(node, online(1), now=now)
        elif kind == "off":
            v.observe_announcement(node, offline(1), now=now)
        elif kind == "tel":
            v.observe_telemetry(node, NodeTelemetry(incarnation=1, ts=now), now=now)
        elif kind == "expire":
            v.expire(now)
        cached = (v.neighbours(now), v.decision_neighbours(now))
        v._cache = None  # what a view without the cache would say
        assert (v.neighbours(now), v.decision_neighbours(now)) == cached
