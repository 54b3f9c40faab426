"""Signed subscriptions in the MQTT adapter, against a real mosquitto: verification before the
handler, stripping when signing is off, the signed Last Will, and conflated telemetry."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client import CollectorRegistry

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, MqttOptions, OutboundMessage
from edgesched.adapters.signing import (
    FRAME_MAGIC,
    MessageSecurity,
    load_security,
    write_node_keypair,
)
from tests.support.broker import Mosquitto


def security(keys: Path, node: str) -> MessageSecurity:
    return load_security(node, keys / f"{node}.key", keys, max_skew_s=30.0)


def client(broker: Mosquitto, name: str, sec: MessageSecurity | None) -> tuple[MqttClient, Metrics]:
    metrics = Metrics(CollectorRegistry())
    opts = MqttOptions(host=broker.host, port=broker.port, client_id=name, keepalive_s=2,
                       reconnect_initial_s=0.05, reconnect_max_s=0.3)
    return MqttClient(opts, metrics, security=sec), metrics


def rejected(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value("edgesched_messages_rejected_total",
                                              {"reason": reason})
    return value or 0.0


async def test_only_verified_messages_reach_the_handler(mosquitto: Mosquitto,
                                                        tmp_path: Path) -> None:
    for node in ("a", "b"):
        write_node_keypair(node, tmp_path)
    a, _ = client(mosquitto, "a", security(tmp_path, "a"))
    b, b_metrics = client(mosquitto, "b", security(tmp_path, "b"))
    plain, _ = client(mosquitto, "plain", None)
    box: asyncio.Queue[InboundMessage] = asyncio.Queue()

    async def handler(msg: InboundMessage) -> None:
        await box.put(msg)

    await b.subscribe("p/node/+/telemetry", handler, qos=1, signed=True)
    async with a, b, plain:
        for c in (a, b, plain):
            await asyncio.wait_for(c.wait_connected(), 5)
        await plain.publish("p/node/a/telemetry", b'{"forged":1}', qos=1)
        await a.publish("p/node/a/telemetry", b'{"real":1}', qos=1, signed=True)
        msg = await asyncio.wait_for(box.get(), 5)
        assert (msg.payload, msg.signer) == (b'{"real":1}', "a")
        assert b.reject_signer(msg, "a") is False
        assert b.reject_signer(msg, "c") is True  # signed by a, speaking for c
        assert rejected(b_metrics, "unsigned") == 1
        assert rejected(b_metrics, "wrong_signer") == 1
        assert box.empty()


async def test_without_a_key_signature_headers_are_stripped(mosquitto: Mosquitto,
                                                            tmp_path: Path) -> None:
    write_node_keypair("a", tmp_path)
    a, _ = client(mosquitto, "a", security(tmp_path, "a"))
    plain, _ = client(mosquitto, "plain", None)
    box: asyncio.Queue[InboundMessage] = asyncio.Queue()

    async def handler(msg: InboundMessage) -> None:
        await box.put(msg)

    await plain.subscribe("p/x", handler, qos=1, signed=True)
    async with a, plain:
        for c in (a, plain):
            await asyncio.wait_for(c.wait_connected(), 5)
        await a.publish("p/x", b"body", qos=1, signed=True)
        await plain.publish("p/x", b"plain", qos=1, signed=True)  # no key: sent as it is
        first, second = [await asyncio.wait_for(box.get(), 5) for _ in range(2)]
    assert {first.payload, second.payload} == {b"body", b"plain"}
    assert first.signer is None and second.signer is None


async def test_the_last_will_is_signed_and_accepted_late(mosquitto: Mosquitto,
                                                         tmp_path: Path) -> None:
    for node in ("a", "b"):
        write_node_keypair(node, tmp_path)
    dying, _ = client(mosquitto, "dying", security(tmp_path, "a"))
    dying.set_will(OutboundMessage(topic="p/node/a/state", payload=b'{"offline":1}',
                                   retain=True, signed=True))
    b, b_metrics = client(mosquitto, "b", security(tmp_path, "b"))
    box: asyncio.Queue[InboundMessage] = asyncio.Queue()

    async def handler(msg: InboundMessage) -> None:
        await box.put(msg)

    await b.subscribe("p/node/+/state", handler, qos=1, signed=True, persistent=True)
    async with b:
        await asyncio.wait_for(b.wait_connected(), 5)
        async with dying:
            await asyncio.wait_for(dying.wait_connected(), 5)
        msg = await asyncio.wait_for(box.get(), 5)  # the graceful stop publishes the Will
        assert (msg.payload, msg.signer) == (b'{"offline":1}', "a")
    # a new subscriber gets the retained, signed copy
    late, _ = client(mosquitto, "late", security(tmp_path, "b"))
    await late.subscribe("p/node/+/state", handler, qos=1, signed=True, persistent=True)
    async with late:
        msg = await asyncio.wait_for(box.get(), 5)
        assert msg.retain and msg.signer == "a"
    assert rejected(b_metrics, "replay") == 0


async def test_conflated_telemetry_skips_superseded_messages_unverified(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    for node in ("a", "b"):
        write_node_keypair(node, tmp_path)
    a, _ = client(mosquitto, "a", security(tmp_path, "a"))
    b, b_metrics = client(mosquitto, "b", security(tmp_path, "b"))
    seen: list[bytes] = []
    both_last = asyncio.Event()

    async def slow(msg: InboundMessage) -> None:
        seen.append(msg.payload)
        if seen.count(b"19") == 2:
            both_last.set()
        await asyncio.sleep(0.05)

    await b.subscribe("p/node/+/telemetry", slow, qos=1, signed=True, conflate=True)
    async with a, b:
        for c in (a, b):
            await asyncio.wait_for(c.wait_connected(), 5)
        for i in range(20):
            for node in ("x", "y"):
                await a.publish(f"p/node/{node}/telemetry", b"%d" % i, qos=1, signed=True)
        await asyncio.wait_for(both_last.wait(), 5)  # the newest of each topic is handled
    superseded = b_metrics.registry.get_sample_value(
        "edgesched_mqtt_messages_dropped_total", {"reason": "superseded"})
    assert len(seen) < 40 and superseded == 40 - len(seen), (len(seen), superseded)
    assert not any(p.startswith(FRAME_MAGIC) for p in seen)
