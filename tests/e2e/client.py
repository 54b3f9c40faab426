"""A test client that submits tasks over a real MQTT connection and collects every reply."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections import defaultdict
from typing import Any

import numpy as np

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, MqttOptions
from tests.support.broker import Mosquitto


def expected_digest(data: str, rounds: int) -> str:
    digest = hashlib.sha256(data.encode()).digest()
    for _ in range(rounds - 1):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def expected_trace(n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    a = rng.random((n, n))
    b = rng.random((n, n))
    return float(np.trace(a @ b))


class TaskClient:
    """Publishes submissions (v5 response topic, or `reply_to` in the body) and records
    every reply per correlation key, so a test can check "exactly one reply each"."""

    def __init__(self, broker: Mosquitto, prefix: str = "edgesched") -> None:
        self.prefix = prefix
        self.token = uuid.uuid4().hex[:10]
        self.replies: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._arrived = asyncio.Event()
        # keepalive 60 s: tests wait with the blocking `wait_until` while a client is open,
        # which stalls its event loop; at the default 10 s a wait past 15 s had the broker
        # drop the client (seen: a multi-site heal on a loaded machine, then "publish ...
        # failed: connection lost")
        self._client = MqttClient(MqttOptions(host=broker.host, port=broker.port,
                                              client_id=f"test-{self.token}", keepalive_s=60),
                                  Metrics())

    async def __aenter__(self) -> TaskClient:
        await self._client.subscribe(f"{self.prefix}/client/{self.token}/#", self._on_reply,
                                     qos=1)
        await self._client.__aenter__()
        async with asyncio.timeout(10):
            await self._client.wait_connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(*exc)

    async def reconnected(self, within_s: float = 15.0) -> None:
        """Wait until this client has noticed a broker restart and is subscribed again. Its
        session is not persistent: a reply published before that is lost, as MQTT says."""
        for _ in range(int(within_s / 0.02)):  # first, the loss noticed
            if not self._client.connected:
                break
            await asyncio.sleep(0.02)
        async with asyncio.timeout(within_s):
            await self._client.wait_connected()

    async def _on_reply(self, msg: InboundMessage) -> None:
        key = msg.topic.rsplit("/", 1)[1]
        self.replies[key].append(json.loads(msg.payload))
        self._arrived.set()

    async def submit(self, node: str, doc: dict[str, Any] | bytes, *, v5: bool = True) -> str:
        """Publish one submission to `node`; returns the key its replies are recorded under."""
        key = uuid.uuid4().hex[:12]
        topic = f"{self.prefix}/client/{self.token}/{key}"
        if isinstance(doc, bytes):
            payload = doc
        else:
            doc = dict(doc)
            if not v5:
                doc.update(reply_to=topic, correlation_id=key)
            payload = json.dumps(doc).encode()
        await self._client.publish(
            f"{self.prefix}/node/{node}/submit", payload, qos=1,
            response_topic=topic if v5 else None, correlation_data=key.encode() if v5 else None)
        return key

    async def wait_all(self, keys: list[str], within_s: float) -> dict[str, dict[str, Any]]:
        """The first reply of each key; TimeoutError naming the keys still unanswered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        while True:
            missing = [k for k in keys if not self.replies.get(k)]
            if not missing:
                return {k: self.replies[k][0] for k in keys}
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{len(missing)} of {len(keys)} submissions got no reply")
            self._arrived.clear()
            try:
                async with asyncio.timeout(min(left, 0.5)):
                    await self._arrived.wait()
            except TimeoutError:
                pass
