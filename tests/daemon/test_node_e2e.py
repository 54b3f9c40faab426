"""One or two real nodes: device telemetry, rejections, broker restart, metrics, systemd."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto
from tests.support.nodes import REPO, wait_until

pytestmark = pytest.mark.e2e


def pub(broker: Mosquitto, topic: str, payload: str | bytes, *, qos: int = 0) -> None:
    cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", str(qos),
           "-t", topic]
    if isinstance(payload, bytes):
        subprocess.run([*cmd, "-s"], input=payload, check=True, timeout=10)
    else:
        subprocess.run([*cmd, "-m", payload], check=True, timeout=10)


def devices(node) -> dict[str, dict[str, float]]:
    return {d["device_id"]: d["values"] for d in node.status()["devices"]}


def test_device_telemetry_and_rejections(mosquitto: Mosquitto, node_factory) -> None:
    node = node_factory("gw-1", broker=mosquitto, overrides={
        "telemetry": {"max_payload_bytes": 1024, "max_devices": 4},
        "devices": {"mappings": [{"topic": "bms/soc", "device_id": "bms", "name": "battery",
                                  "scale": 0.01}]},
    })
    wait_until(lambda: node.status()["mqtt"]["connected"], 10, what="connected")
    pub(mosquitto, "edgesched/device/cam-1/telemetry", '{"battery": 0.8, "uplink_bps": 2e6}')
    pack = [{"bn": "urn:dev:cam-2:", "bt": time.time(), "n": "battery", "u": "%EL", "v": 55},
            {"n": "rtt_s", "u": "ms", "v": 12}]
    pub(mosquitto, "edgesched/device/cam-2/telemetry", json.dumps(pack))
    pub(mosquitto, "bms/soc", "42")
    wait_until(lambda: {"cam-1", "cam-2", "bms"} <= devices(node).keys(), 5, what="devices")
    seen = devices(node)
    assert seen["cam-1"] == {"battery": 0.8, "uplink_bps": 2e6}
    assert seen["cam-2"] == {"battery": pytest.approx(0.55), "rtt_s": pytest.approx(0.012)}
    assert seen["bms"] == {"battery": pytest.approx(0.42)}
    assert node.metric("edgesched_telemetry_samples_total") == 5

    bad = {"malformed": "{oops", "not_finite": '{"battery": NaN}',
           "oversize": json.dumps({"x": 1.0, "pad": "y" * 2000}),
           "out_of_range": '{"battery": 7}', "schema": '"just a string"'}
    for payload in bad.values():
        pub(mosquitto, "edgesched/device/bad/telemetry", payload)
    pub(mosquitto, "edgesched/device/cam-3/telemetry", '{"battery": 0.3}')  # still ingesting
    wait_until(lambda: "cam-3" in devices(node), 5, what="cam-3 after the bad ones")
    for reason in bad:
        assert node.metric("edgesched_telemetry_rejected_total", reason=reason) == 1, reason
    assert "bad" not in devices(node)
    # the device table is bounded (max_devices: 4): a fifth device is refused and counted
    pub(mosquitto, "edgesched/device/cam-5/telemetry", '{"battery": 0.3}')
    wait_until(lambda: node.metric("edgesched_telemetry_rejected_total",
                                   reason="unknown_device_limit") == 1, 5, what="table full")
    pub(mosquitto, "edgesched/device/cam-1/telemetry", '{"battery": 0.7}')  # known: updated
    wait_until(lambda: devices(node)["cam-1"]["battery"] == 0.7, 5, what="cam-1 updated")
    assert node.status()["devices_total"] == 4
    assert node.running


def test_broker_restart_reconnects_and_resubscribes(mosquitto: Mosquitto, node_factory,
                                                    tmp_path: Path) -> None:
    a = node_factory("a", broker=mosquitto)
    b = node_factory("b", broker=mosquitto)
    for node in (a, b):
        wait_until(lambda node=node: node.neighbour_status().get("b" if node is a else "a")
                   == "online", 10, what="peers online")
    assert a.metric("edgesched_mqtt_reconnects_total") == 0

    mosquitto.stop()
    wait_until(lambda: not a.status()["mqtt"]["connected"], 10, what="a notices broker gone")
    assert a.metric("edgesched_mqtt_connected") == 0
    time.sleep(0.5)
    mosquitto.start()  # same port, empty broker: no retained state, no subscriptions

    for node, peer in ((a, "b"), (b, "a")):
        wait_until(lambda node=node: node.status()["mqtt"]["connected"], 10, what="reconnected")
        wait_until(lambda node=node, peer=peer: node.neighbour_status().get(peer) == "online",
                   5, what=f"{peer} online again")
        assert node.metric("edgesched_mqtt_reconnects_total") == 1
    # subscriptions were renewed: new device telemetry arrives
    pub(mosquitto, "edgesched/device/after/telemetry", '{"rtt_s": 0.05}')
    wait_until(lambda: "after" in devices(a), 5, what="device after broker restart")
    # the retained state was re-announced on reconnect
    out = subprocess.run(["mosquitto_sub", "-p", str(mosquitto.port), "-t",
                          "edgesched/node/a/state", "-C", "1", "-W", "5"],
                         capture_output=True, check=True, timeout=10)
    assert json.loads(out.stdout)["status"] == "online"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_metrics_pass_promtool(mosquitto: Mosquitto, node_factory) -> None:
    node = node_factory("m", broker=mosquitto)
    pub(mosquitto, "edgesched/device/x/telemetry", '{"battery": 0.5}')
    pub(mosquitto, "edgesched/device/x/telemetry", "{bad")
    wait_until(lambda: node.metric("edgesched_telemetry_rejected_total", reason="malformed"),
               5, what="a rejection counted")
    text = node.metrics_text()
    assert "edgesched_mqtt_connected 1.0" in text
    result = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


def test_systemd_notify_ready_watchdog_stopping(mosquitto: Mosquitto, node_factory) -> None:
    # a short path: AF_UNIX addresses are limited to 108 bytes
    sockdir = tempfile.mkdtemp(prefix="es-", dir="/tmp")
    path = os.path.join(sockdir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        sock.settimeout(0.2)
        node = node_factory("sd", broker=mosquitto,
                            env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        got: list[str] = []
        deadline = time.monotonic() + 10
        def pings_after_ready() -> int:
            return got[got.index("READY=1"):].count("WATCHDOG=1") if "READY=1" in got else 0

        while time.monotonic() < deadline and pings_after_ready() < 2:
            with contextlib.suppress(TimeoutError):
                got.append(sock.recv(4096).decode().split("\n")[0])
        t0 = time.monotonic()
        assert node.terminate() == 0
        assert time.monotonic() - t0 < 10
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "STOPPING=1" not in got:
            with contextlib.suppress(TimeoutError):
                got.append(sock.recv(4096).decode().split("\n")[0])
    finally:
        sock.close()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert "READY=1" in got and "STOPPING=1" in got, got
    ready, stopping = got.index("READY=1"), got.index("STOPPING=1")
    assert ready < stopping
    assert got[ready:stopping].count("WATCHDOG=1") >= 2, got  # periodic, from the loop
    assert set(got) <= {"READY=1", "WATCHDOG=1", "STOPPING=1"}


def test_cloud_role_starts_without_a_broker(node_factory) -> None:
    from tests.support.broker import free_port

    dead = free_port()
    node = node_factory("cloud-1", overrides={
        "role": "cloud", "mqtt": {"port": dead, "reconnect_initial_s": 0.1,
                                  "reconnect_max_s": 0.5}})
    doc = node.status()
    assert doc["role"] == "cloud" and doc["mqtt"]["connected"] is False
    assert doc["tasks"]["running"] == 0

    # the CLI clients of the HTTP API
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgesched", *args], capture_output=True,
                              text=True, timeout=30, cwd=REPO)

    ok = cli("healthcheck", "--url", node.base_url)
    assert (ok.returncode, ok.stdout.strip()) == (0, "ok")
    status = cli("status", "--url", node.base_url)
    assert status.returncode == 0 and json.loads(status.stdout)["node_id"] == "cloud-1"
    t0 = time.monotonic()
    assert node.terminate(sig=signal.SIGINT) == 0  # Ctrl-C drains like SIGTERM
    assert time.monotonic() - t0 < 10
    down = cli("healthcheck", "--url", node.base_url, "--timeout", "2")
    assert down.returncode == 1 and "unhealthy" in down.stderr
