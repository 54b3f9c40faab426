"""Neighbour offload over MQTT request/reply: the origin's client and the receiver's server.

Topics (P = mqtt.topic_prefix), documented in docs/offload-protocol.md:
  P/node/{target}/offload         request, QoS 1: the submit fields + origin, hop, reply_to,
                                  correlation_id (unique per attempt), deadline_s (time left)
  P/node/{origin}/offload-reply   reply, QoS 1: status, result/error, executed_by, wait_s, exec_s
A receiver runs what it is handed locally or rejects it; it never offloads it again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, RateLimitedLog
from edgesched.errors import MqttError
from edgesched.node import protocol as p

log = logging.getLogger("edgesched.offload")

MAX_PENDING = 10_000
SEEN_REQUESTS = 4096
GONE_POLL_S = 0.25


class OffloadClient:
    """Sends tasks to neighbours and matches their replies by correlation id.

    An attempt that timed out is forgotten: a reply arriving later is counted and ignored.
    """

    def __init__(self, *, mqtt: MqttClient, prefix: str, node_id: str, metrics: Metrics,
                 max_payload_bytes: int) -> None:
        self._mqtt = mqtt
        self._prefix = prefix
        self._node_id = node_id
        self._metrics = metrics
        self._max_bytes = max_payload_bytes
        self.reply_topic = p.offload_reply_topic(prefix, node_id)
        self._pending: dict[str, tuple[asyncio.Future[p.OffloadReply], str]] = {}  # -> target
        self._ratelog = RateLimitedLog(log)

    async def start(self) -> None:
        await self._mqtt.subscribe(self.reply_topic, self._on_reply, qos=1, signed=True)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def request(
        self, target: str, task: p.SubmitRequest, *, deadline_s: float | None,
        expected_s: float | None, timeout_s: float,
        gone: Callable[[], bool] | None = None,
    ) -> p.OffloadReply | None:
        """The neighbour's reply, or None when none came within `timeout_s` or `gone()`
        (checked every GONE_POLL_S: the target went offline) turned true first.

        Raises MqttError when the request cannot be published.
        """
        if len(self._pending) >= MAX_PENDING:
            raise MqttError(f"{MAX_PENDING} offload requests already pending")
        corr = f"{task.id}/{uuid.uuid4().hex[:12]}"
        doc = p.offload_request_doc(task, origin=self._node_id, reply_to=self.reply_topic,
                                    correlation_id=corr, deadline_s=deadline_s,
                                    expected_s=expected_s)
        future: asyncio.Future[p.OffloadReply] = asyncio.get_running_loop().create_future()
        self._pending[corr] = (future, target)
        try:
            await self._mqtt.publish(p.offload_topic(self._prefix, target), p.encode(doc), qos=1,
                                     timeout_s=max(0.1, min(timeout_s, 10.0)), signed=True)
            async with asyncio.timeout(timeout_s):
                return await _unless_gone(future, gone)
        except TimeoutError:
            return None
        finally:
            self._pending.pop(corr, None)

    async def _on_reply(self, msg: InboundMessage) -> None:
        try:
            reply = p.parse_offload_reply(msg.payload, max_bytes=self._max_bytes)
        except p.SubmissionError as exc:
            self._metrics.offload_replies_ignored.labels(reason="malformed").inc()
            self._ratelog.warning("bad-reply", "ignoring a malformed offload reply: %s", exc)
            return
        pending = self._pending.get(reply.correlation_id)
        if pending is not None and self._mqtt.reject_signer(msg, pending[1]):
            return  # only the node we asked may answer (a forged reply is never a result)
        future = pending[0] if pending is not None else None
        if future is None or future.done():
            # The attempt was given up on (timeout) or this is a duplicate delivery.
            self._metrics.offload_replies_ignored.labels(reason="late").inc()
            log.debug("late offload reply for %s ignored", reply.correlation_id)
            return
        future.set_result(reply)


async def _unless_gone(future: asyncio.Future[p.OffloadReply],
                       gone: Callable[[], bool] | None) -> p.OffloadReply | None:
    """The reply, or None as soon as `gone()` says the target died (no need to wait out the
    whole timeout for a node whose Will or silence already told us)."""
    if gone is None:
        return await future
    while True:
        done, _ = await asyncio.wait({future}, timeout=GONE_POLL_S)
        if done:
            return future.result()
        if gone():
            return None


RunHandedTask = Callable[[p.OffloadRequest], Awaitable[p.OffloadReply]]
Spawn = Callable[[Awaitable[None], str], None]


class OffloadServer:
    """Receives tasks neighbours hand over, runs them locally (admission first), replies."""

    def __init__(self, *, mqtt: MqttClient, prefix: str, node_id: str, metrics: Metrics,
                 max_payload_bytes: int, max_input_bytes: int,
                 known_types: Callable[[], frozenset[str]], run: RunHandedTask,
                 spawn: Spawn) -> None:
        self._mqtt = mqtt
        self._node_id = node_id
        self._metrics = metrics
        self._max_bytes = max_payload_bytes
        self._max_input = max_input_bytes
        self._known = known_types
        self._run = run
        self._spawn = spawn
        self.topic = p.offload_topic(prefix, node_id)
        self._prefix = prefix
        self._seen: OrderedDict[str, None] = OrderedDict()  # QoS 1 may deliver twice
        self._ratelog = RateLimitedLog(log)

    async def start(self) -> None:
        await self._mqtt.subscribe(self.topic, self._on_request, qos=1, signed=True)

    async def _on_request(self, msg: InboundMessage) -> None:
        try:
            req = p.parse_offload(msg.payload, max_bytes=self._max_bytes,
                                  max_input_bytes=self._max_input, known_types=self._known())
        except p.SubmissionError as exc:
            self._metrics.tasks_rejected.labels(reason=exc.reason.value).inc()
            self._ratelog.warning("bad-offload", "rejected an offload request: %s", exc)
            if exc.reply_to and exc.correlation_id and exc.task_id and self._is_reply_topic(
                    exc.reply_to):
                await self._send(exc.reply_to, p.OffloadReply(
                    id=exc.task_id, correlation_id=exc.correlation_id,
                    status=p.Status.REJECTED, error=str(exc), executed_by=self._node_id))
            return
        if self._mqtt.reject_signer(msg, req.origin):
            return
        if req.task.reply_to != p.offload_reply_topic(self._prefix, req.origin):
            # the answer goes to the origin's own reply topic, never where a request points
            self._metrics.tasks_rejected.labels(reason=p.RejectCode.SCHEMA.value).inc()
            self._ratelog.warning("bad-offload-route", "ignored an offload request from %s "
                                  "whose reply_to is not its offload-reply topic", req.origin)
            return
        corr = req.task.correlation_id or ""
        if corr in self._seen:
            return
        self._seen[corr] = None
        if len(self._seen) > SEEN_REQUESTS:
            self._seen.popitem(last=False)
        self._spawn(self._serve(req), "edgesched.pipeline.offloaded_task")

    async def _serve(self, req: p.OffloadRequest) -> None:
        reply = await self._run(req)
        assert req.task.reply_to is not None
        await self._send(req.task.reply_to, reply)

    def _is_reply_topic(self, topic: str) -> bool:
        """An offload reply only ever goes to some node's `P/node/{id}/offload-reply`."""
        parts = topic.split("/")
        return (topic.startswith(f"{self._prefix}/node/") and topic.endswith("/offload-reply")
                and len(parts) == self._prefix.count("/") + 4)

    async def _send(self, topic: str, reply: p.OffloadReply) -> None:
        try:
            await self._mqtt.publish_reliably(topic, p.encode(reply.to_dict()), signed=True)
        except MqttError as exc:
            self._metrics.replies_dropped.labels(reason="publish_failed").inc()
            self._ratelog.warning("offload-reply", "cannot send offload reply: %s", exc)
