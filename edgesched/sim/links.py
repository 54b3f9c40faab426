"""Network links of the simulator: RTT plus bandwidth shared fairly by concurrent transfers."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

EPS_BITS = 1e-6


class Transfer:
    """One message crossing a link; `done(transfer)` runs when its last bit has been sent."""

    __slots__ = ("bits", "cancelled", "done", "finished", "payload", "started", "tag")

    def __init__(self, bits: float, done: Callable[[Transfer], None], payload: Any,
                 now: float) -> None:
        self.bits = bits
        self.done = done
        self.payload = payload
        self.started = now
        self.tag = 0.0  # the link's per-flow service level at which this transfer completes
        self.cancelled = False
        self.finished = False


class Link:
    """One direction of a link, processor-sharing its bandwidth among active transfers.

    Each of k concurrent transfers gets bandwidth/k (how TCP flows share a bottleneck, to a
    first approximation). Because every active transfer is served at the same rate, the link
    tracks one number, the service each flow has received since the link was created
    (`service`, in bits); a transfer finishes when `service` reaches its `tag` (service at
    its start + its size). Events therefore cost O(log k), not O(k). The link keeps one
    pending completion event in the engine's heap; a `version` number makes superseded
    events harmless.
    """

    __slots__ = ("_heap", "_rx_w", "_tx_w", "active", "bandwidth_bps", "dst", "engine", "last",
                 "name", "rtt_s", "service", "src", "version")

    def __init__(self, engine: Any, src: Any, dst: Any, rtt_s: float,
                 bandwidth_bps: float) -> None:
        self.engine = engine
        self.src = src  # SimNode: pays tx energy while the link is busy (unless the cloud)
        self.dst = dst  # SimNode: pays rx energy
        self.name = f"{src.id}->{dst.id}"
        self.rtt_s = rtt_s
        self.bandwidth_bps = bandwidth_bps
        self.active = 0
        self.service = 0.0
        self._heap: list[tuple[float, int, Transfer]] = []
        self.last = 0.0
        self.version = 0
        # Radio watts while the link is busy; the cloud's energy is not counted.
        self._tx_w = 0.0 if src.is_cloud else src.power.tx_w
        self._rx_w = 0.0 if dst.is_cloud else dst.power.rx_w

    def _advance(self, now: float) -> None:
        last = self.last
        if self.active and now > last:
            dt = now - last
            self.service += dt * self.bandwidth_bps / self.active
            # One radio, busy while anything is being sent: energy is per busy second, not
            # per transfer (concurrent transfers share the airtime).
            if self._tx_w:
                self.src.energy_j += self._tx_w * dt
            if self._rx_w:
                self.dst.energy_j += self._rx_w * dt
        self.last = now

    def _reschedule(self, now: float) -> None:
        self.version += 1
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        if heap:
            left = max(0.0, heap[0][0] - self.service)  # bits still to serve per flow
            self.engine.schedule(now + left * self.active / self.bandwidth_bps, self._on_event,
                                 self.version)

    def start(self, bits: float, done: Callable[[Transfer], None], payload: Any) -> Transfer:
        now = self.engine.now
        tr = Transfer(bits, done, payload, now)
        if bits <= EPS_BITS:
            self.engine.schedule(now, done, tr)
            return tr
        self._advance(now)
        tr.tag = self.service + bits
        heapq.heappush(self._heap, (tr.tag, next(self.engine.seq), tr))
        self.active += 1
        self._reschedule(now)
        return tr

    def _on_event(self, version: int) -> None:
        if version != self.version:
            return  # superseded by a later change of this link
        now = self.engine.now
        self._advance(now)
        heap = self._heap
        finished: list[Transfer] = []
        service = self.service
        limit = service + EPS_BITS * (service if service > 1.0 else 1.0)
        while heap and (heap[0][0] <= limit or heap[0][2].cancelled or not finished):
            tr = heapq.heappop(heap)[2]
            if not tr.cancelled:
                tr.finished = True
                finished.append(tr)  # the first one is due now even if rounding says not
        self.active -= len(finished)
        self._reschedule(now)
        for tr in finished:
            tr.done(tr)

    def cancel(self, tr: Transfer) -> None:
        """Abort a transfer (the sender gave up, e.g. an HTTP request that timed out)."""
        if tr.cancelled or tr.finished or tr.bits <= EPS_BITS:
            return  # already over
        now = self.engine.now
        self._advance(now)
        tr.cancelled = True
        self.active -= 1
        self._reschedule(now)

    def set_state(self, rtt_s: float | None, bandwidth_bps: float | None) -> None:
        """A link event: new RTT and/or bandwidth from now on (transfers in flight adapt)."""
        now = self.engine.now
        self._advance(now)
        if rtt_s is not None:
            self.rtt_s = rtt_s
        if bandwidth_bps is not None:
            self.bandwidth_bps = bandwidth_bps
        self._reschedule(now)

    def share_bps(self) -> float:
        """Bandwidth a new transfer would get right now (what the oracle knows)."""
        return self.bandwidth_bps / (self.active + 1)


# ---------------------------------------------------------------------------------------------
# EdgeCloudSim's network models (sample_app2's SampleNetworkModel), selectable per scenario
# (`links.wan.model: ecs_empirical`, `links.man.model: ecs_mm1`, `links.wlan.model:
# ecs_empirical`). Unlike the shared links above, a transfer's duration is fixed when it
# starts, from the state at that moment, and does not change afterwards: that is how
# EdgeCloudSim computes its delays. Sizes and rates use EdgeCloudSim's units: 1 KB = 1024
# bytes and 1 Kbps = 1024 bit/s, so a scenario's bytes are EdgeCloudSim's KB x 1024.

KBPS = 1024.0  # bit/s per EdgeCloudSim "Kbps" (its KB are 1024 bytes, times 8 bits)

# Measured WAN throughput (Kbps) when n other clients of the same access point are using the
# WAN (index n = 0 .. 24); with 25 or more, EdgeCloudSim fails the transfer.
ECS_WAN_KBPS: tuple[float, ...] = (
    20703.973, 12023.957, 9887.785, 8915.775, 8259.277, 7560.574, 7262.140, 7155.361,
    7041.153, 6994.595, 6653.232, 6111.868, 5570.505, 5029.142, 4487.779, 3899.729,
    3311.680, 2723.631, 2135.582, 1547.533, 1500.252, 1452.972, 1405.692, 1358.411, 1311.131,
)

# Measured 802.11n WLAN throughput (Kbps) with n other clients (n = 0 .. 99); EdgeCloudSim
# multiplies it by 3 for 802.11ac and fails the transfer with 100 or more clients.
ECS_WLAN_KBPS: tuple[float, ...] = (
    88040.279, 45150.982, 30303.641, 27617.211, 24868.616, 22242.296, 20524.064, 18744.889,
    17058.827, 15690.455, 14127.744, 13522.408, 13177.631, 12811.330, 12584.387, 12135.161,
    11705.638, 11276.116, 10846.594, 10417.071, 9987.549, 9367.587, 8747.625, 8127.663,
    7907.701, 7887.739, 7690.831, 7393.922, 7297.014, 7100.106, 6903.197, 6701.986, 6500.776,
    6399.565, 6098.354, 5897.143, 5552.127, 5207.111, 4862.096, 4517.080, 4172.064, 4092.922,
    4013.781, 3934.639, 3855.498, 3776.356, 3697.215, 3618.073, 3538.932, 3459.790, 3380.649,
    3274.611, 3168.573, 3062.536, 2956.498, 2850.461, 2744.423, 2638.386, 2532.348, 2426.310,
    2320.273, 2283.828, 2247.383, 2210.939, 2174.494, 2138.049, 2101.604, 2065.160, 2028.715,
    1992.270, 1955.825, 1946.788, 1937.751, 1928.714, 1919.677, 1910.640, 1901.603, 1892.566,
    1883.529, 1874.492, 1865.455, 1833.185, 1800.915, 1768.645, 1736.375, 1704.106, 1671.836,
    1639.566, 1607.296, 1575.026, 1542.756, 1538.544, 1534.331, 1530.119, 1525.906, 1521.694,
    1517.481, 1513.269, 1509.056, 1504.844, 1500.631,
)
ECS_WLAN_SPEEDUP = 3.0  # 802.11ac over the measured 802.11n

ECS_MAN_WINDOW_S = 5.0  # EdgeCloudSim re-estimates the MAN's arrival rate every 5 s
ECS_MAN_MAX_DELAY_S = 15.0  # ... and fails a MAN transfer whose delay would exceed 15 s


class ClientCount:
    """Transfers under way at one access point (EdgeCloudSim's `wanClients[ap]` or
    `wlanClients[ap]`): both directions of that access point's link count."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = 0


