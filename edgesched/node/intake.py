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

With a spool (`state_dir` set, adapters/spool.py): an accepted MQTT submission is recorded
before its PUBACK goes to the broker (the submit subscription acknowledges manually), its
terminal reply replaces that record and stays until the broker acknowledges the reply's
publish; replies that cannot go out wait for the next connect (`flush_spooled`, an on-connect
hook). `resume()` at start runs again what a crash left unfinished (idempotent types) or
answers it `failed` ("interrupted by restart"). HTTP submissions are never spooled: the
client's connection dies with the node.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from aiohttp import web

from edgesched.adapters.cloud import LOAD_HEADER, format_load
from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, RateLimitedLog, topic_matches
from edgesched.adapters.spool import Spool
from edgesched.errors import MqttError
from edgesched.logs import task_context
from edgesched.node import protocol as p

log = logging.getLogger("edgesched.intake")

MAX_PENDING_REJECTS = 1000  # rejection replies in flight before intake answers inline
INTERRUPTED = "interrupted by restart"


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


# Accept a parsed request with its dedupe route key (None: never deduplicated, e.g. HTTP) and
# its origin kind (None: a client's submission; "edge": an edge node's task sent to the cloud
# tier); returns the future of its terminal reply, or raises SubmissionError.
Accept = Callable[[p.SubmitRequest, float, bytes | None, str | None], asyncio.Future[p.Reply]]
# The header an edge node's cloud client sends with the tasks it hands to the cloud tier
# (adapters/cloud.py): such a task was submitted at that edge, and is counted there.
ORIGIN_HEADER = "X-Edgesched-Origin"
Spawn = Callable[[Awaitable[None], str], None]


