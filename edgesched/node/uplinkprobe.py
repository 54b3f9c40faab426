"""Probes of a degraded uplink to the cloud tier (core/probing.py decides when).

Once the cloud link's figures say it has collapsed, no task goes to the cloud, so no task
would ever tell the node that it has recovered. Every PROBE_CHECK_S this loop asks the
core's `UplinkProbes` whether a probe is due; a probe is PROBE_PINGS requests without
payload (`GET {cloud.url}/v1/probe`) and PROBE_EXCHANGES requests carrying a payload sized
to the link as estimated (`POST`, at most `cloud.probe_max_bytes`), fed to the estimator as
one burst. Each probe is counted in `edgesched_cloud_probes_total{outcome}`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from edgesched.adapters.cloud import CloudClient
from edgesched.adapters.metrics import Metrics
from edgesched.core.candidates import CLOUD_ID
from edgesched.core.estimators import EstimatorBank
from edgesched.core.probing import (
    PROBE_CHECK_S,
    PROBE_EXCHANGES,
    PROBE_PINGS,
    ProbeParams,
    UplinkProbes,
)
from edgesched.errors import HttpError

log = logging.getLogger("edgesched.uplink")

PROBE_TIMEOUT_S = 10.0  # one probe request; a slower answer is a failed probe


class UplinkProber:
    """Runs `UplinkProbes` for the cloud link of one edge node, over its `CloudClient`."""

    def __init__(self, *, cloud: CloudClient, bank: EstimatorBank, metrics: Metrics,
                 params: ProbeParams) -> None:
        self.cloud = cloud
        self.bank = bank
        self.metrics = metrics
        self.probes = UplinkProbes(params)
        self.last: tuple[str, float] | None = None  # the latest probe's outcome, and when

    def status(self, now: float) -> dict[str, object]:
        """`scheduler.uplink_probe` of /v1/status: is the link degraded (probed) now, the
        current interval, the probes so far, and the latest one's outcome and age."""
        return {
            "degraded": self.probes.degraded_on(self.bank, CLOUD_ID, now),
            "interval_s": self.probes.interval_s if self.probes.params.interval_s > 0 else None,
            "probes": self.probes.probes, "failed": self.probes.failures,
            "last": None if self.last is None else self.last[0],
            "last_age_s": None if self.last is None else round(now - self.last[1], 1),
        }

    async def run(self) -> None:
        """Check every PROBE_CHECK_S, probe when due; until cancelled."""
        if self.probes.params.interval_s <= 0.0:
            return
        while True:
            await asyncio.sleep(PROBE_CHECK_S)
            await self.check(time.monotonic())

    async def check(self, now: float) -> str | None:
        """One check: the probe's outcome (healthy, degraded, failed), None when none was due."""
        size = self.probes.due_on(self.bank, CLOUD_ID, now)
        if size is None:
            return None
        try:
            rtts = [await self.cloud.probe(timeout_s=PROBE_TIMEOUT_S) for _ in range(PROBE_PINGS)]
            payload = os.urandom(size)  # incompressible: a compressing hop cannot shrink it
            seconds = [await self.cloud.probe(payload, timeout_s=PROBE_TIMEOUT_S)
                       for _ in range(PROBE_EXCHANGES)]
        except HttpError as exc:
            self.probes.failed(time.monotonic())
            self.metrics.cloud_probes.labels(outcome="failed").inc()
            # No answer is what a collapsed link does; another answer is a set-up to fix (a
            # cloud node without /v1/probe, a refused token, a payload over its body limit).
            # Probes back off to one a minute, and so do these lines.
            log.log(logging.WARNING if exc.reason == "http_status" else logging.DEBUG,
                    "uplink probe failed: %s", exc)
            self.last = ("failed", time.monotonic())
            return "failed"
        at = time.monotonic()
        healthy = self.probes.learn(self.bank, CLOUD_ID, rtts, size, seconds, at)
        outcome = "healthy" if healthy else "degraded"
        link = self.bank.link(CLOUD_ID, at)
        self.last = (outcome, at)
        self.metrics.cloud_probes.labels(outcome=outcome).inc()
        log_at = logging.INFO if outcome == "healthy" else logging.DEBUG
        log.log(log_at, "uplink probe (%d x %d bytes): the cloud link is %s: RTT %.0f ms, "
                "%.2f Mbit/s", PROBE_EXCHANGES, size, outcome, 1000.0 * link.rtt_s,
                link.bandwidth_bps / 1e6)
        return outcome