class _FixedDurationLink:
    """A link whose transfers each take a duration fixed when they start (`_duration`);
    None means the network model fails the transfer: it is lost (never delivered), and the
    sender finds out as it would from a lost message (its attempt times out)."""

    __slots__ = ("_rx_w", "_tx_w", "bandwidth_bps", "dst", "engine", "lost", "name", "rtt_s",
                 "scale", "src")

    def __init__(self, engine: Any, src: Any, dst: Any, rtt_s: float,
                 bandwidth_bps: float) -> None:
        self.engine = engine
        self.src = src
        self.dst = dst
        self.name = f"{src.id}->{dst.id}"
        self.rtt_s = rtt_s
        self.bandwidth_bps = bandwidth_bps  # nominal; `scale` follows link events
        self.scale = 1.0
        self.lost = 0  # transfers the model failed
        self._tx_w = 0.0 if src.is_cloud else src.power.tx_w
        self._rx_w = 0.0 if dst.is_cloud else dst.power.rx_w

    def _duration(self, bits: float, now: float, payload: Any) -> float | None:
        raise NotImplementedError

    def _began(self) -> None:
        """A transfer was admitted by the model."""

    def _ended(self) -> None:
        """An admitted transfer finished or was cancelled."""

    def start(self, bits: float, done: Callable[[Transfer], None], payload: Any,
              lost: Callable[[Transfer], None] | None = None) -> Transfer:
        now = self.engine.now
        tr = Transfer(bits, done, payload, now)
        if bits <= EPS_BITS:
            self.engine.schedule(now, done, tr)
            return tr
        seconds = self._duration(bits, now, payload)
        if seconds is None:
            self.lost += 1
            tr.finished = True  # over: it will never be delivered
            if lost is not None:
                self.engine.schedule(now, lost, tr)
            return tr
        self._began()
        if self._tx_w:
            self.src.energy_j += self._tx_w * seconds
        if self._rx_w:
            self.dst.energy_j += self._rx_w * seconds
        self.engine.schedule(now + seconds, self._finish, tr)
        return tr

    def _finish(self, tr: Transfer) -> None:
        if tr.cancelled:
            return
        tr.finished = True
        self._ended()
        tr.done(tr)

    def cancel(self, tr: Transfer) -> None:
        if tr.cancelled or tr.finished or tr.bits <= EPS_BITS:
            return
        tr.cancelled = True
        self._ended()

    def set_state(self, rtt_s: float | None, bandwidth_bps: float | None) -> None:
        """A link event: a new RTT, and/or a bandwidth that scales the model's rates."""
        if rtt_s is not None:
            self.rtt_s = rtt_s
        if bandwidth_bps is not None:
            self.scale = bandwidth_bps / self.bandwidth_bps

    def share_bps(self) -> float:
        raise NotImplementedError


