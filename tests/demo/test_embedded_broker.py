"""The embedded amqtt broker carries MQTT 3.1.1 traffic on loopback, retained and QoS 1."""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from edgesched.adapters.embedded_broker import EmbeddedBroker, FleetLink


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


async def test_retained_message_reaches_late_subscriber() -> None:
    async with EmbeddedBroker() as broker:
        async with FleetLink("127.0.0.1", broker.port, protocol="3.1.1") as pub:
            await pub.publish("edgesched/node/n1/state", b'{"status":"online"}', qos=1, retain=True)
        v311 = aiomqtt.ProtocolVersion.V311
        async with aiomqtt.Client("127.0.0.1", broker.port, protocol=v311) as late:
            await late.subscribe("edgesched/node/+/state", qos=1)
            message = await _first(late)
            assert message.payload == b'{"status":"online"}'
            assert message.retain


async def test_fleet_link_receives_what_it_subscribed() -> None:
    async with EmbeddedBroker() as broker, \
            FleetLink("127.0.0.1", broker.port, protocol="3.1.1") as link:
        await link.subscribe("replies/#")
        await link.publish("replies/1", b"{}", qos=1)

        async def _one() -> bytes:
            async for incoming in link.messages():
                return incoming.payload
            raise AssertionError("no message")

        assert await asyncio.wait_for(_one(), 5.0) == b"{}"


async def test_port_is_released_after_exit() -> None:
    async with EmbeddedBroker() as broker:
        port = broker.port
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2.0)
