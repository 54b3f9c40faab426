"""Cluster view: neighbour liveness with incarnations and a bounded device table (pure)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from edgesched.core.model import ClusterSnapshot, Liveness, NodeState

# Ranges of the device measurement names the cost model recognises; other names only need
# to be finite.
RECOGNISED_RANGES: dict[str, tuple[float, float]] = {
    "battery": (0.0, 1.0),
    "uplink_bps": (0.0, math.inf),
    "rtt_s": (0.0, 3600.0),
    "power_w": (0.0, math.inf),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class ViewParams:
    """How the view judges liveness and bounds its tables (all durations in seconds)."""

    interval_s: float = 1.0
    suspect_after_intervals: float = 3.0
    offline_after_intervals: float = 10.0
    max_nodes: int = 256  # telemetry.max_neighbours
    forget_offline_after_s: float = 3600.0
    max_devices: int = 10_000
    device_ttl_s: float = 3600.0

    @property
    def suspect_after_s(self) -> float:
        return self.interval_s * self.suspect_after_intervals

    @property
    def offline_after_s(self) -> float:
        return self.interval_s * self.offline_after_intervals

    @property
    def snapshot_offline_s(self) -> float:
        """How long an offline neighbour stays in decision snapshots (long enough for a
        running attempt to see it went offline; after that it is only listed by status)."""
        return self.offline_after_s


class Observed(StrEnum):
    """What the view did with one observation (not how a task ended: that is
    `core.model.Outcome`)."""

    APPLIED = "applied"
    STALE_INCARNATION = "stale_incarnation"  # e.g. a late Will of an older run: ignored
    TABLE_FULL = "table_full"
    SELF = "self"  # about this node itself: not a neighbour


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeTelemetry:
    """One node's periodic telemetry (contract §4.2), already validated."""

    incarnation: int
    ts: float = 0.0  # the sender's clock
    cpu_util: float = 0.0
    running: int = 0
    queued: int = 0
    slots: int = 1
    est_wait_s: float = 0.0
    battery: float | None = None
    power_w: float | None = None
    # (our telemetry's ts, seconds the sender held it) when the sender echoes one of ours:
    # the round trip through the broker(s), measured on our clock alone (node/telemetry.py)
    echo: tuple[float, float] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeAnnouncement:
    """One node's retained state document (contract §4.1), already validated."""

    incarnation: int
    online: bool
    ts: float = 0.0  # the sender's clock (a Will carries the time its run started)
    role: str = "edge"
    task_types: frozenset[str] = frozenset()
    slots: int = 1
    speed: float | None = None  # the node's configured relative speed (executor.speed)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceRecord:
    """Latest known value of every measurement of one device (conflated)."""

    device_id: str
    last_seen: float
    values: Mapping[str, float]
    ts: float | None = None  # the device's own timestamp of the latest sample, if any

    def age(self, now: float) -> float:
        return max(0.0, now - self.last_seen)


@dataclass(kw_only=True, slots=True)
class _Neighbour:
    state: NodeState
    declared_offline: bool = False  # its own state doc (or Will) said offline
    offline_ts: float = 0.0  # the sender's `ts` in that offline doc
    offline_since: float | None = None


@dataclass(kw_only=True, slots=True)
class _Device:
    last_seen: float
    values: dict[str, float] = field(default_factory=dict)
    ts: float | None = None


def _offline_since(entry: _Neighbour, params: ViewParams) -> float:
    """When the entry became (or will become) offline if nothing is heard from it."""
    if entry.declared_offline:
        return entry.offline_since if entry.offline_since is not None else entry.state.last_seen
    return entry.state.last_seen + params.offline_after_s


def _liveness(entry: _Neighbour, now: float, params: ViewParams) -> Liveness:
    if entry.declared_offline:
        return Liveness.OFFLINE
    # The same sums as the cached lists' validity bounds (`_lists`), so that a list cached
    # until `last_seen + suspect_after_s` agrees to the last bit with one computed afresh.
    last_seen = entry.state.last_seen
    if now > last_seen + params.offline_after_s:
        return Liveness.OFFLINE
    if now > last_seen + params.suspect_after_s:
        return Liveness.SUSPECT
    return Liveness.ONLINE