class EmpiricalLink(_FixedDurationLink):
    """One direction of an access point's link in EdgeCloudSim's empirical model: a transfer
    runs at `table[n]` Kbps for its whole life, n being the number of transfers already under
    way at that access point (both directions) when it starts; with n >= len(table) the
    transfer fails. Used for the WAN (ECS_WAN_KBPS) and the WLAN (ECS_WLAN_KBPS x 3)."""

    __slots__ = ("clients", "table_bps")

    def __init__(self, engine: Any, src: Any, dst: Any, rtt_s: float, clients: ClientCount,
                 table_kbps: tuple[float, ...], speedup: float = 1.0) -> None:
        self.table_bps = tuple(k * KBPS * speedup for k in table_kbps)
        super().__init__(engine, src, dst, rtt_s, self.table_bps[0])
        self.clients = clients

    def rate_bps(self) -> float | None:
        """The rate a transfer starting now would get (None: it would fail)."""
        n = self.clients.active
        return self.table_bps[n] * self.scale if n < len(self.table_bps) else None

    def _duration(self, bits: float, now: float, payload: Any) -> float | None:
        rate = self.rate_bps()
        return None if rate is None else bits / rate

    def _began(self) -> None:
        self.clients.active += 1

    def _ended(self) -> None:
        self.clients.active -= 1

    def share_bps(self) -> float:
        """What a new transfer would get; when it would fail, the table's slowest rate (an
        estimate for timeouts, not a promise)."""
        return self.rate_bps() or self.table_bps[-1] * self.scale


