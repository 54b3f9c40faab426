"""Telemetry stage: feeds node/device telemetry into the cluster view and publishes our own.

The stage is the single writer of the `ClusterView`. It subscribes to the telemetry topics,
hands each payload to the pure parsers of node/wire.py and applies what they return; each
`TelemetryRejected` is counted in `edgesched_telemetry_rejected_total{reason}` and logged
rate-limited, never raised out of the stage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import InboundMessage, MqttClient, RateLimitedLog, topic_matches
from edgesched.adapters.procstat import CpuSampler
from edgesched.config import DeviceMapping
from edgesched.core.estimators import EstimatorBank
from edgesched.core.model import Liveness, NodeState, PowerModel
from edgesched.core.view import ClusterView, NodeAnnouncement, NodeTelemetry, Observed
from edgesched.errors import MqttError, TelemetryRejected
from edgesched.node.wire import (
    parse_device_payload,
    parse_mapped,
    parse_node_state,
    parse_node_telemetry,
)

log = logging.getLogger("edgesched.telemetry")

TELEMETRY_PUBLISH_S = 1.0  # the longest a telemetry publish may wait (it is QoS 0)
# RTT probes piggybacked on telemetry (docs/mqtt.md, "Round-trip times"): each telemetry
# echoes up to ECHOES_PER_MESSAGE neighbours' latest ones, the longest waiting first.
ECHOES_PER_MESSAGE = 4
ECHO_SENT_REMEMBERED = 16  # our own publications an echo can still refer to
MAX_INTERVAL_S = 3600.0  # telemetry.interval_s's own upper bound


class Load(NamedTuple):
    """This node's load as the executor reports it."""

    running: int = 0
    queued: int = 0
    slots: int = 1
    est_wait_s: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Identity:
    """Who this node is, as announced in its state document."""

    node_id: str
    role: str
    incarnation: int
    task_types: tuple[str, ...]
    speed: float = 1.0  # executor.speed: lets neighbours scale their execution priors


MAX_LOGGED_TOPIC = 160  # characters of a topic quoted in a log line


