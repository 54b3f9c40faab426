"""RTT to neighbours measured from telemetry echoes (node/telemetry.py `RttProbe`)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from edgesched.errors import TelemetryRejected
from edgesched.node.telemetry import ECHOES_PER_MESSAGE, RttProbe
from edgesched.node.wire import parse_node_telemetry


def telemetry(node_id: str, ts: float, extra: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"v": 1, "node_id": node_id, "incarnation": 1, "ts": ts,
                       **(extra or {})}).encode()


class Node:
    """One node's probe, its own monotonic clock and a wall clock `offset_s` off."""

    def __init__(self, node_id: str, offset_s: float = 0.0) -> None:
        self.node_id = node_id
        self.offset_s = offset_s
        self.samples: list[tuple[str, float]] = []
        self.probe = RttProbe(node_id, lambda n, s, _now: self.samples.append((n, s)),
                              max_nodes=8)

    def publish(self, mono: float) -> bytes:
        ts = round(1_800_000_000.0 + mono + self.offset_s, 3)
        return telemetry(self.node_id, ts, self.probe.echo(ts, mono))

    def receive(self, payload: bytes, sender: str, mono: float) -> None:
        tel = parse_node_telemetry(payload, sender, limit=4096, echo_for=self.node_id)
        self.probe.heard(sender, tel, mono)


def test_round_trip_excludes_the_hold_and_any_clock_offset() -> None:
    # b's wall clock is 40 s ahead of a's: the measurement must not see it
    a, b = Node("a"), Node("b", offset_s=40.0)
    b.receive(a.publish(10.000), "a", 10.030)  # 30 ms a -> b
    a.receive(b.publish(10.250), "b", 10.290)  # held 220 ms at b, 40 ms b -> a
    assert a.samples == [("b", pytest.approx(0.070, abs=0.0015))]
    assert b.samples == []  # a has not echoed b yet
    b.receive(a.publish(10.500), "a", 10.530)
    assert b.samples == [("a", pytest.approx(0.070, abs=0.0015))]  # 40 ms + 30 ms


def test_an_echo_of_something_we_never_sent_is_ignored() -> None:
    a = Node("a")
    a.publish(1.0)
    forged = telemetry("b", 5.0, {"echo": {"a": [123.456, 10]}})
    a.receive(forged, "b", 1.2)
    assert a.samples == []


def test_every_neighbour_is_echoed_in_turn() -> None:
    """With more neighbours than one message echoes, the longest waiting go first: with 6
    neighbours and 4 echoes a message, any 2 messages in a row echo all of them."""
    a = Node("a")
    names = [f"n{i}" for i in range(ECHOES_PER_MESSAGE + 2)]
    rounds: list[set[str]] = []
    for rnd in range(8):
        for i, name in enumerate(names):
            a.receive(telemetry(name, 100.0 + rnd + i / 100), name, rnd + i / 100)
        rounds.append(set(json.loads(a.publish(rnd + 0.5)).get("echo", {})))
    assert all(len(r) == ECHOES_PER_MESSAGE for r in rounds)
    assert all(first | second == set(names) for first, second in itertools.pairwise(rounds))


def test_only_the_entry_for_us_is_read_and_bad_shapes_are_rejected() -> None:
    ok = telemetry("b", 1.0, {"echo": {"a": [5.0, 12], "c": "anything"}})
    assert parse_node_telemetry(ok, "b", limit=4096, echo_for="a").echo == (5.0, 0.012)
    assert parse_node_telemetry(ok, "b", limit=4096, echo_for="z").echo is None
    for bad, reason in (({"echo": []}, "schema"), ({"echo": {"a": [5.0]}}, "schema"),
                        ({"echo": {"a": [5.0, -1]}}, "out_of_range"),
                        ({"echo": {f"n{i}": [1, 1] for i in range(65)}}, "schema")):
        with pytest.raises(TelemetryRejected) as info:
            parse_node_telemetry(telemetry("b", 1.0, bad), "b", limit=65536, echo_for="a")
        assert info.value.reason == reason


def test_bounded_and_silent_without_a_consumer() -> None:
    quiet = RttProbe("a", None, max_nodes=4)
    assert quiet.echo(1.0, 1.0) == {}
    small = RttProbe("a", lambda *_: None, max_nodes=2)
    for i in range(10):
        small.heard(f"n{i}", parse_node_telemetry(telemetry(f"n{i}", 1.0), f"n{i}",
                                                  limit=4096), 1.0)
    assert len(small.echo(2.0, 2.0)["echo"]) == 2
