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
