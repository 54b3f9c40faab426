"""Telemetry parsing: JSON objects, SenML packs, node documents, config mappings."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgesched.adapters.metrics import TELEMETRY_REJECT_REASONS
from edgesched.config import DeviceMapping
from edgesched.errors import TelemetryRejected
from edgesched.node.wire import (
    parse_device_payload,
    parse_mapped,
    parse_node_state,
    parse_node_telemetry,
)

NOW = 1_800_000_000.0


def parse(payload: object, limit: int = 65536) -> tuple[dict[str, float], float | None, int]:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_device_payload(raw, limit=limit, now_wall=NOW)


def reason(payload: object, limit: int = 65536) -> str:
    with pytest.raises(TelemetryRejected) as info:
        parse(payload, limit)
    return info.value.reason


def test_json_object() -> None:
    assert parse({"ts": 5.0, "battery": 0.5, "uplink_bps": 1e6}) == (
        {"battery": 0.5, "uplink_bps": 1e6}, 5.0, 2)


def test_senml_pack_with_base_fields_units_and_relative_time() -> None:
    pack = [
        {"bn": "urn:dev:mac:0024befffe804ff1:", "bt": NOW - 10, "bu": "%EL", "n": "battery",
         "v": 80},
        {"n": "battery", "t": 5, "v": 70},  # later sample of the same name wins
        {"n": "rtt_s", "u": "ms", "v": 20, "t": 1},
        {"n": "door", "vb": True},
        {"n": "label", "vs": "x"},  # counted, nothing numeric to keep
    ]
    values, ts, samples = parse(pack)
    assert values == {"battery": pytest.approx(0.7), "rtt_s": pytest.approx(0.02), "door": 1.0}
    assert ts == pytest.approx(NOW - 5)
    assert samples == 5


def test_senml_relative_times_are_relative_to_now() -> None:
    _values, ts, _ = parse([{"n": "x", "v": 1, "t": -2}])
    assert ts == pytest.approx(NOW - 2)


def test_senml_pack_of_100_records_is_100_samples() -> None:
    pack = [{"bn": "d/", "n": "temp", "v": 20.0 + i, "t": i} for i in range(100)]
    values, _, samples = parse(pack)
    assert samples == 100
    assert values == {"temp": 119.0}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", "malformed"),
        (b"\xff\xfe", "malformed"),
        (b'{"battery": NaN}', "not_finite"),
        (b'{"battery": Infinity}', "not_finite"),
        (b'{"x": 1e999}', "not_finite"),
        (b'{"battery": 1' + b"0" * 400 + b"}", "not_finite"),
        (b'[{"n": "x", "v": 1' + b"0" * 400 + b"}]", "not_finite"),
        (b'[{"n": "x", "v": 1, "t": 1' + b"0" * 400 + b"}]", "not_finite"),
        (b'[{"n": "x", "v": NaN}]', "not_finite"),
        ({"battery": 1.5}, "out_of_range"),
        ({"rtt_s": -1}, "out_of_range"),
        ([{"n": "battery", "u": "%EL", "v": 150}], "out_of_range"),
        ({"battery": "full"}, "schema"),
        ({"battery": True}, "schema"),
        ({}, "schema"),
        ([], "schema"),
        ([{"n": "x"}], "schema"),
        ([1, 2], "schema"),
        ([{"n": 5, "v": 1}], "schema"),
        ([{"n": ["x"], "v": 1}], "schema"),
        ([{"n": "x", "v": 1, "t": 1e999}], "not_finite"),
        ([{"n": "x", "v": "1"}], "schema"),
        ([{"bn": 3, "n": "x", "v": 1}], "schema"),
        (b"42", "schema"),
        ({f"m{i}": 1 for i in range(65)}, "schema"),
    ],
)
def test_rejections(payload: object, expected: str) -> None:
    assert reason(payload) == expected


def test_oversize_is_rejected_before_parsing() -> None:
    assert reason(b"{" * 100, limit=64) == "oversize"  # would be malformed if parsed


def node_doc(**extra: object) -> bytes:
    doc = {"v": 1, "node_id": "gw-1", "status": "online", "role": "edge", "incarnation": 7,
           "ts": 1.0, "task_types": ["echo"], "slots": 2}
    doc.update(extra)
    return json.dumps(doc).encode()


def test_node_state() -> None:
    ann = parse_node_state(node_doc(), "gw-1", limit=4096)
    assert (ann.incarnation, ann.online, ann.slots, ann.task_types) == (7, True, 2,
                                                                         frozenset({"echo"}))
    assert not parse_node_state(node_doc(status="offline"), "gw-1", limit=4096).online
    assert ann.speed is None  # documents of nodes that announce no speed stay valid
    assert parse_node_state(node_doc(speed=4.0), "gw-1", limit=4096).speed == 4.0


@pytest.mark.parametrize(
    ("extra", "topic_id", "expected"),
    [
        ({}, "gw-2", "schema"),  # node id in the body does not match the topic
        ({"v": 2}, "gw-1", "schema"),
        ({"status": "sleeping"}, "gw-1", "schema"),
        ({"incarnation": -1}, "gw-1", "out_of_range"),
        ({"slots": 10**40}, "gw-1", "out_of_range"),
        ({"incarnation": "7"}, "gw-1", "schema"),
        ({"task_types": "echo"}, "gw-1", "schema"),
        ({"speed": 0}, "gw-1", "out_of_range"),
        ({"speed": "fast"}, "gw-1", "schema"),
    ],
)
def test_node_state_rejections(extra: dict[str, object], topic_id: str, expected: str) -> None:
    with pytest.raises(TelemetryRejected) as info:
        parse_node_state(node_doc(**extra), topic_id, limit=4096)
    assert info.value.reason == expected


def test_node_telemetry() -> None:
    raw = json.dumps({"v": 1, "node_id": "gw-1", "incarnation": 3, "ts": 1.0, "cpu_util": 0.5,
                      "running": 1, "queued": 2, "slots": 4, "est_wait_s": 0.25,
                      "battery": None, "power_w": 6.0}).encode()
    tel = parse_node_telemetry(raw, "gw-1", limit=4096)
    assert (tel.running, tel.queued, tel.slots, tel.est_wait_s, tel.battery) == (1, 2, 4, 0.25,
                                                                               None)
    with pytest.raises(TelemetryRejected) as info:
        parse_node_telemetry(raw.replace(b"0.5", b"1.5"), "gw-1", limit=4096)
    assert info.value.reason == "out_of_range"


def test_config_mappings() -> None:
    plain = DeviceMapping(topic="bms/soc", device_id="bms", name="battery", scale=0.01)
    assert parse_mapped(b" 55 \n", plain, limit=4096) == pytest.approx(0.55)
    nested = DeviceMapping(topic="modem/+/stats", device_id="modem", name="rtt_s",
                           field="link.rtt_ms", scale=0.001)
    assert parse_mapped(b'{"link": {"rtt_ms": 40}}', nested, limit=4096) == pytest.approx(0.04)
    for payload, expected in ((b"abc", "malformed"), (b"250", "out_of_range")):
        with pytest.raises(TelemetryRejected) as info:
            parse_mapped(payload, plain, limit=4096)
        assert info.value.reason == expected
    with pytest.raises(TelemetryRejected) as info:
        parse_mapped(b'{"link": {}}', nested, limit=4096)
    assert info.value.reason == "schema"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
    | st.integers(min_value=10**308, max_value=10**400),  # beyond any double
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["bn", "bt", "bu", "bv", "n", "t", "v", "vb", "vs", "u",
                                       "ts", "battery", "v", "node_id", "incarnation", "status"]),
                      children, max_size=6),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_any_json_is_accepted_or_rejected_never_crashes(doc: object) -> None:
    raw = json.dumps(doc).encode()
    for parse_one in (
        lambda: parse_device_payload(raw, limit=65536, now_wall=NOW),
        lambda: parse_node_state(raw, "gw-1", limit=65536),
        lambda: parse_node_telemetry(raw, "gw-1", limit=65536),
    ):
        try:
            parse_one()
        except TelemetryRejected as rej:
            assert rej.reason in TELEMETRY_REJECT_REASONS


@given(st.binary(max_size=64))
def test_any_bytes_are_accepted_or_rejected(raw: bytes) -> None:
    try:
        parse_device_payload(raw, limit=65536, now_wall=NOW)
    except TelemetryRejected as rej:
        assert rej.reason in TELEMETRY_REJECT_REASONS


def test_wire_parsing_is_pure() -> None:
    """node/wire.py parses; it never imports the event loop, MQTT or the adapters."""
    import ast
    from pathlib import Path

    import edgesched.node.wire as wire

    tree = ast.parse(Path(wire.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in imported
                if m.split(".")[0] in ("asyncio", "aiomqtt", "aiohttp")
                or m.startswith(("edgesched.adapters", "edgesched.node"))}, imported
