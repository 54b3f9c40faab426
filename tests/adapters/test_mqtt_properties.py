"""The MQTT adapter's pre-encoded PUBLISH properties are the bytes paho's Properties packs."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgesched.adapters.mqtt import PackedProperties


@pytest.mark.parametrize(("topic", "corr", "user"), [
    ("edgesched/client/a/reply", b"k-1", None),
    (None, b"", None),
    (None, bytes(range(256)) * 3, None),
    ("t/\u00e9\u6f22", None, [("a", "1"), ("b\u00e9", "")]),
    ("r" * 300, b"x" * 200, [("k", "v" * 130)]),  # a length past 127: two-byte varint
])
def test_same_bytes_as_paho(topic: str | None, corr: bytes | None,
                            user: list[tuple[str, str]] | None) -> None:
    props = Properties(PacketTypes.PUBLISH)
    if topic:
        props.ResponseTopic = topic
    if corr is not None:
        props.CorrelationData = corr
    if user:
        props.UserProperty = user
    assert PackedProperties.publish(topic, corr, user).pack() == props.pack()
