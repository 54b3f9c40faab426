"""Uplink probes: when they are due (core/probing.py) and what a burst teaches a link
estimator (`LinkEstimator.observe_probe`)."""

from __future__ import annotations

import math

import pytest

from edgesched.core.estimators import LinkEstimator
from edgesched.core.model import LinkEstimate
from edgesched.core.probing import ProbeParams, UplinkProbes, degraded

PRIOR = LinkEstimate(rtt_s=0.03, rtt_std_s=0.01, bandwidth_bps=2e7, bandwidth_std_bps=5e6)
COLLAPSED = LinkEstimate(rtt_s=0.4, rtt_std_s=0.1, bandwidth_bps=2e5, bandwidth_std_bps=1e5)


def learned(rtt_s: float, bps: float, *, n: int, jitter: float) -> LinkEstimator:
    """An estimator fed `n` noisy samples of a link (RTT, and 50 kB transfers)."""
    est = LinkEstimator(PRIOR)
    for i in range(n):
        wobble = 1.0 + jitter * math.sin(i)
        est.observe_rtt(rtt_s * wobble, float(i))
        est.observe_transfer(50_000, 8 * 50_000 / bps * wobble, float(i))
    return est


def collapsed_estimator() -> LinkEstimator:
    """An estimator that learned a collapsed uplink: 400 ms, 200 kbit/s."""
    return learned(0.4, 2e5, n=40, jitter=0.3)


def test_a_probe_is_due_only_for_a_degraded_link_left_quiet() -> None:
    probes = UplinkProbes(ProbeParams(interval_s=10.0))
    assert degraded(COLLAPSED, PRIOR, probes.params)
    assert not degraded(PRIOR, PRIOR, probes.params)
    assert probes.due(PRIOR, PRIOR, taught_at=-math.inf, now=100.0) is None  # healthy
    assert probes.due(COLLAPSED, PRIOR, taught_at=95.0, now=100.0) is None  # taught lately
    size = probes.due(COLLAPSED, PRIOR, taught_at=89.0, now=100.0)
    # a round trip's worth at the estimated bandwidth, within the bounds
    assert size == int(2e5 * 0.4 / 8)
    off = UplinkProbes(ProbeParams(interval_s=0.0))
    assert off.due(COLLAPSED, PRIOR, taught_at=-math.inf, now=100.0) is None


def test_probe_payload_is_bounded() -> None:
    params = ProbeParams(min_bytes=8192, max_bytes=65536)
    dead = LinkEstimate(rtt_s=5.0, bandwidth_bps=1e3)
    assert UplinkProbes(params).due(dead, PRIOR, taught_at=-math.inf, now=1.0) == 8192
    # degraded by its RTT, with plenty of bandwidth: the payload stops at max_bytes
    far = LinkEstimate(rtt_s=2.0, bandwidth_bps=1e9)
    assert UplinkProbes(params).due(far, PRIOR, taught_at=-math.inf, now=1.0) == 65536


def test_the_interval_grows_while_degraded_and_starts_over_when_healthy() -> None:
    assert ProbeParams().backoff == 1.5
    probes = UplinkProbes(ProbeParams(interval_s=10.0, max_interval_s=35.0, backoff=2.0))
    assert probes.done(COLLAPSED, PRIOR, now=0.0) is False
    assert probes.interval_s == 20.0
    assert probes.due(COLLAPSED, PRIOR, taught_at=0.0, now=15.0) is None
    assert probes.due(COLLAPSED, PRIOR, taught_at=0.0, now=20.0) is not None
    probes.done(COLLAPSED, PRIOR, now=20.0)
    assert probes.interval_s == 35.0  # capped
    assert probes.done(PRIOR, PRIOR, now=60.0) is True
    assert probes.interval_s == 10.0
    assert probes.probes == 3


def test_a_failed_probe_backs_off() -> None:
    probes = UplinkProbes(ProbeParams(interval_s=10.0))
    probes.failed(now=50.0)
    assert probes.failures == 1
    assert probes.due(COLLAPSED, PRIOR, taught_at=-math.inf, now=64.0) is None  # 15 s
    assert probes.due(COLLAPSED, PRIOR, taught_at=-math.inf, now=65.0) is not None
    # one probe at a time: none is due while that one is under way
    assert probes.due(COLLAPSED, PRIOR, taught_at=-math.inf, now=80.0) is None
    probes.done(COLLAPSED, PRIOR, now=81.0)
    assert probes.due(COLLAPSED, PRIOR, taught_at=-math.inf, now=82.0) is not None


def test_a_probe_of_a_recovered_link_replaces_the_collapse_in_one_burst() -> None:
    est = collapsed_estimator()
    before = est.snapshot(40.0)
    assert before.rtt_s > 0.3 and before.bandwidth_bps < 3e5
    nbytes = 20_000  # sized to the collapsed estimate: quick on the recovered link
    exchange = 0.03 + 8 * nbytes / 2e7
    assert est.observe_probe([0.03, 0.031, 0.029], nbytes, [exchange, exchange], now=41.0)
    after = est.snapshot(41.0)
    assert after.rtt_s == pytest.approx(0.03, rel=0.05)
    # 8 ms of transfer in a 38 ms exchange is under a quarter of it: it counts as a lower
    # bound (a quarter of the exchange), 16.8 Mbit/s, close to the real 20
    assert 1.5e7 < after.bandwidth_bps <= 2e7

    # The same figures as ordinary task exchanges crawl: alpha-sized steps, each clipped.
    crawl = collapsed_estimator()
    for _ in range(5):
        crawl.observe_rtt(0.03, 41.0)
        crawl.observe_transfer(nbytes, 8 * nbytes / 2e7, 41.0)
    assert crawl.snapshot(41.0).bandwidth_bps < 5e6


def test_a_probe_that_agrees_with_the_estimate_is_ordinary_samples() -> None:
    est = learned(0.03, 2e7, n=20, jitter=0.2)
    nbytes = 100_000
    slower = 0.036 + 8 * nbytes / 1.6e7  # 20 % slower all round: within PROBE_SHIFT
    est.observe_probe([0.036] * 3, nbytes, [slower, slower], now=21.0)
    after = est.snapshot(21.0)
    assert 0.03 < after.rtt_s < 0.036  # moved towards it, not restarted at it
    assert 1.6e7 < after.bandwidth_bps < 2e7


@pytest.mark.parametrize("rtts, nbytes, seconds", [
    ([], 10_000, [0.1]),
    ([0.1], 10_000, []),
    ([math.nan], 10_000, [0.1]),
    ([0.1], 10_000, [-1.0]),
    ([0.1], 100, [0.1]),  # too small to measure bandwidth
    ([0.1], 10_000, [math.inf]),
])
def test_a_malformed_probe_is_ignored(rtts: list[float], nbytes: float,
                                      seconds: list[float]) -> None:
    est = collapsed_estimator()
    before = est.snapshot(40.0)
    assert not est.observe_probe(rtts, nbytes, seconds, now=40.0)
    assert est.snapshot(40.0) == before


def test_probe_params_are_validated() -> None:
    with pytest.raises(ValueError):
        ProbeParams(interval_s=90.0, max_interval_s=60.0)
    with pytest.raises(ValueError):
        ProbeParams(min_bytes=0)
    with pytest.raises(ValueError):
        ProbeParams(backoff=0.5)
