"""A collapsed uplink that recovers is noticed, with real processes (issue 20, core/probing.py).

An edge node learns a collapsed cloud link (1.5 s RTT, 100 kbit/s) from its modem's
readings. Without probes that figure would stand until it decays over minutes: every cloud
candidate looks hopeless, no task goes there, and nothing measures the link again. With
`cloud.probe_interval_s` the node probes the real cloud node (`/v1/probe`, bearer token)
once the readings stop, and the figures are the healthy loopback link again.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto
from tests.support.nodes import wait_until

pytestmark = [pytest.mark.e2e]


def cloud_link(node: Any) -> dict[str, float]:
    return dict(node.status()["scheduler"]["links"]["cloud"])


def probes(node: Any, outcome: str) -> float:
    return node.metric("edgesched_cloud_probes_total", outcome=outcome) or 0.0


def test_a_recovered_uplink_is_noticed_by_a_probe(mosquitto: Mosquitto, node_factory: Any,
                                                  tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("probe-secret-0123456789abcdef\n")
    token.chmod(0o600)
    cloud = node_factory("cloud", broker=mosquitto, overrides={
        "role": "cloud", "http": {"token_file": str(token)}})
    edge = node_factory("edge-a", broker=mosquitto, overrides={
        "cloud": {"url": cloud.base_url, "token_file": str(token), "probe_interval_s": 3},
        "devices": {"uplink_device": "modem"}})
    wait_until(lambda: edge.status()["mqtt"]["connected"], 10, what="edge connected")
    assert probes(edge, "healthy") == probes(edge, "degraded") == 0  # a healthy prior: none

    subprocess.run(["mosquitto_pub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-t",
                    "edgesched/device/modem/telemetry", "-m",
                    '{"uplink_bps": 1e5, "rtt_s": 1.5}'], check=True, timeout=10)
    # (a probe is due 3 s after the reading: on a slow machine it may have come and gone
    # before this sees the collapse, and a probe is only ever sent to a degraded link)
    wait_until(lambda: cloud_link(edge)["rtt_s"] > 1.0 or probes(edge, "healthy") >= 1, 10,
               what="the collapse learned")

    # No more readings: a probe is due 3 s later and finds the loopback link healthy.
    wait_until(lambda: probes(edge, "healthy") >= 1, 20, what="a probe that found it healthy")
    link = cloud_link(edge)
    assert link["rtt_s"] < 0.1, link
    assert link["bandwidth_bps"] > 1e6, link
    seen = edge.status()["scheduler"]["uplink_probe"]
    assert seen["degraded"] is False and seen["last"] == "healthy" and seen["probes"] >= 1
    assert probes(edge, "failed") == 0  # the token was accepted
    assert cloud.metric("edgesched_http_unauthorized_total") == 0
    # The cloud node refuses a probe without the token, as it refuses tasks.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(cloud.base_url + "/v1/probe", timeout=5)
    assert refused.value.code == 401

    # A healthy link is not probed again (it is only ever probed while degraded).
    count = probes(edge, "healthy") + probes(edge, "degraded")
    time.sleep(3.0)
    assert probes(edge, "healthy") + probes(edge, "degraded") == count