class Topics:
    """The topic names of contract §4 under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def node_state(self, node_id: str) -> str:
        return f"{self.prefix}/node/{node_id}/state"

    def node_telemetry(self, node_id: str) -> str:
        return f"{self.prefix}/node/{node_id}/telemetry"

    def device_telemetry(self, device_id: str) -> str:
        return f"{self.prefix}/device/{device_id}/telemetry"

    # A node or device id in a topic: [A-Za-z0-9_-]{1,64}, as config.NODE_ID_PATTERN and
    # protocol's device_id rule.
    ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
    MAX_ID_CHARS = 64

    def node_id_of(self, topic: str) -> str:
        """The `{id}` level of `P/node/{id}/...` or `P/device/{id}/...`; "" when that level
        is not a valid id ([A-Za-z0-9_-]{1,64}), so no oversized or odd id gets further."""
        rest = topic[len(self.prefix) + 1 :]
        parts = rest.split("/", 2)
        level = parts[1] if len(parts) >= 3 else ""
        ok = 0 < len(level) <= self.MAX_ID_CHARS and self.ID_CHARS.issuperset(level)
        return level if ok else ""


_BAD_NODE_ID = TelemetryRejected(
    "bad_id", "the node id level of the topic must match [A-Za-z0-9_-]{1,64}")


# ---- the stage ---------------------------------------------------------------------------
class TelemetryStage:
    """Feeds the view from MQTT and publishes this node's state and telemetry.

    Subscribes to `P/node/+/state`, `P/node/+/telemetry`, `P/device/+/telemetry` and every
    `devices.mappings` topic; publishes the retained online state on every connect and
    telemetry every `interval_s`. `mqtt` may be None (no broker configured for the role).
    With `observe=False` (the cloud role) it only publishes. `on_device(device_id, values, now)`
    is called after a device's values were accepted (e.g.
    to feed link estimators).
    """

    def __init__(
        self,
        *,
        identity: Identity,
        topics: Topics,
        view: ClusterView,
        metrics: Metrics,
        mqtt: MqttClient | None,
        interval_s: float,
        max_payload_bytes: int,
        max_fanout_rate: float = 0.0,
        mappings: tuple[DeviceMapping, ...] = (),
        load: Callable[[], Load] = Load,
        power: PowerModel | None = None,
        battery_device: str | None = None,
        on_device: Callable[[str, Mapping[str, float], float], None] | None = None,
        on_announcement: Callable[[str, NodeAnnouncement], None] | None = None,
        on_rtt: Callable[[str, float, float], object] | None = None,
        observe: bool = True,
        max_clock_skew_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.topics = topics
        self.view = view
        self._metrics = metrics
        self._mqtt = mqtt
        self._interval_s = self._base_interval_s = interval_s
        self._max_fanout_rate = max_fanout_rate
        metrics.telemetry_interval.set(interval_s)
        self._limit = max_payload_bytes
        self._mappings = mappings
        self._load = load
        self._power = power or PowerModel()
        self._battery_device = battery_device
        self._on_device = on_device
        self._on_announcement = on_announcement
        self._rtt = RttProbe(identity.node_id, on_rtt, max_nodes=view.params.max_nodes)
        self._observe = observe
        self._skew_ms = int(max_clock_skew_s * 1000)
        self._clock = clock
        self._wall = wall
        self._cpu = CpuSampler()
        self._cpu_util = 0.0
        self._kick = asyncio.Event()  # set on (re)connect: publish telemetry at once
        self._stopping = False
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ratelog = RateLimitedLog(log)
        self._kind_ok = {k: metrics.telemetry_messages.labels(kind=k) for k in
                         ("node", "state", "device")}
        self._rejects: dict[str, Any] = {}

    # ---- documents we publish ----------------------------------------------------------
    def state_doc(self, *, online: bool, ts: float | None = None) -> bytes:
        """The state document; the Will is built at start, so its `ts` is the start time."""
        ident = self.identity
        return json.dumps({
            "v": 1, "node_id": ident.node_id, "status": "online" if online else "offline",
            "role": ident.role, "incarnation": ident.incarnation,
            "ts": round(self._wall() if ts is None else ts, 3),
            "task_types": list(ident.task_types), "slots": self._load().slots,
            "speed": ident.speed,
        }).encode()

    def telemetry_doc(self) -> bytes:
        load = self._load()
        ts = round(self._wall(), 3)
        return json.dumps({
            "v": 1, "node_id": self.identity.node_id, "incarnation": self.identity.incarnation,
            "ts": ts, "cpu_util": round(self._cpu_util, 4),
            "running": load.running, "queued": load.queued, "slots": load.slots,
            "est_wait_s": load.est_wait_s, "battery": self.battery(), "power_w": self.power_w(),
            **self._rtt.echo(ts, self._clock()),
        }).encode()

    def battery(self) -> float | None:
        if self._battery_device is None:
            return None
        return self.view.device_value(self._battery_device, "battery")

    def power_w(self) -> float:
        p = self._power
        return round(p.idle_w + (p.busy_w - p.idle_w) * self._cpu_util, 3)

    def local_state(self, now: float | None = None) -> NodeState:
        """This node as a `NodeState` (for snapshots and the status page)."""
        load = self._load()
        return NodeState(
            node_id=self.identity.node_id, role=self.identity.role,
            liveness=Liveness.ONLINE, incarnation=self.identity.incarnation,
            last_seen=self._clock() if now is None else now, slots=load.slots,
            running=load.running, queued=load.queued, est_wait_s=load.est_wait_s,
            cpu_util=self._cpu_util, battery=self.battery(), power_w=self.power_w(),
            task_types=frozenset(self.identity.task_types),
        )

    # ---- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> TelemetryStage:
        mqtt = self._mqtt
        if mqtt is not None and self._observe:
            t = self.topics
            # node-to-node documents: signed when security.key_file is set (docs/security.md)
            await mqtt.subscribe(f"{t.prefix}/node/+/state", self._on_state, qos=1,
                                 signed=True, persistent=True)
            await mqtt.subscribe(f"{t.prefix}/node/+/telemetry", self._on_node_telemetry,
                                 signed=True, conflate=True)
            await mqtt.subscribe(f"{t.prefix}/device/+/telemetry", self._on_device_message)
            for flt in dict.fromkeys(m.topic for m in self._mappings):
                await mqtt.subscribe(flt, self._on_mapped)
        if mqtt is not None:
            mqtt.on_connect(self.publish_online_state)
            mqtt.on_connect(self._catch_up_on_connect)
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._tasks = [
            self._tg.create_task(self._publish_loop(), name="edgesched.telemetry.publish_loop"),
            self._tg.create_task(self._housekeeping_loop(),
                                 name="edgesched.telemetry.housekeeping_loop"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        tg, self._tg, self._tasks = self._tg, None, []
        if tg is not None:
            await tg.__aexit__(None, None, None)

    async def publish_online_state(self) -> None:
        """Retained online state (QoS 1); runs after every (re)connect."""
        if self._mqtt is None or self._stopping:
            return
        await self._mqtt.publish(self.topics.node_state(self.identity.node_id),
                                 self.state_doc(online=True), qos=1, retain=True, signed=True)

    def set_task_types(self, task_types: tuple[str, ...]) -> None:
        """Announce another set of task types (a reload added or removed some): the state
        document says so from now on, re-published at once when connected."""
        if task_types == self.identity.task_types:
            return
        self.identity = dataclasses.replace(self.identity, task_types=task_types)
        if self._mqtt is not None and self._mqtt.connected and self._tg is not None:
            self._tg.create_task(self._republish(), name="edgesched.telemetry.republish")

    async def _republish(self) -> None:
        try:
            await self.publish_online_state()
        except MqttError as exc:  # the connection just went: re-announced on reconnect
            log.info("new task types not announced now (on reconnect): %s", exc)

    async def _catch_up_on_connect(self) -> None:
        """After a (re)connect the neighbours hear our telemetry now, not a tick later."""
        self._kick.set()

    async def _publish_loop(self) -> None:
        next_at = self._clock()
        while True:
            self._kick.clear()
            self._cpu_util = self._cpu.sample()
            mqtt = self._mqtt
            if mqtt is not None and mqtt.connected:
                try:
                    # bounded well below the publish default (10 s): after a freeze the
                    # connection may be dead without our knowing yet, and waiting it out
                    # would hold back the publish after the reconnect by as much
                    await mqtt.publish(self.topics.node_telemetry(self.identity.node_id),
                                       self.telemetry_doc(), signed=True,
                                       timeout_s=TELEMETRY_PUBLISH_S)
                except MqttError as exc:
                    self._ratelog.warning("publish", "telemetry not published: %s", exc)
            next_at += self._interval_s
            delay = next_at - self._clock()
            if delay < 0:  # fell behind (loop busy): skip the missed ticks, do not burst
                next_at = self._clock()
                delay = 0.0
            try:
                await asyncio.wait_for(self._kick.wait(), delay)
                next_at = self._clock()  # reconnected: published now, next tick from here
                continue
            except TimeoutError:
                pass
            behind = self._clock() - next_at
            if behind > 2 * self._interval_s:
                # the loop did not run for > 2 intervals (SIGSTOP/SIGCONT, a suspended VM):
                # re-announce our state and publish telemetry at once (this iteration)
                next_at = self._clock()
                log.info("resumed after a %.1fs pause: re-announcing state and telemetry",
                         behind)
                if mqtt is not None and mqtt.connected and self._tg is not None:
                    # in the background: on a connection that died meanwhile it waits until
                    # the reconnect (whose hook re-announces anyway) and must not hold the loop
                    self._tasks = [t for t in self._tasks if not t.done()]
                    self._tasks.append(self._tg.create_task(
                        self._reannounce(), name="edgesched.telemetry.reannounce"))

    async def _reannounce(self) -> None:
        try:
            async with asyncio.timeout(2 * TELEMETRY_PUBLISH_S):
                await self.publish_online_state()
        except (MqttError, TimeoutError) as exc:
            self._ratelog.warning("publish", "state not re-announced: %s", exc)

    async def _housekeeping_loop(self) -> None:
        while True:
            now = self._clock()
            self.view.expire(now)
            counts = dict.fromkeys(Liveness, 0)
            for node in self.view.neighbours(now):
                if node.role == "edge":  # the cloud tier is no neighbour
                    counts[node.liveness] += 1
            for status, count in counts.items():
                self._metrics.neighbours.labels(status=status.value).set(count)
            if self._max_fanout_rate > 0:
                self._adapt_interval(now)
            await asyncio.sleep(self._interval_s)

    def _adapt_interval(self, now: float) -> None:
        """telemetry.max_fanout_rate: N nodes each publishing every T s to N subscribers make
        the broker deliver N²/T messages/s; stretch T so that stays under the rate. N counts
        this node and every neighbour not offline (of any role: the cloud node publishes
        too). The view judges liveness on the same interval, and as every node of the
        cluster sees the same N, they all settle on the same T. Changes under 10 % are
        ignored, so one node coming and going does not make everybody re-time."""
        alive = 1 + sum(1 for n in self.view.neighbours(now) if n.liveness is not Liveness.OFFLINE)
        wanted = min(MAX_INTERVAL_S, max(self._base_interval_s,
                                         alive * alive / self._max_fanout_rate))
        if abs(wanted - self._interval_s) <= 0.1 * self._interval_s:
            return
        log.info("telemetry interval %.2fs -> %.2fs (%d nodes, telemetry.max_fanout_rate %g/s)",
                 self._interval_s, wanted, alive, self._max_fanout_rate)
        self._interval_s = wanted
        self.view.set_interval(wanted)
        self._metrics.telemetry_interval.set(wanted)

    @property
    def interval_s(self) -> float:
        """The telemetry interval in use (see `_adapt_interval`)."""
        return self._interval_s

    # ---- handlers ----------------------------------------------------------------------
    def _max_incarnation(self) -> int:
        return int(self._wall() * 1000) + self._skew_ms

    def _reject(self, rej: TelemetryRejected, topic: str) -> None:
        counter = self._rejects.get(rej.reason)
        if counter is None:
            counter = self._rejects[rej.reason] = self._metrics.telemetry_rejected.labels(
                reason=rej.reason)
        counter.inc()
        self._ratelog.warning(f"reject:{rej.reason}", "rejected telemetry on %s (%s): %s",
                              topic, rej.reason, rej.detail)

    async def _on_state(self, msg: InboundMessage) -> None:
        if not msg.payload:
            return  # a cleared retained message
        node_id = self.topics.node_id_of(msg.topic)
        if not node_id:
            self._reject(_BAD_NODE_ID, msg.topic[:200])
            return
        if self._mqtt is not None and self._mqtt.reject_signer(msg, node_id):
            return
        try:
            doc = parse_node_state(msg.payload, node_id, limit=self._limit,
                                   max_incarnation=self._max_incarnation())
        except TelemetryRejected as rej:
            self._reject(rej, msg.topic)
            return
        self._kind_ok["state"].inc()
        if node_id == self.identity.node_id:
            await self._on_own_state(doc)
            return
        outcome = self.view.observe_announcement(node_id, doc, now=self._clock())
        if outcome is Observed.TABLE_FULL:
            self._ratelog.warning("nodes_full", "neighbour table full: ignored %s", node_id)
        elif self._on_announcement is not None:
            self._on_announcement(node_id, doc)

    async def _on_own_state(self, doc: NodeAnnouncement) -> None:
        mine = self.identity.incarnation
        if doc.incarnation > mine:
            self._ratelog.warning("conflict", "another process announces node id %s with a "
                                  "newer incarnation %d (ours %d): node ids must be unique",
                                  self.identity.node_id, doc.incarnation, mine)
        elif not doc.online and not self._stopping:
            # A Will (of a previous run, or of a connection of ours the broker gave up on)
            # overwrote our retained online state while we are alive: restore it. Delivered
            # while (re)connecting (the retained state follows our subscription, before the
            # connection is up): the on-connect hook announces us online in a moment.
            if self._mqtt is not None and not self._mqtt.connected:
                return
            log.info("our retained state says offline (Will of incarnation %d); re-announcing",
                     doc.incarnation)
            try:
                await self.publish_online_state()
            except MqttError as exc:
                # the connection just went: the on-connect hook announces us on reconnect
                log.info("state not re-published now (re-announced on reconnect): %s", exc)

    async def _on_node_telemetry(self, msg: InboundMessage) -> None:
        node_id = self.topics.node_id_of(msg.topic)
        if not node_id:
            self._reject(_BAD_NODE_ID, msg.topic[:200])
            return
        if node_id == self.identity.node_id:
            return
        if self._mqtt is not None and self._mqtt.reject_signer(msg, node_id):
            return
        try:
            tel = parse_node_telemetry(msg.payload, node_id, limit=self._limit,
                                       max_incarnation=self._max_incarnation(),
                                       echo_for=self.identity.node_id)
        except TelemetryRejected as rej:
            self._reject(rej, msg.topic)
            return
        self._kind_ok["node"].inc()
        now = self._clock()
        self.view.observe_telemetry(node_id, tel, now=now)
        self._rtt.heard(node_id, tel, now)

    async def _on_device_message(self, msg: InboundMessage) -> None:
        device_id = self.topics.node_id_of(msg.topic)
        if not device_id:  # before any parsing: an odd or oversized id costs nothing more
            self._reject(TelemetryRejected(
                "bad_id", "the device id level of the topic must match [A-Za-z0-9_-]{1,64}"),
                msg.topic[:MAX_LOGGED_TOPIC])
            return
        try:
            values, ts, samples = parse_device_payload(
                msg.payload, limit=self._limit, now_wall=self._wall())
        except TelemetryRejected as rej:
            self._reject(rej, msg.topic[:MAX_LOGGED_TOPIC])
            return
        self._apply_device(device_id, values, ts, samples, msg.topic[:MAX_LOGGED_TOPIC])

    def _apply_device(self, device_id: str, values: dict[str, float], ts: float | None,
                      samples: int, topic: str) -> None:
        now = self._clock()
        if self.view.observe_device(device_id, values, now=now, ts=ts) is Observed.TABLE_FULL:
            self._reject(TelemetryRejected(
                "unknown_device_limit",
                f"device table full (telemetry.max_devices); {device_id} ignored"), topic)
            return
        self._kind_ok["device"].inc()
        self._metrics.telemetry_samples.inc(samples)
        if self._on_device is not None:
            self._on_device(device_id, values, now)

    async def _on_mapped(self, msg: InboundMessage) -> None:
        for mapping in self._mappings:
            if not topic_matches(mapping.topic, msg.topic):
                continue
            topic = msg.topic[:MAX_LOGGED_TOPIC]
            try:
                value = parse_mapped(msg.payload, mapping, limit=self._limit)
            except TelemetryRejected as rej:
                self._reject(rej, topic)
                continue
            self._apply_device(mapping.device_id, {mapping.name: value}, None, 1, topic)


class RttProbe:
    """Round-trip times to neighbours, measured from telemetry alone (no extra messages).

    Each telemetry we publish echoes the latest telemetry heard from up to
    `ECHOES_PER_MESSAGE` neighbours: `"echo": {"<their id>": [their ts, held_ms]}`, held_ms
    being how long we held it before this publication. A neighbour that finds its own entry
    knows when it published that ts (its own monotonic clock) and computes

        rtt = (now - sent) - held

    the way through the broker(s) and back, with both nodes' processing: what a hand-over
    pays. Both figures are differences on one clock each, so clock offsets between nodes do
    not enter (NTP's trick). Neighbours waiting longest for an echo go first, so with N
    nodes each pair is measured about every N / ECHOES_PER_MESSAGE intervals. `on_rtt(node_id,
    seconds, now)` gets each sample (EstimatorBank.observe_rtt). Bounded: `max_nodes` heard
    entries, `ECHO_SENT_REMEMBERED` own publications.
    """

    def __init__(self, node_id: str, on_rtt: Callable[[str, float, float], object] | None,
                 *, max_nodes: int) -> None:
        self._node_id = node_id
        self._on_rtt = on_rtt
        self._max_nodes = max_nodes
        self._sent: OrderedDict[int, float] = OrderedDict()  # our ts (ms) -> monotonic
        # neighbour -> (its latest ts, when we heard it), in the order they wait for an echo
        self._heard: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.samples = 0

    def echo(self, ts: float, now: float) -> dict[str, Any]:
        """Remember one publication of ours (stamped `ts`); the `echo` field it carries."""
        sent = self._sent
        sent[round(ts * 1000)] = now
        while len(sent) > ECHO_SENT_REMEMBERED:
            sent.popitem(last=False)
        if self._on_rtt is None or not self._heard:
            return {}
        out: dict[str, list[float]] = {}
        while self._heard and len(out) < ECHOES_PER_MESSAGE:
            node_id, (their_ts, heard_at) = self._heard.popitem(last=False)
            out[node_id] = [their_ts, max(0, round((now - heard_at) * 1000))]
        return {"echo": out}

    def heard(self, node_id: str, tel: NodeTelemetry, now: float) -> None:
        """A neighbour's telemetry: queue it for an echo, and measure its echo of ours."""
        if self._on_rtt is None:
            return
        heard = self._heard
        if node_id in heard or len(heard) < self._max_nodes:
            heard[node_id] = (tel.ts, now)  # keeps its place in the queue when already in
        if tel.echo is None:
            return
        their_echo_of, held_s = tel.echo
        sent_at = self._sent.get(round(their_echo_of * 1000))
        if sent_at is None:  # older than we remember, or not ours
            return
        rtt = now - sent_at - held_s
        if rtt < -0.002:  # held longer than the whole round trip: a bad report
            return
        self.samples += 1
        self._on_rtt(node_id, max(0.0, rtt), now)


class LinkReadingFeeder:
    """Feeds device link readings (`rtt_s`, `uplink_bps`) into an `EstimatorBank`.

    The composition root passes it to the telemetry stage as `on_device` (service.build_runtime).
    Only devices named in `targets` are fed: a reading of device D updates the link estimator
    of target `targets[D]` (e.g. `{"gw-1-modem": "cloud"}`); other devices are ignored, so a
    fleet of sensors cannot crowd the bank's bounded table of real links. A bandwidth reading
    goes to `EstimatorBank.observe_bandwidth`.
    """

    def __init__(self, bank: EstimatorBank, targets: Mapping[str, str]) -> None:
        self._bank = bank
        self._targets = dict(targets)

    def __call__(self, device_id: str, values: Mapping[str, float], now: float) -> None:
        target = self._targets.get(device_id)
        if target is None:
            return
        rtt = values.get("rtt_s")
        if rtt is not None:
            self._bank.observe_rtt(target, rtt, now)
        bps = values.get("uplink_bps")
        if bps is not None and bps > 0:
            self._bank.observe_bandwidth(target, bps, now)
