"""Neighbour offload over MQTT request/reply: the origin's client and the receiver's server.

Topics (P = mqtt.topic_prefix), documented in docs/offload-protocol.md:
  P/node/{target}/offload         request, QoS 1: the submit fields + origin, hop, reply_to,
                                  correlation_id (unique per attempt), deadline_s (time left)
  P/node/{origin}/offload-reply   reply, QoS 1: status, result/error, executed_by, wait_s, exec_s
  P/node/{target}/cancel          cancel, QoS 1: id, origin, attempt (the origin gave up on it)
A receiver runs what it is handed locally or rejects it; it never offloads it again. It never
starts a task whose time is up (`deadline_s - (now - sent_at)`: answered `expired`), runs each
(origin, id, attempt) once, and drops an attempt cancelled before it started.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, RateLimitedLog
from edgesched.errors import MqttError
from edgesched.node import protocol as p

log = logging.getLogger("edgesched.offload")

MAX_PENDING = 10_000
SEEN_REQUESTS = 4096
GONE_POLL_S = 0.25
CANCEL_PUBLISH_S = 2.0


def wall_ms() -> int:
    return int(time.time() * 1000)


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
        self._cancels: set[asyncio.Task[None]] = set()
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
        attempt = uuid.uuid4().hex[:12]
        corr = f"{task.id}/{attempt}"
        doc = p.offload_request_doc(task, origin=self._node_id, reply_to=self.reply_topic,
                                    correlation_id=corr, deadline_s=deadline_s,
                                    expected_s=expected_s, attempt=attempt,
                                    sent_at_ms=wall_ms())
        future: asyncio.Future[p.OffloadReply] = asyncio.get_running_loop().create_future()
        self._pending[corr] = (future, target)
        try:
            await self._mqtt.publish(p.offload_topic(self._prefix, target), p.encode(doc), qos=1,
                                     timeout_s=max(0.1, min(timeout_s, 10.0)), signed=True)
            async with asyncio.timeout(timeout_s):
                reply = await _unless_gone(future, gone)
        except TimeoutError:
            reply = None
        finally:
            self._pending.pop(corr, None)
        if reply is None:  # given up on (timeout, target gone): the target may drop it
            self._cancel(target, p.CancelRequest(id=task.id, origin=self._node_id,
                                                 attempt=attempt))
        return reply

    def _cancel(self, target: str, cancel: p.CancelRequest) -> None:
        """Tell `target` to drop an abandoned attempt: best effort, in the background (the
        fallback does not wait for the broker's ack)."""

        async def send() -> None:
            try:
                await self._mqtt.publish(p.cancel_topic(self._prefix, target),
                                         p.encode(cancel.to_dict()), qos=1,
                                         timeout_s=CANCEL_PUBLISH_S, signed=True)
            except MqttError as exc:
                self._metrics.cancels.labels(direction="sent", result="failed").inc()
                self._ratelog.warning("cancel", "cannot send cancel to %s: %s", target, exc)
                return
            self._metrics.cancels.labels(direction="sent", result="sent").inc()

        task = asyncio.get_running_loop().create_task(send(), name="edgesched.offload.cancel")
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

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
                 spawn: Spawn, waiting: Callable[[asyncio.Task[Any]], bool] | None = None
                 ) -> None:
        self._mqtt = mqtt
        self._node_id = node_id
        self._metrics = metrics
        self._max_bytes = max_payload_bytes
        self._max_input = max_input_bytes
        self._known = known_types
        self._run = run
        self._spawn = spawn
        self._waiting = waiting
        self.topic = p.offload_topic(prefix, node_id)
        self.cancel_topic = p.cancel_topic(prefix, node_id)
        self._prefix = prefix
        # (origin, id, attempt) of every request seen: QoS 1 may deliver twice
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._cancelled: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._serving: dict[tuple[str, str, str], asyncio.Task[Any]] = {}
        self._ratelog = RateLimitedLog(log)

    async def start(self) -> None:
        await self._mqtt.subscribe(self.topic, self._on_request, qos=1, signed=True)
        await self._mqtt.subscribe(self.cancel_topic, self._on_cancel, qos=1, signed=True)

    async def _on_cancel(self, msg: InboundMessage) -> None:
        try:
            cancel = p.parse_cancel(msg.payload, max_bytes=self._max_bytes)
        except p.SubmissionError as exc:
            self._metrics.messages_rejected.labels(reason="malformed").inc()
            self._ratelog.warning("bad-cancel", "ignored a malformed cancel: %s", exc)
            return
        if self._mqtt.reject_signer(msg, cancel.origin):
            return  # only the origin may cancel its attempt
        key = cancel.key
        _remember(self._cancelled, key)
        task = self._serving.get(key)
        if task is not None and not task.done() and self._waiting is not None and \
                self._waiting(task):
            task.cancel()  # still waiting for a slot: never started; _serve answers nothing
            return
        if task is not None and not task.done():
            self._metrics.cancels.labels(direction="received", result="running").inc()
        elif key not in self._seen:
            # not here yet (or long forgotten): dropped on arrival, counted then
            return
        else:
            self._metrics.cancels.labels(direction="received", result="unknown").inc()

    async def _on_request(self, msg: InboundMessage) -> None:
        try:
            req = p.parse_offload(msg.payload, max_bytes=self._max_bytes,
                                  max_input_bytes=self._max_input, known_types=self._known())
        except p.SubmissionError as exc:
            self._metrics.tasks_rejected.labels(reason=exc.reason.value).inc()
            self._ratelog.warning("bad-offload", "rejected an offload request: %s", exc)
            if exc.reply_to and exc.correlation_id and exc.task_id and self._is_reply_topic(
                    exc.reply_to):
                self._metrics.remote_tasks.labels(origin_kind="neighbour",
                                                  status="rejected").inc()
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
        key = req.key
        if key in self._seen:
            self._metrics.messages_dropped.labels(reason="duplicate").inc()
            return  # a redelivery of an attempt already run (or running): answered once
        _remember(self._seen, key)
        self._spawn(self._serve(req), "edgesched.pipeline.offloaded_task")

    async def _serve(self, req: p.OffloadRequest) -> None:
        key = req.key
        if key in self._cancelled:
            self._metrics.cancels.labels(direction="received", result="dropped").inc()
            return  # the origin gave up on it before it started: it has moved on
        me = asyncio.current_task()
        if me is not None:
            self._serving[key] = me
        try:
            reply = await self._run(req)
        except asyncio.CancelledError:
            if key not in self._cancelled or me is None or not me.cancelling():
                raise
            me.uncancel()
            self._metrics.cancels.labels(direction="received", result="dropped").inc()
            return
        finally:
            self._serving.pop(key, None)
        self._metrics.remote_tasks.labels(origin_kind="neighbour",
                                          status=reply.status.value).inc()
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


def _remember(seen: OrderedDict[tuple[str, str, str], None], key: tuple[str, str, str]) -> None:
    seen[key] = None
    if len(seen) > SEEN_REQUESTS:
        seen.popitem(last=False)
