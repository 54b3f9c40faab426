"""The embedded amqtt broker carries MQTT 3.1.1 traffic on loopback, retained and QoS 1."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from edgesched.adapters.embedded_broker import EmbeddedBroker
from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, MqttOptions


async def _first(client: aiomqtt.Client) -> aiomqtt.Message:
    async def _get() -> aiomqtt.Message:
        async for message in client.messages:
            return message
        raise AssertionError("connection ended")

    return await asyncio.wait_for(_get(), 5.0)


async def test_pub_sub_through_embedded_broker() -> None:
    async with EmbeddedBroker() as broker:
        assert broker.port > 0
        v311 = aiomqtt.ProtocolVersion.V311
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=v311) as sub, \
                aiomqtt.Client("127.0.0.1", broker.port, protocol=v311) as pub:
            await sub.subscribe("demo/+/x", qos=1)
            await pub.publish("demo/a/x", b"hello", qos=1)
            message = await _first(sub)
            assert message.topic.value == "demo/a/x"
            assert message.payload == b"hello"


def _client(port: int, name: str) -> MqttClient:
    options = MqttOptions(host="127.0.0.1", port=port, protocol="3.1.1", client_id=name)
    return MqttClient(options, Metrics())


async def test_retained_message_reaches_late_subscriber() -> None:
    async with EmbeddedBroker() as broker:
        async with _client(broker.port, "pub") as pub:
            await asyncio.wait_for(pub.wait_connected(), 5.0)
            await pub.publish("edgesched/node/n1/state", b'{"status":"online"}', qos=1,
                              retain=True)
        v311 = aiomqtt.ProtocolVersion.V311
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=v311) as late:
            await late.subscribe("edgesched/node/+/state", qos=1)
            message = await _first(late)
            assert message.payload == b'{"status":"online"}'
            assert message.retain


async def test_the_project_mqtt_adapter_speaks_3_1_1_through_it() -> None:
    got: asyncio.Queue[InboundMessage] = asyncio.Queue()

    async def handler(message: InboundMessage) -> None:
        await got.put(message)

    async with EmbeddedBroker() as broker:
        client = _client(broker.port, "fleet")
        await client.subscribe("replies/#", handler, qos=1)
        async with client:
            await asyncio.wait_for(client.wait_connected(), 5.0)
            # v5 properties are left out on 3.1.1; the message itself still goes through
            await client.publish("replies/1", b"{}", qos=1, response_topic="x",
                                 correlation_data=b"c")
            message = await asyncio.wait_for(got.get(), 5.0)
    assert message.topic == "replies/1"
    assert message.payload == b"{}"


async def test_port_is_released_after_exit() -> None:
    async with EmbeddedBroker() as broker:
        port = broker.port
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
