"""When to probe a degraded link, and how much to send (docs/cost-model.md, "Probing a
degraded uplink").

A link is learned from the tasks sent over it. Once an uplink has collapsed, its figures
make every candidate behind it look slow, no task goes there, and nothing tells the node
that the link has recovered: it would only drift back to its prior over minutes (the
estimators' staleness decay). A probe tests the link without risking a task: a few round
trips with no payload, then a few exchanges of a payload sized to the link as it is
estimated, fed to `LinkEstimator.observe_probe`.

`UplinkProbes` decides when: only while the link looks degraded against its prior (a
healthy link that is merely unused needs no test), only when tasks have not taught it both
its figures for a while, one probe at a time, and less often each time a probe finds it
still degraded (the interval grows by half, up to `max_interval_s`, a minute): a link that
is just slower than its configured prior costs one small probe a minute, and a recovery is
noticed within a minute at worst. Time is passed in as `now`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgesched.core.estimators import EstimatorBank
from edgesched.core.model import LinkEstimate

PROBE_CHECK_S = 1.0  # how often a node asks `UplinkProbes.due`
PROBE_PINGS = 3  # round trips without payload per probe (their median is the RTT)
PROBE_EXCHANGES = 2  # exchanges of the payload per probe


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeParams:
    """Tuning of uplink probes (`cloud.probe_interval_s`, `cloud.probe_max_bytes`)."""

    interval_s: float = 10.0  # quiet time before the first probe of a degraded link; 0 = off
    max_interval_s: float = 60.0  # the longest the interval grows while the link stays bad
    backoff: float = 1.5  # the interval's growth per probe that finds the link still bad
    min_bytes: int = 8192  # payload bounds (each exchange); above the bandwidth threshold
    max_bytes: int = 262144
    degraded_factor: float = 2.0  # degraded: a reference exchange takes this x the prior's
    reference_bytes: float = 65536.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.interval_s <= self.max_interval_s:
            raise ValueError("probe interval_s must be within 0..max_interval_s")
        if not 0 < self.min_bytes <= self.max_bytes:
            raise ValueError("probe min_bytes must be within 1..max_bytes")
        if not self.backoff >= 1.0:
            raise ValueError("probe backoff must be >= 1")


def exchange_s(link: LinkEstimate, nbytes: float) -> float:
    """Predicted time of one exchange moving `nbytes` over `link`."""
    return link.rtt_s + 8.0 * nbytes / link.bandwidth_bps


def degraded(link: LinkEstimate, prior: LinkEstimate, params: ProbeParams) -> bool:
    """Whether `link` predicts a reference exchange `degraded_factor` x slower than `prior`."""
    ref = params.reference_bytes
    return exchange_s(link, ref) > params.degraded_factor * exchange_s(prior, ref)


class UplinkProbes:
    """When one link is due a probe, and its payload size; one instance per probed link."""

    def __init__(self, params: ProbeParams | None = None) -> None:
        self.params = p = params or ProbeParams()
        self.interval_s = p.interval_s  # grows while probes find the link still degraded
        self._not_before = -float("inf")  # after a failed probe
        self.in_flight = False  # a probe was handed out and has not been reported back yet
        self.probes = 0
        self.failures = 0

    def due(self, link: LinkEstimate, prior: LinkEstimate, taught_at: float,
            now: float) -> int | None:
        """The payload bytes of a probe to send now, or None: probes are off, one is under
        way, the link does not look degraded, it was taught both its RTT and its bandwidth
        within the interval (`taught_at`, the older of the two; small tasks teach only the
        RTT), or a failed probe is being backed off from. A probe handed out must be
        reported back with `done` or `failed`."""
        p = self.params
        if p.interval_s <= 0.0 or self.in_flight:
            return None
        if not degraded(link, prior, p):
            self.interval_s = p.interval_s
            return None
        if now - taught_at < self.interval_s or now < self._not_before:
            return None
        # a round trip's worth at the estimated bandwidth: enough to measure it, and little
        # on a link that is as slow as it is estimated
        size = link.bandwidth_bps * max(link.rtt_s, 0.01) / 8.0
        self.in_flight = True
        return int(min(p.max_bytes, max(p.min_bytes, size)))

    def done(self, link: LinkEstimate, prior: LinkEstimate, now: float) -> bool:
        """A probe was fed to the estimator, which now says `link`; True when the link looks
        healthy again (the interval starts over), False when it is still degraded (the
        interval grows by `backoff`)."""
        self.probes += 1
        self.in_flight = False
        healthy = not degraded(link, prior, self.params)
        if healthy:
            self.interval_s = self.params.interval_s
        else:
            self._grow()
        return healthy

    def failed(self, now: float) -> None:
        """A probe got no answer: wait the interval (grown by `backoff`) before the next one."""
        self.failures += 1
        self.in_flight = False
        self._grow()
        self._not_before = now + self.interval_s

    def _grow(self) -> None:
        p = self.params
        self.interval_s = min(p.max_interval_s, p.backoff * self.interval_s)

    # The same, on a bank's link to `target` (what the daemon and the simulator call).
    def due_on(self, bank: EstimatorBank, target: str, now: float) -> int | None:
        """`due` for the bank's link to `target`: its estimate, prior and `taught_at`."""
        return self.due(bank.link(target, now), bank.link_prior(target),
                        bank.link_taught_at(target), now)

    def learn(self, bank: EstimatorBank, target: str, rtts: Sequence[float], nbytes: float,
              seconds: Sequence[float], now: float) -> bool:
        """A probe's burst fed to the bank (`EstimatorBank.observe_probe`), then `done` on
        what the link's estimate says after it: True when it looks healthy again."""
        bank.observe_probe(target, rtts, nbytes, seconds, now)
        return self.done(bank.link(target, now), bank.link_prior(target), now)

    def degraded_on(self, bank: EstimatorBank, target: str, now: float) -> bool:
        """Whether the bank's link to `target` looks degraded now (probes are due on it)."""
        return degraded(bank.link(target, now), bank.link_prior(target), self.params)
