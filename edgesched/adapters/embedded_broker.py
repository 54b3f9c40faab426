"""An in-process MQTT 3.1.1 broker (amqtt) on a free loopback port, and a small demo MQTT link.

`edgesched demo` runs a whole cluster on one machine without asking the user to install a
broker: `EmbeddedBroker` starts amqtt inside the demo's event loop. `FleetLink` is the demo
fleet's MQTT client (devices publishing telemetry and submitting tasks, replies coming back);
it lives here because adapters are the only code allowed to import aiomqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgesched.errors import MqttError

log = logging.getLogger("edgesched.adapters.embedded_broker")

# Only anonymous auth: the embedded broker listens on loopback for a single demo run.
_PLUGINS: dict[str, Any] = {
    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
}


class EmbeddedBroker:
    """amqtt on `host`, port chosen by the kernel (race-free), for the lifetime of the context."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._broker: Any = None

    async def __aenter__(self) -> EmbeddedBroker:
        from amqtt.broker import Broker  # imported late: amqtt is slow to import

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:0"}},
            "plugins": dict(_PLUGINS),
        }
        try:
            self._broker = Broker(config)
            await self._broker.start()
        except Exception as exc:
            raise MqttError(f"cannot start the embedded MQTT broker on {self.host}: {exc}") from exc
        self.port = self._bound_port()
        log.info("embedded MQTT broker listening on %s:%d", self.host, self.port)
        return self

    def _bound_port(self) -> int:
        # amqtt has no public accessor for the bound address; its listener keeps the
        # asyncio.Server, whose socket knows the port the kernel picked for ":0".
        server = self._broker._servers["default"].instance
        return int(server.sockets[0].getsockname()[1])

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await asyncio.wait_for(broker.shutdown(), timeout=5.0)
        except Exception as exc:  # a broker that will not stop must not hang the demo's exit
            log.warning("embedded MQTT broker did not shut down cleanly: %s", exc)
        log.info("embedded MQTT broker stopped")

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


@dataclass(frozen=True, kw_only=True)
class Incoming:
    """One message received by a `FleetLink`."""

    topic: str
    payload: bytes
    correlation_data: bytes | None


class FleetLink:
    """A plain MQTT client for the demo fleet: publish, subscribe, and receive, v3.1.1 or v5.

    With protocol "5", `publish(..., response_topic=, correlation_data=)` sets the MQTT v5
    properties a node replies to; with "3.1.1" the caller puts `reply_to`/`correlation_id`
    in the JSON body instead.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: Literal["5", "3.1.1"],
        client_id: str | None = None,
        queue_size: int = 10_000,
    ) -> None:
        self.protocol = protocol
        version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
        self._client = aiomqtt.Client(
            host,
            port,
            identifier=client_id or f"edgesched-demo-{uuid.uuid4().hex[:8]}",
            protocol=version,
            keepalive=30,
            max_queued_incoming_messages=queue_size,
        )
        self._where = f"{host}:{port}"

    async def __aenter__(self) -> FleetLink:
        try:
            await self._client.__aenter__()
        except aiomqtt.MqttError as exc:
            raise MqttError(f"cannot connect to the MQTT broker at {self._where}: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
            await self._client.__aexit__(exc_type, exc, tb)

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        try:
            await self._client.subscribe(topic, qos=qos)
        except aiomqtt.MqttError as exc:
            raise MqttError(f"subscribe to {topic!r} failed: {exc}") from exc

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        properties = None
        if self.protocol == "5" and (response_topic or correlation_data):
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic:
                properties.ResponseTopic = response_topic
            if correlation_data:
                properties.CorrelationData = correlation_data
        try:
            await self._client.publish(
                topic, payload, qos=qos, retain=retain, properties=properties, timeout=10
            )
        except aiomqtt.MqttError as exc:
            raise MqttError(f"publish to {topic!r} failed: {exc}") from exc

    async def messages(self) -> AsyncIterator[Incoming]:
        """Every received message, until the connection ends (then MqttError)."""
        try:
            async for message in self._client.messages:
                payload = message.payload
                data = payload if isinstance(payload, bytes | bytearray) else str(payload).encode()
                props = message.properties
                corr = getattr(props, "CorrelationData", None) if props is not None else None
                yield Incoming(topic=str(message.topic), payload=bytes(data), correlation_data=corr)
        except aiomqtt.MqttError as exc:
            raise MqttError(f"MQTT connection to {self._where} lost: {exc}") from exc
