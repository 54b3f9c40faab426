"""Task intake: MQTT `P/node/{id}/submit` and HTTP `POST /v1/tasks` into the pipeline.

Both paths parse strictly (protocol.parse_submit); anything wrong is answered at once with a
`rejected` reply that says what was wrong. MQTT replies go to the v5 Response Topic (echoing
Correlation Data), else to the body's `reply_to` (echoing `correlation_id`).

Replies never go where a client may not point them (the confused-deputy rules of
docs/mqtt.md): never to a `$` topic, never under `{prefix}/node/` (the node protocol's own
topics), and only to topics matching one of `intake.reply_topics`. A submission whose reply
route is refused is rejected (`reason="reply_topic"`) and answered nowhere.

Repeated task ids are deduplicated per reply route (`route_key`): the same submission
redelivered on the same route gets the first outcome; the same id from another route is a
task of its own. HTTP submissions are never deduplicated across requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, RateLimitedLog, topic_matches
from edgesched.errors import MqttError
from edgesched.node import protocol as p

log = logging.getLogger("edgesched.intake")

MAX_PENDING_REJECTS = 1000  # rejection replies in flight before intake answers inline


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplyRoute:
    """Where the reply to one MQTT submission goes."""

    topic: str
    correlation_data: bytes | None = None  # MQTT v5 property, echoed
    correlation_id: str | None = None  # body field, echoed (3.1.1 path)


def route_key(route: ReplyRoute | None) -> bytes:
    """The reply route as a short dedupe key: topic + correlation (data and id), hashed so a
    remembered outcome costs the same few bytes whatever the client sent."""
    h = hashlib.blake2b(digest_size=16)
    if route is None:
        h.update(b"no-route")
    else:
        for part in (route.topic.encode(), route.correlation_data or b"",
                     (route.correlation_id or "").encode()):
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
    return h.digest()


def reply_topic_refusal(topic: str, *, prefix: str, allowed: tuple[str, ...]) -> str | None:
    """Why a client may not have its reply published on `topic`, or None when it may."""
    if not topic or topic.startswith("$"):
        return "a $ topic (or an empty one) belongs to the broker"
    if any(ch in topic for ch in "+#\x00"):
        return "a reply topic must not contain '+', '#' or NUL"
    node_root = f"{prefix}/node"
    if topic == node_root or topic.startswith(node_root + "/"):
        return f"{node_root}/... is the node protocol's own namespace"
    if not any(topic_matches(flt, topic) for flt in allowed):
        return "it matches none of intake.reply_topics"
    return None


# Accept a parsed request with its dedupe route key (None: never deduplicated, e.g. HTTP);
# returns the future of its terminal reply, or raises SubmissionError.
Accept = Callable[[p.SubmitRequest, float, bytes | None], asyncio.Future[p.Reply]]
Spawn = Callable[[Awaitable[None], str], None]


class Intake:
    """Turns MQTT messages and HTTP requests into accepted jobs, and sends the replies."""

    def __init__(self, *, mqtt: MqttClient, metrics: Metrics, accept: Accept, spawn: Spawn,
                 known_types: Callable[[], frozenset[str]], max_payload_bytes: int,
                 max_input_bytes: int, prefix: str = "edgesched",
                 reply_topics: tuple[str, ...] = ("#",)) -> None:
        self._mqtt = mqtt
        self._metrics = metrics
        self._accept = accept
        self._spawn = spawn
        self._known = known_types
        self._max_bytes = max_payload_bytes
        self._max_input = max_input_bytes
        self._ratelog = RateLimitedLog(log)
        self._pending_rejects = 0
        self._prefix = prefix
        self._reply_topics = tuple(reply_topics)

    def parse(self, payload: bytes) -> p.SubmitRequest:
        return p.parse_submit(payload, max_bytes=self._max_bytes,
                              max_input_bytes=self._max_input, known_types=self._known())

    def refusal(self, route: ReplyRoute | None) -> str | None:
        """Why replies may not go to `route` (None: they may, or there is no route)."""
        if route is None:
            return None
        return reply_topic_refusal(route.topic, prefix=self._prefix, allowed=self._reply_topics)

    def submit(self, payload: bytes, received_at: float, msg: InboundMessage | None = None,
               ) -> tuple[p.SubmitRequest, asyncio.Future[p.Reply], ReplyRoute | None]:
        """Parse and accept one submission (from MQTT `msg`, else HTTP); returns the request,
        its future reply and its MQTT reply route; SubmissionError says why it was refused."""
        self._metrics.tasks_submitted.inc()
        try:
            req = self.parse(payload)
            if msg is None:
                return req, self._accept(req, received_at, None), None
            route = self._route(msg, req.reply_to, req.correlation_id)
            why = self.refusal(route)
            if why is not None:
                assert route is not None
                raise p.SubmissionError(
                    p.RejectCode.REPLY_TOPIC,
                    f"reply topic {route.topic[:128]!r} refused: {why}", task_id=req.id)
            return req, self._accept(req, received_at, route_key(route)), route
        except p.SubmissionError as exc:
            self._metrics.tasks_rejected.labels(reason=exc.reason.value).inc()
            self._metrics.tasks_completed.labels(placement="none", status="rejected").inc()
            self._ratelog.warning(f"reject-{exc.reason.value}", "rejected a submission: %s", exc)
            raise

    # -- MQTT ---------------------------------------------------------------------------------

    async def on_mqtt_submit(self, msg: InboundMessage) -> None:
        """Consumer of the submit topic: must return quickly (the job runs in the pipeline)."""
        received = time.monotonic()
        try:
            _, future, route = self.submit(msg.payload, received, msg)
        except p.SubmissionError as exc:
            route = self._route(msg, exc.reply_to, exc.correlation_id)
            if exc.reason is p.RejectCode.REPLY_TOPIC:
                return  # never answered on a forbidden topic (logged and counted above)
            why = self.refusal(route)
            if why is not None:
                assert route is not None
                self._ratelog.warning("reply-topic", "rejection not sent to %r: %s",
                                      route.topic[:128], why)
                return
            reply = p.Reply(id=exc.task_id or p.new_task_id(), status=p.Status.REJECTED,
                            error=str(exc), latency_s=time.monotonic() - received,
                            correlation_id=route.correlation_id if route else None)
            if self._pending_rejects >= MAX_PENDING_REJECTS:
                await self.send(route, reply)  # a flood of bad input: push back on it
            else:
                # Answer off the consumer loop so valid submissions behind it are not delayed.
                self._pending_rejects += 1
                self._spawn(self._send_reject(route, reply), "edgesched.pipeline.reject")
            return
        self._spawn(self._reply_when_done(future, route), "edgesched.pipeline.reply")

    @staticmethod
    def _route(msg: InboundMessage, reply_to: str | None,
               correlation_id: str | None) -> ReplyRoute | None:
        if msg.response_topic:
            return ReplyRoute(topic=msg.response_topic, correlation_data=msg.correlation_data,
                              correlation_id=correlation_id)
        if reply_to:
            return ReplyRoute(topic=reply_to, correlation_id=correlation_id)
        return None

    async def _send_reject(self, route: ReplyRoute | None, reply: p.Reply) -> None:
        try:
            await self.send(route, reply)
        finally:
            self._pending_rejects -= 1

    async def _reply_when_done(self, future: asyncio.Future[p.Reply],
                               route: ReplyRoute | None) -> None:
        reply = await asyncio.shield(future)
        if route is not None and route.correlation_id is not None:
            reply = _with_correlation(reply, route.correlation_id)
        await self.send(route, reply)

    async def send(self, route: ReplyRoute | None, reply: p.Reply) -> None:
        if route is None:
            self._metrics.replies_dropped.labels(reason="no_route").inc()
            self._ratelog.warning("no-route", "reply to task %s dropped: the submission named "
                                  "no response topic and no reply_to", reply.id)
            return
        try:
            await self._mqtt.publish_reliably(route.topic, reply.encode(),
                                              correlation_data=route.correlation_data)
        except MqttError as exc:
            self._metrics.replies_dropped.labels(reason="publish_failed").inc()
            self._ratelog.warning("publish", "reply to task %s lost: %s", reply.id, exc)

    # -- HTTP ---------------------------------------------------------------------------------

    async def on_http_submit(self, request: web.Request) -> web.Response:
        """POST /v1/tasks: waits for the terminal reply (200), 400 invalid, 413 oversize."""
        received = time.monotonic()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._http_reject(p.SubmissionError(
                p.RejectCode.OVERSIZE, f"body larger than {self._max_bytes} bytes"), received)
        try:
            _, future, _ = self.submit(body, received)
        except p.SubmissionError as exc:
            return self._http_reject(exc, received)
        reply = await asyncio.shield(future)
        return web.Response(body=reply.encode(), content_type="application/json")

    def _http_reject(self, exc: p.SubmissionError, received: float) -> web.Response:
        reply = p.Reply(id=exc.task_id or p.new_task_id(), status=p.Status.REJECTED,
                        error=str(exc), latency_s=time.monotonic() - received)
        # Bad requests are HTTP errors; a refusal of a valid task is a reply like any other.
        status = {p.RejectCode.OVERSIZE: 413, p.RejectCode.MALFORMED: 400,
                  p.RejectCode.SCHEMA: 400, p.RejectCode.UNKNOWN_TYPE: 400}.get(exc.reason, 200)
        return web.Response(status=status, body=reply.encode(), content_type="application/json")


def _with_correlation(reply: p.Reply, correlation_id: str) -> p.Reply:
    return dataclasses.replace(reply, correlation_id=correlation_id)