class Intake:
    """Turns MQTT messages and HTTP requests into accepted jobs, and sends the replies."""

    def __init__(self, *, mqtt: MqttClient, metrics: Metrics, accept: Accept, spawn: Spawn,
                 known_types: Callable[[], frozenset[str]], max_payload_bytes: int,
                 max_input_bytes: int, prefix: str = "edgesched",
                 reply_topics: tuple[str, ...] = ("#",), spool: Spool | None = None,
                 idempotent: Callable[[str], bool] = lambda _name: False,
                 cloud_tier: bool = False, shed_after_s: float = 0.0,
                 seen: Callable[[Hashable], bool] = lambda _key: False,
                 busy: Callable[[], bool] = lambda: True,
                 load: Callable[[], tuple[int, int, int, float]] | None = None) -> None:
        self._mqtt = mqtt
        # the cloud tier's executor load (running, queued, slots, est_wait_s), sent with
        # every HTTP reply (X-Edgesched-Load) so edge nodes know its queue
        self._load = load
        self._shed_after_s = shed_after_s  # 0: never shed
        self._seen = seen  # whether the pipeline knows a (route key, task id) already
        self._busy = busy  # whether the node has its own tasks under way (see _shed)
        self._cloud_tier = cloud_tier  # a cloud node: its HTTP intake serves edge nodes
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
        self._spool = spool
        self._idempotent = idempotent
        self._sending: set[str] = set()  # spooled replies being published now

    def parse(self, payload: bytes) -> p.SubmitRequest:
        return p.parse_submit(payload, max_bytes=self._max_bytes,
                              max_input_bytes=self._max_input, known_types=self._known())

    def refusal(self, route: ReplyRoute | None) -> str | None:
        """Why replies may not go to `route` (None: they may, or there is no route)."""
        if route is None:
            return None
        return reply_topic_refusal(route.topic, prefix=self._prefix, allowed=self._reply_topics)

    def submit(self, payload: bytes, received_at: float, msg: InboundMessage | None = None,
               origin_kind: str | None = None,
               ) -> tuple[p.SubmitRequest, asyncio.Future[p.Reply], ReplyRoute | None]:
        """Parse and accept one submission (from MQTT `msg`, else HTTP); returns the request,
        its future reply and its MQTT reply route; SubmissionError says why it was refused.

        A client's submission counts in `tasks_submitted`; another node's task (`origin_kind`
        set: an edge's task on the cloud tier) only in `remote_tasks` when it is answered."""
        if origin_kind is None:
            self._metrics.tasks_submitted.inc()
        task_type = None
        try:
            req = self.parse(payload)
            task_type = req.type
            if msg is None:
                return req, self._accept(req, received_at, None, origin_kind), None
            route = self._route(msg, req.reply_to, req.correlation_id)
            why = self.refusal(route)
            if why is not None:
                assert route is not None
                raise p.SubmissionError(
                    p.RejectCode.REPLY_TOPIC,
                    f"reply topic {route.topic[:128]!r} refused: {why}", task_id=req.id)
            return req, self._accept(req, received_at, route_key(route), None), route
        except p.SubmissionError as exc:
            self._metrics.tasks_rejected.labels(reason=exc.reason.value).inc()
            if origin_kind is None:
                self._metrics.completed("none", "rejected", task_type)
            else:
                self._metrics.remote_tasks.labels(origin_kind=origin_kind,
                                                  status="rejected").inc()
            with task_context(exc.task_id):
                self._ratelog.warning(f"reject-{exc.reason.value}", "rejected a submission: %s",
                                      exc)
            raise

    # -- MQTT ---------------------------------------------------------------------------------

    async def on_mqtt_submit(self, msg: InboundMessage) -> None:
        """Consumer of the submit topic: must return quickly (the job runs in the pipeline)."""
        try:
            waited = time.monotonic() - msg.received_at
            if not (0 < self._shed_after_s < waited and self._busy()
                    and self._shed(msg, waited)):
                await self._on_mqtt_submit(msg)
        finally:
            if msg.ack is not None:
                msg.ack()  # recorded (or answered, or refused): the broker may forget it

    def on_mqtt_overflow(self, msg: InboundMessage) -> bool:
        """The submit queue is full (mqtt.incoming_queue submissions wait for the intake):
        `msg` is answered `rejected` (overloaded) at once, from the read path, as a shed
        submission is (`_shed`), instead of being dropped without a reply. False for a repeat
        of a task already seen (its first reply answers it)."""
        return self._shed(msg, None)

    def _shed(self, msg: InboundMessage, waited: float | None) -> bool:
        """Overload: `msg` waited longer than intake.shed_after_s between the socket and
        this consumer, so the event loop is behind, and the node has tasks of its own under
        way (`busy`: as many as its slots; a loop slowed by a flood of someone else's
        telemetry alone does not shed tasks). It is answered `rejected` (overloaded)
        at once, reading only its reply routing: no validation, no decision, no task, and
        the reply is handed to the connection without waiting for its PUBACK. Cheap enough
        that the node keeps draining its socket at twice what it can run (docs/scaling.md).
        False (not shed) for a repeat of a task already seen: it gets that task's reply."""
        task_id, reply_to, correlation_id, task_type = p.submit_routing(
            msg.payload, max_bytes=self._max_bytes)
        route = self._route(msg, reply_to, correlation_id)
        if task_id is not None and route is not None \
                and self._seen((route_key(route), task_id)):
            return False
        m = self._metrics
        m.tasks_submitted.inc()
        m.tasks_rejected.labels(reason=p.RejectCode.OVERLOADED.value).inc()
        m.completed("none", "rejected", task_type)
        if waited is None:
            self._ratelog.warning("overloaded-full", "overloaded: the queue of submissions "
                                  "is full (mqtt.incoming_queue): answering them rejected")
            why = "its queue of submissions is full"
        else:
            self._ratelog.warning("overloaded", "overloaded: shedding submissions that waited "
                                  "more than intake.shed_after_s=%gs (this one %.3fs)",
                                  self._shed_after_s, waited)
            why = f"it is {waited * 1000:.0f} ms behind"
        if route is None or self.refusal(route) is not None:
            m.replies_dropped.labels(reason="no_route").inc()
            return True  # nowhere (allowed) to answer, as for any other refusal
        reply = p.Reply(id=task_id or p.new_task_id(), status=p.Status.REJECTED,
                        error=f"overloaded: this node is busy ({why}); try again later or "
                        "elsewhere", latency_s=waited or 0.0,
                        correlation_id=route.correlation_id)
        if not self._mqtt.publish_nowait(route.topic, reply.encode(),
                                         correlation_data=route.correlation_data):
            m.replies_dropped.labels(reason="publish_failed").inc()
        return True

    async def _on_mqtt_submit(self, msg: InboundMessage,
                              spool_key: str | None = None) -> str | None:
        """Accept (or answer the refusal of) one MQTT submission; returns its spool key when
        it was recorded in the spool."""
        received = time.monotonic()
        try:
            req, future, route = self.submit(msg.payload, received, msg)
        except p.SubmissionError as exc:
            route = self._route(msg, exc.reply_to, exc.correlation_id)
            if exc.reason is p.RejectCode.REPLY_TOPIC:
                return None  # never answered on a forbidden topic (logged, counted above)
            why = self.refusal(route)
            if why is not None:
                assert route is not None
                self._ratelog.warning("reply-topic", "rejection not sent to %r: %s",
                                      route.topic[:128], why)
                return None
            reply = p.Reply(id=exc.task_id or p.new_task_id(), status=p.Status.REJECTED,
                            error=str(exc), latency_s=time.monotonic() - received,
                            correlation_id=route.correlation_id if route else None)
            if self._pending_rejects >= MAX_PENDING_REJECTS:
                await self.send(route, reply)  # a flood of bad input: push back on it
            else:
                # Answer off the consumer loop so valid submissions behind it are not delayed.
                self._pending_rejects += 1
                self._spawn(self._send_reject(route, reply), "edgesched.pipeline.reject")
            return None
        key = None
        if self._spool is not None and route is not None and not future.done():
            key = spool_key or f"{route_key(route).hex()}:{req.id}"
            if spool_key is None and self._spool.has_task(key):
                # a redelivery of a spooled task still in flight (e.g. resumed after a crash
                # and redelivered by the broker, its PUBACK never sent): one reply is coming
                return key
            if not self._spool.record_task(key, req.type, msg.payload,
                                           response_topic=msg.response_topic,
                                           correlation_data=msg.correlation_data):
                key = None  # not kept (counted): runs and is answered unspooled
        self._spawn(self._reply_when_done(future, route, key), "edgesched.pipeline.reply")
        return key

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
                               route: ReplyRoute | None, key: str | None = None) -> None:
        reply = await asyncio.shield(future)
        if route is not None and route.correlation_id is not None:
            reply = _with_correlation(reply, route.correlation_id)
        if key is not None and route is not None and self._spool is not None:
            data = reply.encode()
            if self._spool.complete(key, topic=route.topic,
                                    correlation_data=route.correlation_data, payload=data):
                await self._send_spooled(key, route.topic, route.correlation_data, data)
                return
        await self.send(route, reply)

    # -- the spool ----------------------------------------------------------------------------

    async def _send_spooled(self, key: str, topic: str, correlation_data: bytes | None,
                            data: bytes) -> None:
        """Publish a spooled reply once; on the broker's PUBACK its row is dropped. When it
        cannot go out now it stays in the spool for the next connect (or the next start)."""
        spool = self._spool
        if spool is None or key in self._sending:
            return
        self._sending.add(key)
        try:
            await self._mqtt.publish(topic, data, qos=1, correlation_data=correlation_data)
        except MqttError as exc:
            self._ratelog.warning("spooled", "reply %s kept in the spool until the broker is "
                                  "back: %s", key.partition(":")[2], exc)
            return
        finally:
            self._sending.discard(key)
        spool.forget_reply(key)

    async def flush_spooled(self) -> None:
        """On-connect hook: send every spooled reply not being sent now (each in its own
        task, so the connection's hooks are not held up)."""
        if self._spool is None:
            return
        pending = [r for r in self._spool.pending_replies() if r.key not in self._sending]
        if pending:
            log.info("spool: sending %d reply(ies) held while the broker was away",
                     len(pending))
        for r in pending:
            self._spawn(self._send_spooled(r.key, r.topic, r.correlation_data, r.payload),
                        "edgesched.pipeline.spooled")

    async def resume(self, submit_topic: str) -> None:
        """At start: every task a previous run left unfinished is run again through the
        normal accept path (idempotent types) or answered `failed` ("interrupted by
        restart"), once. Spooled replies go out on the first connect (flush_spooled)."""
        spool = self._spool
        if spool is None:
            return
        tasks = spool.pending_tasks()
        if not tasks:
            return
        rerun = failed = 0
        for t in tasks:
            msg = InboundMessage(topic=submit_topic, payload=t.payload, qos=1,
                                 response_topic=t.response_topic,
                                 correlation_data=t.correlation_data)
            if self._idempotent(t.type):
                rerun += 1
                if await self._on_mqtt_submit(msg, spool_key=t.key) != t.key:
                    spool.forget_task(t.key)  # refused now (answered so) or not kept
                continue
            failed += 1
            self._interrupted(t.key, t.type, msg)
        log.info("spool: resumed %d unfinished task(s): %d run again (idempotent), %d "
                 "answered failed (%s)", len(tasks), rerun, failed, INTERRUPTED)

    def _interrupted(self, key: str, task_type: str, msg: InboundMessage) -> None:
        assert self._spool is not None
        try:
            req = p.parse_submit(msg.payload, max_bytes=1 << 62, max_input_bytes=1 << 62,
                                 known_types=frozenset({task_type}))
            task_id, reply_to, corr = req.id, req.reply_to, req.correlation_id
        except p.SubmissionError as exc:
            task_id, reply_to, corr = exc.task_id or p.new_task_id(), exc.reply_to, (
                exc.correlation_id)
        route = self._route(msg, reply_to, corr)
        if route is None or self.refusal(route) is not None:
            self._spool.forget_task(key)
            return
        reply = p.Reply(id=task_id, status=p.Status.FAILED, error=INTERRUPTED, latency_s=0.0,
                        correlation_id=route.correlation_id)
        self._metrics.completed("none", "failed", task_type)
        data = reply.encode()
        if self._spool.complete(key, topic=route.topic, correlation_data=route.correlation_data,
                                payload=data):
            self._spawn(self._send_spooled(key, route.topic, route.correlation_data, data),
                        "edgesched.pipeline.reply")
        else:
            self._spawn(self.send(route, reply), "edgesched.pipeline.reply")

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
        # an edge node's task sent to the cloud tier was submitted (and is counted) there
        origin_kind = "edge" if self._cloud_tier and ORIGIN_HEADER in request.headers else None
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._http_reject(p.SubmissionError(
                p.RejectCode.OVERSIZE, f"body larger than {self._max_bytes} bytes"), received)
        try:
            _, future, _ = self.submit(body, received, origin_kind=origin_kind)
        except p.SubmissionError as exc:
            return self._http_reject(exc, received)
        reply = await asyncio.shield(future)
        return web.Response(body=reply.encode(), content_type="application/json",
                            headers=self._load_header())

    def _load_header(self) -> dict[str, str] | None:
        if not self._cloud_tier or self._load is None:
            return None
        return {LOAD_HEADER: format_load(*self._load())}

    def _http_reject(self, exc: p.SubmissionError, received: float) -> web.Response:
        reply = p.Reply(id=exc.task_id or p.new_task_id(), status=p.Status.REJECTED,
                        error=str(exc), latency_s=time.monotonic() - received)
        # Bad requests are HTTP errors; a refusal of a valid task is a reply like any other.
        status = {p.RejectCode.OVERSIZE: 413, p.RejectCode.MALFORMED: 400,
                  p.RejectCode.SCHEMA: 400, p.RejectCode.UNKNOWN_TYPE: 400}.get(exc.reason, 200)
        return web.Response(status=status, body=reply.encode(), content_type="application/json",
                            headers=self._load_header())


def _with_correlation(reply: p.Reply, correlation_id: str) -> p.Reply:
    return dataclasses.replace(reply, correlation_id=correlation_id)
