"""The synthetic device fleet: device telemetry, task submissions over MQTT, and their replies."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, MqttOptions
from edgesched.demo.cluster import BrokerAddress, ClusterSpec, WanSpec
from edgesched.demo.phases import Submission
from edgesched.demo.summary import Tally
from edgesched.errors import MqttError

log = logging.getLogger("edgesched.demo.fleet")

TELEMETRY_INTERVAL_S = 1.0
CONNECT_TIMEOUT_S = 10.0
MIN_BATTERY = 0.05


@dataclass(frozen=True, kw_only=True)
class Pending:
    submission: Submission
    node_id: str
    sent_at: float


class Fleet:
    """Devices attached to the gateways; submits the schedule and tallies every reply.

    An async context manager owning a TaskGroup of three loops (submit, reply, telemetry).
    `paused` nodes get no direct submissions (their devices roam to `fallback_node`).
    """

    def __init__(
        self, *, broker: BrokerAddress, spec: ClusterSpec, schedule: list[Submission],
        energy_of: Callable[[str], float], fallback_node: str,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.schedule = schedule
        self.energy_of = energy_of
        self.fallback_node = fallback_node
        self.tally = Tally()
        self.pending: dict[str, Pending] = {}
        self.paused: set[str] = set()
        self.wan: WanSpec = spec.wan_normal
        self.started_at = 0.0
        self.submitting_done = asyncio.Event()
        self._run = uuid.uuid4().hex[:8]
        self._reply_topic = f"{broker.topic_prefix}/demo/{self._run}/reply"
        self._mqtt = MqttClient(
            MqttOptions(host=broker.host, port=broker.port, protocol=broker.protocol,
                        client_id=f"edgesched-demo-fleet-{self._run}", keepalive_s=30),
            Metrics(),  # the fleet's own registry: it is not a node, nothing scrapes it
        )
        self._group: asyncio.TaskGroup | None = None
        self._seq = 0
        self._stop = asyncio.Event()
        self.publish_failures = 0

    async def __aenter__(self) -> Fleet:
        await self._mqtt.subscribe(self._reply_topic, self._on_reply, qos=1)
        await self._mqtt.__aenter__()
        try:
            await asyncio.wait_for(self._mqtt.wait_connected(), CONNECT_TIMEOUT_S)
        except TimeoutError:
            await self._mqtt.__aexit__(None, None, None)
            raise MqttError(f"the demo fleet could not connect to the MQTT broker at "
                            f"{self.broker.host}:{self.broker.port}") from None
        self.started_at = time.monotonic()
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._group.create_task(self._telemetry_loop(), name="edgesched.demo.telemetry_loop")
        self._group.create_task(self._submit_loop(), name="edgesched.demo.submit_loop")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        group, self._group = self._group, None
        try:
            if group is not None:
                self._stop.set()  # the submit and telemetry loops end at once
                await group.__aexit__(exc_type, exc, tb)
        finally:
            await self._mqtt.__aexit__(exc_type, exc, tb)

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    # -- submissions ---------------------------------------------------------------------------

    async def _submit_loop(self) -> None:
        for sub in self.schedule:
            delay = sub.at_s - self.elapsed()
            if delay > 0 and await self._stopped_within(delay):
                break
            await self._submit(sub)
        self.submitting_done.set()

    async def _stopped_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _submit(self, sub: Submission) -> None:
        node = sub.node_id
        if node in self.paused:
            node = self.fallback_node  # the device roams to a gateway that is up
            self.tally.redirected += 1
        self._seq += 1
        task_id = f"demo-{self._run}-{self._seq:06d}"
        body: dict[str, Any] = {
            "v": 1, "id": task_id, "type": sub.task_type, "input": sub.input,
            "deadline_s": sub.deadline_s, "device_id": sub.device_id,
        }
        if self.broker.protocol != "5":
            body["reply_to"] = self._reply_topic
            body["correlation_id"] = task_id
        self.pending[task_id] = Pending(submission=sub, node_id=node, sent_at=time.monotonic())
        self.tally.submitted += 1
        try:
            await self._mqtt.publish(
                f"{self.broker.topic_prefix}/node/{node}/submit", json.dumps(body).encode(),
                qos=1, response_topic=self._reply_topic, correlation_data=task_id.encode(),
            )
        except MqttError as exc:
            # It may still have reached the node; if no reply comes it is counted as lost.
            self.publish_failures += 1
            log.warning("submitting %s to %s failed: %s", task_id, node, exc)

    def outstanding_on(self, node_id: str) -> int:
        return sum(1 for p in self.pending.values() if p.node_id == node_id)

    async def wait_outstanding(self, node_id: str | None, timeout_s: float) -> int:
        """Wait (bounded) until no submission to `node_id` (None = any) awaits its reply."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            left = len(self.pending) if node_id is None else self.outstanding_on(node_id)
            if left == 0:
                return 0
            await asyncio.sleep(0.1)
        return len(self.pending) if node_id is None else self.outstanding_on(node_id)

    # -- replies -------------------------------------------------------------------------------

    async def _on_reply(self, incoming: InboundMessage) -> None:
        try:
            reply = json.loads(incoming.payload)
            task_id = str(reply.get("id") or reply.get("correlation_id") or
                          (incoming.correlation_data or b"").decode())
        except (ValueError, AttributeError, UnicodeDecodeError):
            self.tally.malformed += 1
            return
        pending = self.pending.pop(task_id, None)
        if pending is None:
            self.tally.duplicates += 1  # a repeated reply (e.g. re-sent for a repeated id)
            return
        latency = reply.get("latency_s")
        if not isinstance(latency, int | float) or not math.isfinite(latency):
            latency = time.monotonic() - pending.sent_at
        sub = pending.submission
        attempts = reply.get("attempts")
        self.tally.record(
            phase=sub.phase.value, task_type=sub.task_type, status=str(reply.get("status")),
            placement=reply.get("placement"), executed_by=reply.get("executed_by"),
            latency_s=float(latency), deadline_s=sub.deadline_s, error=reply.get("error"),
            attempts=attempts if isinstance(attempts, int) else 1,
        )

    # -- device telemetry ----------------------------------------------------------------------

    async def _telemetry_loop(self) -> None:
        while True:
            for device_id, values in self.device_readings().items():
                topic = f"{self.broker.topic_prefix}/device/{device_id}/telemetry"
                try:
                    await self._mqtt.publish(topic, json.dumps(values).encode(), qos=0)
                except MqttError as exc:  # telemetry is periodic: the next round replaces it
                    log.debug("device telemetry not published: %s", exc)
            if await self._stopped_within(TELEMETRY_INTERVAL_S):
                return

    def device_readings(self) -> dict[str, dict[str, float]]:
        """What every device reports now: uplink monitors and the battery gateway's BMS."""
        now = time.time()
        out: dict[str, dict[str, float]] = {}
        for node in self.spec.edges:
            out[f"{node.node_id}-uplink"] = {"ts": now, "uplink_bps": self.wan.uplink_bps,
                                             "rtt_s": self.wan.rtt_s}
            if node.battery is not None and node.battery_device:
                out[node.battery_device] = {"ts": now, "battery": self.battery_level(node.node_id)}
        return out

    def battery_level(self, node_id: str) -> float:
        """The synthetic battery: drained by idle draw plus the energy the node reports."""
        node = self.spec.node(node_id)
        assert node.battery is not None
        used = node.battery.idle_drain_w * self.elapsed() + self.energy_of(node_id)
        level = node.battery.initial - used / node.battery.capacity_j
        return round(max(MIN_BATTERY, level), 4)
