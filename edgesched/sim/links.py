"""Network links of the simulator: RTT plus bandwidth shared fairly by concurrent transfers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

EPS_BITS = 1e-6


class Transfer:
    """One message crossing a link; `done(transfer)` runs when its last bit has been sent."""

    __slots__ = ("bits", "done", "payload", "remaining", "started")

    def __init__(self, bits: float, done: Callable[[Transfer], None], payload: Any,
                 now: float) -> None:
        self.bits = bits
        self.remaining = bits
        self.done = done
        self.payload = payload
        self.started = now


class Link:
    """One direction of a link, processor-sharing its bandwidth among active transfers.

    Each of k concurrent transfers gets bandwidth/k (how TCP flows share a bottleneck, to a
    first approximation). The link keeps one pending completion event in the engine's heap;
    a `version` number makes events scheduled before a change harmless.
    """

    __slots__ = ("active", "bandwidth_bps", "dst", "engine", "last", "name", "rtt_s", "src",
                 "version")

    def __init__(self, engine: Any, src: Any, dst: Any, rtt_s: float,
                 bandwidth_bps: float) -> None:
        self.engine = engine
        self.src = src  # SimNode: pays tx energy while the link is busy (unless the cloud)
        self.dst = dst  # SimNode: pays rx energy
        self.name = f"{src.id}->{dst.id}"
        self.rtt_s = rtt_s
        self.bandwidth_bps = bandwidth_bps
        self.active: list[Transfer] = []
        self.last = 0.0
        self.version = 0

    def _advance(self, now: float) -> None:
        if self.active and now > self.last:
            dt = now - self.last
            sent = dt * self.bandwidth_bps / len(self.active)
            for tr in self.active:
                tr.remaining -= sent
            # One radio, busy while anything is being sent: energy is per busy second, not
            # per transfer (concurrent transfers share the airtime).
            if not self.src.is_cloud:
                self.src.energy_j += self.src.power.tx_w * dt
            if not self.dst.is_cloud:
                self.dst.energy_j += self.dst.power.rx_w * dt
        self.last = now

    def _reschedule(self, now: float) -> None:
        self.version += 1
        if self.active:
            least = min(tr.remaining for tr in self.active)
            finish = now + max(0.0, least) * len(self.active) / self.bandwidth_bps
            self.engine.schedule(finish, self._on_event, self.version)

    def start(self, bits: float, done: Callable[[Transfer], None], payload: Any) -> Transfer:
        now = self.engine.now
        tr = Transfer(bits, done, payload, now)
        if bits <= EPS_BITS:
            self.engine.schedule(now, done, tr)
            return tr
        self._advance(now)
        self.active.append(tr)
        self._reschedule(now)
        return tr

    def _on_event(self, version: int) -> None:
        if version != self.version:
            return  # superseded by a later change of this link
        now = self.engine.now
        self._advance(now)
        finished = [tr for tr in self.active if tr.remaining <= EPS_BITS * max(1.0, tr.bits)]
        if not finished:  # rounding: finish the closest one
            finished = [min(self.active, key=lambda tr: tr.remaining)]
        ids = {id(tr) for tr in finished}
        self.active = [tr for tr in self.active if id(tr) not in ids]
        self._reschedule(now)
        for tr in finished:
            tr.done(tr)

    def cancel(self, tr: Transfer) -> None:
        """Abort a transfer (the sender gave up, e.g. an HTTP request that timed out)."""
        if tr in self.active:
            now = self.engine.now
            self._advance(now)
            self.active.remove(tr)
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
        return self.bandwidth_bps / (len(self.active) + 1)