class ClusterView:
    """Neighbours and devices as this node observes them; one writer, read by snapshots.

    Liveness rules: an `online` state document or telemetry makes a node online; it turns
    `suspect` after `suspect_after_intervals` telemetry intervals of silence and `offline`
    after `offline_after_intervals`, or at once on an `offline` state document (its Will or a
    graceful stop). Every observation carries the sender's incarnation: one older than the
    newest seen is ignored, so a late Will never marks a restarted node offline; a newer one
    starts afresh (a restarted node is online again). Within one incarnation the sender's
    `ts` orders things: after an `offline` document only a message stamped later revives the
    node. A Will is stamped with the start of its run, so a node whose Will fired while it was
    still alive (broker restart, partition) comes back with its next message; a graceful stop
    is stamped when it happens, so telemetry sent just before it cannot resurrect the node.

    Bounds: at most `params.max_nodes` neighbours. A message about a new node when the table
    is full first makes room by forgetting the offline neighbour heard from longest ago; when
    every entry is alive it is refused (`Observed.TABLE_FULL`, and `on_refused(node_id)` is
    called so the caller can count it). Decision snapshots leave out neighbours offline for
    longer than `params.snapshot_offline_s`, and the sorted neighbour list is cached until
    something changes or a liveness threshold passes, so a decision never pays per-message
    or per-dead-node work.
    """

    def __init__(self, *, local_id: str, params: ViewParams,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.local_id = local_id
        self.params = params
        self._nodes: dict[str, _Neighbour] = {}
        self._devices: dict[str, _Device] = {}
        self._on_refused = on_refused
        self._generation = 0  # bumped by every change of the node table
        # (generation, valid from, valid until, all neighbours, decision neighbours)
        self._cache: tuple[int, float, float, tuple[NodeState, ...],
                           tuple[NodeState, ...]] | None = None

    # ---- node observations ------------------------------------------------------------
    def observe_announcement(
        self, node_id: str, doc: NodeAnnouncement, *, now: float
    ) -> Observed:
        """Apply a state document (`online` or `offline`, possibly a Will)."""
        if node_id == self.local_id:
            return Observed.SELF
        entry = self._nodes.get(node_id)
        if entry is not None and doc.incarnation < entry.state.incarnation:
            return Observed.STALE_INCARNATION
        if entry is None:
            if not self._make_room(node_id, now):
                return Observed.TABLE_FULL
            entry = _Neighbour(state=NodeState(node_id=node_id))
            self._nodes[node_id] = entry
        self._generation += 1
        same_run = doc.incarnation == entry.state.incarnation
        if same_run and entry.declared_offline and doc.online and doc.ts <= entry.offline_ts:
            return Observed.STALE_INCARNATION  # older than its goodbye
        entry.state = replace(
            entry.state,
            role=doc.role,
            incarnation=doc.incarnation,
            task_types=doc.task_types,
            slots=doc.slots,
            last_seen=now if doc.online else entry.state.last_seen,
        )
        entry.declared_offline = not doc.online
        entry.offline_since = None if doc.online else now
        entry.offline_ts = 0.0 if doc.online else doc.ts
        return Observed.APPLIED

    def observe_telemetry(self, node_id: str, tel: NodeTelemetry, *, now: float) -> Observed:
        """Apply a periodic telemetry message: the node is alive and this loaded."""
        if node_id == self.local_id:
            return Observed.SELF
        entry = self._nodes.get(node_id)
        if entry is not None:
            if tel.incarnation < entry.state.incarnation:
                return Observed.STALE_INCARNATION
            if (tel.incarnation == entry.state.incarnation and entry.declared_offline
                    and tel.ts <= entry.offline_ts):
                return Observed.STALE_INCARNATION  # sent before its goodbye, delivered after
        elif not self._make_room(node_id, now):
            return Observed.TABLE_FULL
        else:
            entry = _Neighbour(state=NodeState(node_id=node_id))
            self._nodes[node_id] = entry
        self._generation += 1
        old = entry.state  # replace(old, ...) without its per-call field introspection
        entry.state = NodeState(
            node_id=old.node_id, role=old.role, liveness=old.liveness,
            incarnation=tel.incarnation, last_seen=now, slots=tel.slots, running=tel.running,
            queued=tel.queued, est_wait_s=tel.est_wait_s, cpu_util=tel.cpu_util,
            battery=tel.battery, power_w=tel.power_w, task_types=old.task_types,
        )
        entry.declared_offline = False
        entry.offline_since = None
        return Observed.APPLIED

    def _make_room(self, node_id: str, now: float) -> bool:
        if len(self._nodes) < self.params.max_nodes:
            return True
        self.expire(now)
        if len(self._nodes) < self.params.max_nodes:
            return True
        # Full of live-looking entries, or of offline ones not yet forgotten: an offline one
        # (the longest gone) makes room, so dead ids cannot lock new neighbours out for hours.
        params = self.params
        offline = [(_offline_since(e, params), k) for k, e in self._nodes.items()
                   if _liveness(e, now, params) is Liveness.OFFLINE]
        if offline:
            del self._nodes[min(offline)[1]]
            self._generation += 1
            return True
        if self._on_refused is not None:
            self._on_refused(node_id)
        return False

    # ---- device observations ----------------------------------------------------------
    def observe_device(
        self,
        device_id: str,
        values: Mapping[str, float],
        *,
        now: float,
        ts: float | None = None,
    ) -> Observed:
        """Merge a device's latest values (conflated: the latest value per name wins)."""
        dev = self._devices.get(device_id)
        if dev is None:
            if len(self._devices) >= self.params.max_devices:
                self._expire_devices(now)
                if len(self._devices) >= self.params.max_devices:
                    return Observed.TABLE_FULL
            dev = _Device(last_seen=now)
            self._devices[device_id] = dev
        if ts is not None and dev.ts is not None and ts < dev.ts:
            # An older sample arriving late only fills names not known yet.
            for name, value in values.items():
                dev.values.setdefault(name, value)
        else:
            dev.values.update(values)
            if ts is not None:
                dev.ts = ts
        dev.last_seen = now
        return Observed.APPLIED

    def device_value(self, device_id: str, name: str) -> float | None:
        dev = self._devices.get(device_id)
        return None if dev is None else dev.values.get(name)

    # ---- housekeeping and reads -------------------------------------------------------
    def expire(self, now: float) -> None:
        """Forget devices past their TTL and nodes offline for longer than the limit."""
        self._expire_devices(now)
        limit = self.params.forget_offline_after_s
        gone = [
            node_id
            for node_id, entry in self._nodes.items()
            if _liveness(entry, now, self.params) is Liveness.OFFLINE
            and now - (entry.offline_since or entry.state.last_seen) > limit
        ]
        for node_id in gone:
            del self._nodes[node_id]
        if gone:
            self._generation += 1

    def _expire_devices(self, now: float) -> None:
        ttl = self.params.device_ttl_s
        stale = [k for k, dev in self._devices.items() if now - dev.last_seen > ttl]
        for device_id in stale:
            del self._devices[device_id]

    def neighbours(self, now: float) -> tuple[NodeState, ...]:
        """Every known neighbour with its liveness judged at `now`, sorted by node id."""
        return self._lists(now)[0]

    def decision_neighbours(self, now: float) -> tuple[NodeState, ...]:
        """The neighbours a decision considers: all but those offline for longer than
        `params.snapshot_offline_s` (they could not be chosen anyway)."""
        return self._lists(now)[1]

    def _lists(self, now: float) -> tuple[tuple[NodeState, ...], tuple[NodeState, ...]]:
        cache = self._cache
        if cache is not None and cache[0] == self._generation and cache[1] <= now <= cache[2]:
            return cache[3], cache[4]
        params = self.params
        suspect_s, offline_s, keep_s = (params.suspect_after_s, params.offline_after_s,
                                        params.snapshot_offline_s)
        until = math.inf  # the next time a liveness (or snapshot membership) changes
        out = []
        live = []
        for node_id in sorted(self._nodes):
            entry = self._nodes[node_id]
            state, liveness = entry.state, _liveness(entry, now, params)
            # States are frozen: share the stored one unless its liveness has changed.
            if state.liveness is not liveness:
                state = NodeState(
                    node_id=state.node_id, role=state.role, liveness=liveness,
                    incarnation=state.incarnation, last_seen=state.last_seen,
                    slots=state.slots, running=state.running, queued=state.queued,
                    est_wait_s=state.est_wait_s, cpu_util=state.cpu_util,
                    battery=state.battery, power_w=state.power_w, task_types=state.task_types,
                )
            out.append(state)
            dead_at = _offline_since(entry, params) + keep_s
            if liveness is not Liveness.OFFLINE or now <= dead_at:
                live.append(state)
            for at in (dead_at,) if entry.declared_offline else (
                    state.last_seen + suspect_s, state.last_seen + offline_s, dead_at):
                if now <= at < until:
                    until = at
        result = tuple(out), tuple(live)
        self._cache = (self._generation, now, until, *result)
        return result

    def devices(self, now: float) -> tuple[DeviceRecord, ...]:
        """Every device seen within its TTL, most recently seen first."""
        ttl = self.params.device_ttl_s
        recs = [
            DeviceRecord(device_id=k, last_seen=d.last_seen, values=dict(d.values), ts=d.ts)
            for k, d in self._devices.items()
            if now - d.last_seen <= ttl
        ]
        recs.sort(key=lambda rec: (-rec.last_seen, rec.device_id))
        return tuple(recs)

    @property
    def device_count(self) -> int:
        return len(self._devices)

    @property
    def node_count(self) -> int:
        """Neighbours in the table, whatever their liveness."""
        return len(self._nodes)

    def state(self, node_id: str, now: float) -> NodeState | None:
        """One neighbour's latest state with its liveness judged at `now` (None: unknown)."""
        entry = self._nodes.get(node_id)
        if entry is None:
            return None
        liveness = _liveness(entry, now, self.params)
        return entry.state if entry.state.liveness is liveness else replace(
            entry.state, liveness=liveness)

    def set_interval(self, interval_s: float) -> None:
        """Judge liveness on another telemetry interval from now on (telemetry.
        max_fanout_rate stretches it with the cluster's size)."""
        if interval_s != self.params.interval_s:
            self.params = replace(self.params, interval_s=interval_s)
            self._cache = None

    def liveness_counts(self, now: float) -> dict[Liveness, int]:
        counts = dict.fromkeys(Liveness, 0)
        for entry in self._nodes.values():
            counts[_liveness(entry, now, self.params)] += 1
        return counts

    def snapshot(self, local: NodeState, now: float) -> ClusterSnapshot:
        """A consistent, immutable copy for one decision (or a batch of them)."""
        return ClusterSnapshot(now=now, local=local, neighbours=self.decision_neighbours(now))
