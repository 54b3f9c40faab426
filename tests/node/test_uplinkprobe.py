"""The daemon's uplink prober against a real aiohttp server standing in for the cloud tier's
`/v1/probe` (the whole path, with a real cloud node, is tests/e2e/test_uplink_probe.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from edgesched.adapters.cloud import CloudClient
from edgesched.adapters.metrics import Metrics
from edgesched.config import CloudSettings
from edgesched.core.candidates import CLOUD_ID
from edgesched.core.estimators import EstimatorBank
from edgesched.core.probing import PROBE_EXCHANGES, PROBE_PINGS, ProbeParams
from edgesched.node.pipeline import CLOUD_LINK_PRIOR
from edgesched.node.uplinkprobe import UplinkProber
from tests.support.httpserver import serving


class ProbeServer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []  # (method, body bytes)
        self.status = 204

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.method, len(body)))
        return web.Response(status=self.status)


@pytest.fixture
async def cloud() -> AsyncIterator[tuple[ProbeServer, str]]:
    srv = ProbeServer()
    app = web.Application(client_max_size=1 << 20)
    app.router.add_get("/v1/probe", srv.handle)
    app.router.add_post("/v1/probe", srv.handle)
    async with serving(app) as url:
        yield srv, url


def collapsed_bank(now: float) -> EstimatorBank:
    """A bank that learned a collapsed uplink 20 s ago (a modem's reading, say)."""
    bank = EstimatorBank(link_priors={CLOUD_ID: CLOUD_LINK_PRIOR})
    bank.observe_rtt(CLOUD_ID, 1.5, now - 20.0)
    bank.observe_bandwidth(CLOUD_ID, 1e5, now - 20.0)
    return bank


def probes(metrics: Metrics, outcome: str) -> float:
    value = metrics.registry.get_sample_value("edgesched_cloud_probes_total",
                                              {"outcome": outcome})
    return value or 0.0


async def prober(url: str, bank: EstimatorBank, **params: Any) -> tuple[UplinkProber, Metrics,
                                                                       CloudClient]:
    metrics = Metrics(CollectorRegistry())
    client = await CloudClient(CloudSettings(url=url)).__aenter__()
    return UplinkProber(cloud=client, bank=bank, metrics=metrics,
                        params=ProbeParams(**params)), metrics, client


async def test_a_degraded_uplink_is_probed_and_found_healthy(
        cloud: tuple[ProbeServer, str]) -> None:
    srv, url = cloud
    now = time.monotonic()
    bank = collapsed_bank(now)
    up, metrics, client = await prober(url, bank)
    try:
        assert await up.check(now) == "healthy"
    finally:
        await client.__aexit__(None, None, None)
    gets = [n for method, n in srv.requests if method == "GET"]
    posts = [n for method, n in srv.requests if method == "POST"]
    assert gets == [0] * PROBE_PINGS
    # a round trip's worth at the collapsed estimate: 100 kbit/s x 1.5 s = 18.75 kB
    assert len(posts) == PROBE_EXCHANGES and all(18_000 < n < 19_500 for n in posts), posts
    link = bank.link(CLOUD_ID, time.monotonic())
    assert link.rtt_s < 0.1 and link.bandwidth_bps > 1e6
    assert probes(metrics, "healthy") == 1


async def test_a_healthy_uplink_is_not_probed(cloud: tuple[ProbeServer, str]) -> None:
    srv, url = cloud
    bank = EstimatorBank(link_priors={CLOUD_ID: CLOUD_LINK_PRIOR})
    up, metrics, client = await prober(url, bank)
    try:
        assert await up.check(time.monotonic()) is None
    finally:
        await client.__aexit__(None, None, None)
    assert srv.requests == []
    assert probes(metrics, "healthy") + probes(metrics, "degraded") == 0


async def test_a_probe_without_a_204_fails_and_backs_off(
        cloud: tuple[ProbeServer, str]) -> None:
    srv, url = cloud
    srv.status = 404  # a cloud node of a version without /v1/probe
    now = time.monotonic()
    bank = collapsed_bank(now)
    before = bank.link(CLOUD_ID, now)
    up, metrics, client = await prober(url, bank, interval_s=5.0)
    try:
        assert await up.check(now) == "failed"
        assert len(srv.requests) == 1  # the first refusal ends the probe
        assert await up.check(now + 5.0) is None  # the interval grew by half: 7.5 s
        assert await up.check(now + 10.5) == "failed"
    finally:
        await client.__aexit__(None, None, None)
    assert probes(metrics, "failed") == 2
    assert bank.link(CLOUD_ID, now) == before  # nothing learned from a failure


async def test_the_loop_stops_when_cancelled(cloud: tuple[ProbeServer, str]) -> None:
    _, url = cloud
    up, _, client = await prober(url, collapsed_bank(time.monotonic()))
    task = asyncio.create_task(up.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.__aexit__(None, None, None)