class ManQueue:
    """One direction of EdgeCloudSim's MAN (uploads to, or downloads from, a remote edge
    server): an M/M/1 formula, not a simulated queue. Each transfer takes 1/(mu - lambda):
    mu = bandwidth / mean size, lambda = this direction's MAN transfers per second over the
    last ECS_MAN_WINDOW_S. The mean size is fixed when given (EdgeCloudSim's: it starts from
    the apps' weighted mean sizes and, adding that same mean for every transfer, never
    updates it), else measured over the window. A transfer's delay does not depend on its
    own size; the propagation delay is the link's RTT/2, added by the engine."""

    __slots__ = ("bandwidth_bps", "count", "fixed_bits", "lam", "mean_bits", "total_bits",
                 "window_at")

    def __init__(self, bandwidth_bps: float, mean_bits: float | None = None) -> None:
        self.bandwidth_bps = bandwidth_bps
        self.fixed_bits = mean_bits
        self.lam = 0.0
        self.mean_bits = mean_bits or 0.0
        self.window_at = 0.0
        self.count = 0
        self.total_bits = 0.0

    def delay(self, bits: float, now: float, scale: float) -> float | None:
        if now - self.window_at >= ECS_MAN_WINDOW_S:
            span = now - self.window_at
            if self.count:
                self.lam = self.count / span
                if self.fixed_bits is None:
                    self.mean_bits = self.total_bits / self.count
            self.window_at, self.count, self.total_bits = now, 0, 0.0
        self.count += 1
        self.total_bits += bits
        slack = self.bandwidth_bps * scale / (self.mean_bits or bits) - self.lam
        if slack <= 0 or 1.0 / slack > ECS_MAN_MAX_DELAY_S:
            return None
        return 1.0 / slack

    def rate_bps(self, scale: float) -> float:
        """Mean size over the current delay (the bandwidth when the formula would fail)."""
        mean = self.mean_bits or 8e6
        slack = self.bandwidth_bps * scale / mean - self.lam
        return slack * mean if slack > 0 else self.bandwidth_bps * scale


class ManLink(_FixedDurationLink):
    """One direction of an edge-to-edge link on EdgeCloudSim's MAN (`links.man.model:
    ecs_mm1`). Every such link shares the MAN's two ManQueues: a task's input travels on the
    upload one, its result on the download one (told apart by the task's origin)."""

    __slots__ = ("down", "up")

    def __init__(self, engine: Any, src: Any, dst: Any, rtt_s: float, up: ManQueue,
                 down: ManQueue) -> None:
        super().__init__(engine, src, dst, rtt_s, up.bandwidth_bps)
        self.up = up
        self.down = down

    def _duration(self, bits: float, now: float, payload: Any) -> float | None:
        task = payload[0] if isinstance(payload, tuple) and payload else None
        queue = self.up if getattr(task, "origin", None) is self.src else self.down
        return queue.delay(bits, now, self.scale)

    def share_bps(self) -> float:
        return min(self.up.rate_bps(self.scale), self.down.rate_bps(self.scale))


def ecs_man_mean_bits(scenario: Any) -> tuple[float, float] | None:
    """EdgeCloudSim's fixed MAN mean sizes (upload, download) in bits for a scenario with a
    `devices:` block: sum over apps of usage share x mean size, divided by the number of
    apps (as SampleNetworkModel.initialize computes it); None without devices."""
    devices = getattr(scenario, "devices", None)
    if devices is None or not devices.apps:
        return None
    up = down = 0.0
    for app in devices.apps:
        tt = scenario.task_type(app.type)
        up += app.share / 100.0 * tt.input_bytes.expected * 8.0
        down += app.share / 100.0 * tt.output_bytes.expected * 8.0
    n = len(devices.apps)
    return up / n, down / n
