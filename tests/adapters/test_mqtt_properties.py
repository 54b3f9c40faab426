"""The MQTT adapter's PUBLISH properties: written and read as paho's own Properties does."""

from __future__ import annotations

import paho.mqtt.client as paho
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


def _as_paho_reads(packed: bytes, cls: type) -> dict[str, object]:
    props = cls(PacketTypes.PUBLISH)
    _, used = props.unpack(packed)
    assert used == len(packed)
    return {name: getattr(props, name) for name in
            ("ResponseTopic", "CorrelationData", "ContentType", "UserProperty",
             "PayloadFormatIndicator", "MessageExpiryInterval") if hasattr(props, name)}


@pytest.mark.parametrize("build", [
    {"ResponseTopic": "clients/x/reply", "CorrelationData": b"k-1"},
    {"CorrelationData": b""},
    {"ResponseTopic": "t/\u00e9", "UserProperty": [("a", "1"), ("b", "2")],
     "ContentType": "application/json"},
    {"PayloadFormatIndicator": 1, "MessageExpiryInterval": 30, "ResponseTopic": "r"},  # paho's
    {},
])
def test_the_adapter_reads_publish_properties_as_paho_does(build: dict[str, object]) -> None:
    from edgesched.adapters import mqtt

    props = Properties(PacketTypes.PUBLISH)
    for name, value in build.items():
        setattr(props, name, value)
    packed = props.pack()
    assert paho.Properties is mqtt._QuickProperties  # what paho's reader makes, in this process
    assert _as_paho_reads(packed, mqtt._QuickProperties) == _as_paho_reads(packed, Properties)
    assert _as_paho_reads(packed, Properties) == build


def test_a_repeated_single_property_is_refused_as_paho_does() -> None:
    from edgesched.adapters import mqtt

    body = b"\x08\x00\x01a" * 2  # Response Topic twice
    packed = bytes([len(body)]) + body
    for cls in (mqtt._QuickProperties, Properties):
        with pytest.raises(Exception, match="more than once"):
            cls(PacketTypes.PUBLISH).unpack(packed)


def test_paho_decodes_a_publish_with_the_adapter_s_properties() -> None:
    """The PUBLISH a node receives is decoded with the quick properties: paho 2.2 moved its
    decoding out of the client module, where only the client's own were replaced."""
    from paho.mqtt import _packet
    from paho.mqtt.enums import MQTTProtocolVersion

    from edgesched.adapters import mqtt

    props = PackedProperties.publish("r/1", b"k", None).pack()
    body = b"\x00\x03t/x" + b"\x00\x07" + props + b"payload"
    decoded = _packet.decode_publish(0x32, body, MQTTProtocolVersion.MQTTv5)
    assert type(decoded.properties) is mqtt._QuickProperties
    assert decoded.properties.ResponseTopic == "r/1" and decoded.payload == b"payload"
