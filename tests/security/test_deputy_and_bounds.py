"""Issue #14 parts 4-6 replayed against real nodes on a real mosquitto: the node as a confused
deputy (task ids reused across clients, replies steered onto other topics), memory and CPU
that an anonymous client could make grow without bound, and command handlers that inherited
the daemon's secrets or hung on large output.

Each test failed before the fix (see the figures in the brief of issue #14); each now checks
the refusal is counted and that honest work still gets its one correct reply.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.broker import Mosquitto
from tests.support.nodes import NodeProcess, wait_until

pytestmark = pytest.mark.e2e

P = "edgesched"
MiB = 1 << 20


class Peer:
    """A raw MQTT v5 client (paho): records what it hears, publishes whatever it likes."""

    def __init__(self, broker: Mosquitto, subscriptions: tuple[str, ...] = ()) -> None:
        self.heard: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"peer-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        # like the node's own client: small request/reply messages must not wait for ACKs
        self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        for flt in subscriptions:
            self.subscribe(flt)

    def subscribe(self, flt: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(flt, qos=1)
        assert done.wait(5), f"no SUBACK for {flt}"

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            self.heard.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def on(self, topic: str) -> list[bytes]:
        with self._cond:
            return [p for t, p in self.heard if t == topic]

    def wait_for(self, topic: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(got := [p for t, p in self.heard if t == topic]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(got)} of {count} messages on {topic}")
                self._cond.wait(left)
            return got

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1,
                response_topic: str | None = None, wait: bool = True) -> None:
        props = None
        if response_topic is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            props.CorrelationData = b"corr"
        info = self.client.publish(topic, payload, qos=qos, properties=props)
        if wait:
            info.wait_for_publish(timeout=10)

    def request(self, node: str, doc: dict[str, Any], reply_to: str,
                correlation_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """Submit (reply_to in the body) and wait for the next reply on `reply_to`."""
        before = len(self.on(reply_to))
        body = {**doc, "reply_to": reply_to, "correlation_id": correlation_id}
        self.publish(f"{P}/node/{node}/submit", json.dumps(body))
        return json.loads(self.wait_for(reply_to, before + 1, timeout)[before])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def rss_mb(node: NodeProcess) -> float:
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def counted(node: NodeProcess, name: str, reason: str) -> float:
    return node.metric(name, reason=reason) or 0.0


def post(url: str, doc: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


@pytest.fixture
def peer(mosquitto: Mosquitto) -> Any:
    client = Peer(mosquitto)
    try:
        yield client
    finally:
        client.close()


# -- 4. the confused deputy -----------------------------------------------------------------


def test_a_reused_task_id_never_returns_another_clients_result(
        mosquitto: Mosquitto, node_factory: Any, peer: Peer) -> None:
    node = node_factory("gw-1", broker=mosquitto)
    alice, bob = "clients/alice/replies", "clients/bob/replies"
    peer.subscribe("clients/#")
    secret = {"v": 1, "id": "job-1", "type": "echo", "input": {"secret": "alice's"}}
    first = peer.request("gw-1", secret, alice, "a-1")
    assert (first["status"], first["result"]) == ("ok", {"secret": "alice's"})

    # Bob guesses (or sees) the id and submits his own task under it.
    theirs = peer.request("gw-1", {**secret, "input": {"mine": "bob's"}}, bob, "b-1")
    assert theirs["status"] == "ok"
    assert theirs["result"] == {"mine": "bob's"}, "bob got alice's result"
    assert theirs["correlation_id"] == "b-1"

    # Alice's own redelivery (same route, same id) still gets her first outcome, not a rerun.
    again = peer.request("gw-1", secret, alice, "a-1")
    assert again == first
    assert node.metric("edgesched_tasks_completed_total", placement="local",
                       status="ok") == 2  # alice once, bob once
    assert not peer.on("clients/alice/replies")[2:] and len(peer.on(bob)) == 1


def test_replies_never_go_to_forbidden_topics(mosquitto: Mosquitto, node_factory: Any,
                                              peer: Peer) -> None:
    node = node_factory("gw-1", broker=mosquitto,
                        overrides={"intake": {"reply_topics": ["devices/+/replies/#"]}})
    plc = "factory/plc/cmd"
    peer.subscribe(plc)
    peer.subscribe("devices/#")
    doc = {"v": 1, "type": "echo", "input": {"valve": "open"}}
    peer.publish(f"{P}/node/gw-1/submit", json.dumps({**doc, "reply_to": plc}))
    peer.publish(f"{P}/node/gw-1/submit", json.dumps(doc), response_topic=plc)  # v5 route
    peer.publish(f"{P}/node/gw-1/submit", b"{not json", response_topic=plc)  # a rejection
    # A permitted route still works, and proves the node has read everything before it.
    ok = peer.request("gw-1", doc, "devices/d1/replies/7", "c-7")
    assert (ok["status"], ok["result"]) == ("ok", {"valve": "open"})
    wait_until(lambda: counted(node, "edgesched_tasks_rejected_total", "reply_topic") == 2, 5,
               what="two refused reply topics counted")
    time.sleep(1.0)  # a bounded extra wait: nothing may arrive on the PLC's topic at all
    assert peer.on(plc) == []
    assert counted(node, "edgesched_tasks_rejected_total", "malformed") == 1
    assert node.metric("edgesched_tasks_completed_total", placement="local", status="ok") == 1


def test_node_protocol_and_dollar_topics_are_refused_by_default(
        mosquitto: Mosquitto, node_factory: Any, peer: Peer) -> None:
    node = node_factory("gw-1", broker=mosquitto)
    victim = f"{P}/node/gw-2/offload-reply"
    peer.subscribe(victim)
    peer.subscribe("apps/#")
    doc = {"v": 1, "type": "echo", "input": 1}
    for topic in (victim, f"{P}/node/gw-2/state", "$SYS/broker/hijack", f"{P}/node"):
        peer.publish(f"{P}/node/gw-1/submit", json.dumps({**doc, "reply_to": topic}))
    ok = peer.request("gw-1", doc, "apps/a/replies", "x")  # the default allows the rest
    assert ok["status"] == "ok"
    wait_until(lambda: counted(node, "edgesched_tasks_rejected_total", "reply_topic") == 4, 5,
               what="four refused reply topics counted")
    time.sleep(0.5)
    assert peer.on(victim) == []
    assert "gw-2" not in node.neighbour_status()


# -- 5. bounded by bytes --------------------------------------------------------------------


def test_forty_one_mib_echo_tasks_do_not_grow_the_daemon(
        mosquitto: Mosquitto, node_factory: Any, peer: Peer) -> None:
    limit = 4 * MiB
    node = node_factory("gw-1", broker=mosquitto, overrides={
        "mqtt": {"max_payload_bytes": limit}, "http": {"max_body_bytes": limit},
        "executor": {"max_input_bytes": limit}})
    # ~1 MiB of JSON that is ~25 MB as Python objects: what a count-bounded cache kept 10,000 of
    big = [{}] * (MiB // 3)
    peer.subscribe("clients/#")
    warm = peer.request("gw-1", {"v": 1, "type": "echo", "input": big}, "clients/m/0", "w",
                        timeout=60)
    assert warm["status"] == "ok"
    before = rss_mb(node)
    for i in range(40):
        reply = peer.request("gw-1", {"v": 1, "id": f"big-{i}", "type": "echo", "input": big},
                             f"clients/m/{i}", f"c{i}", timeout=60)
        assert reply["status"] == "ok" and len(reply["result"]) == len(big), reply.get("error")
    after = rss_mb(node)
    print(f"\n40 x 1 MiB echo: RSS {before:.0f} MB -> {after:.0f} MB (+{after - before:.0f})")
    assert after - before <= 150, f"RSS grew by {after - before:.0f} MB"
    # the newest outcomes are still remembered: a redelivery is answered, not rerun
    again = peer.request("gw-1", {"v": 1, "id": "big-39", "type": "echo", "input": big},
                         "clients/m/39", "c39", timeout=60)
    assert again["status"] == "ok"
    assert node.metric("edgesched_tasks_completed_total", placement="local",
                       status="ok") == 41


def flood_long_device_ids(node: NodeProcess, peer: Peer, count: int = 2000) -> None:
    """`count` device messages with 30 kB ids in their topics, in batches the node keeps up
    with (what is measured is what it keeps, not a backlog in its incoming queue)."""
    start = counted(node, "edgesched_telemetry_rejected_total", "bad_id")
    for batch in range(count // 200):
        for i in range(200):
            device = f"{batch:02d}{i:03d}" + "x" * 30_000
            peer.publish(f"{P}/device/{device}/telemetry", '{"battery": 0.5}', qos=0,
                         wait=False)
        wait_until(lambda n=start + 200 * (batch + 1): counted(
            node, "edgesched_telemetry_rejected_total", "bad_id") == n, 30,
            what="bad device ids counted")


def test_long_device_ids_in_topics_are_rejected_and_counted(
        mosquitto: Mosquitto, node_factory: Any, peer: Peer) -> None:
    node = node_factory("gw-1", broker=mosquitto)
    wait_until(lambda: node.status()["mqtt"]["connected"], 10, what="connected")
    peer.publish(f"{P}/device/cam-1/telemetry", '{"battery": 0.5}')
    wait_until(lambda: node.status()["devices_total"] == 1, 5, what="an honest device")
    before = rss_mb(node)
    flood_long_device_ids(node, peer)
    for odd in ("bad.id", "x" * 65, "caf\u00e9"):  # not [A-Za-z0-9_-]{1,64}
        peer.publish(f"{P}/device/{odd}/telemetry", '{"battery": 0.5}')
    peer.publish(f"{P}/device/cam-2/telemetry", '{"battery": 0.4}')
    wait_until(lambda: node.status()["devices_total"] == 2, 10, what="cam-2 after the flood")
    assert counted(node, "edgesched_telemetry_rejected_total", "bad_id") == 2003
    assert {d["device_id"] for d in node.status()["devices"]} == {"cam-1", "cam-2"}
    print(f"\n2,000 x 30 kB device ids: RSS {before:.0f} MB -> {rss_mb(node):.0f} MB")


def test_long_device_ids_leave_no_memory_behind(
        mosquitto: Mosquitto, node_factory: Any, peer: Peer) -> None:
    node = node_factory("gw-1", broker=mosquitto)
    wait_until(lambda: node.status()["mqtt"]["connected"], 10, what="connected")
    flood_long_device_ids(node, peer, 200)  # warm up
    before = rss_mb(node)
    flood_long_device_ids(node, peer)
    after = rss_mb(node)
    print(f"\n2,000 x 30 kB device ids: RSS {before:.0f} MB -> {after:.0f} MB")
    assert after - before < 20, f"RSS grew by {after - before:.0f} MB"


def test_node_topics_with_invalid_ids_are_refused(
        mosquitto: Mosquitto, node_factory: Any, peer: Peer) -> None:
    node = node_factory("gw-1", broker=mosquitto)
    wait_until(lambda: node.status()["mqtt"]["connected"], 10, what="connected")
    state = {"v": 1, "node_id": "", "status": "online", "role": "edge",
             "incarnation": int(time.time() * 1000), "ts": time.time(), "task_types": ["echo"],
             "slots": 8}
    peer.publish(f"{P}/node//state", json.dumps(state))
    peer.publish(f"{P}/node/{'n' * 65}/telemetry", '{"v": 1}')
    wait_until(lambda: counted(node, "edgesched_telemetry_rejected_total", "bad_id") == 2, 5,
               what="both refused as bad_id")
    assert node.status()["neighbours"] == []


def test_fake_neighbours_are_bounded_and_decisions_score_a_bounded_few(
        mosquitto: Mosquitto, node_factory: Any, peer: Peer) -> None:
    node = node_factory("gw-1", broker=mosquitto)  # telemetry.max_neighbours: 256
    peer.subscribe("clients/#")

    def echo_latencies(n: int) -> list[float]:
        """Round trips (client -> broker -> node -> broker -> client) of `n` echo tasks."""
        out = []
        for i in range(n):
            started = time.perf_counter()
            reply = peer.request("gw-1", {"v": 1, "type": "echo", "input": i},
                                 "clients/lat", str(i))
            out.append(time.perf_counter() - started)
            assert reply["status"] == "ok" and reply["executed_by"] == "gw-1", reply
        return out

    echo_latencies(10)  # warm up
    base = statistics.median(echo_latencies(50))
    incarnation = int(time.time() * 1000)
    for i in range(4000):
        doc = {"v": 1, "node_id": f"fake-{i}", "status": "online", "role": "edge",
               "incarnation": incarnation, "ts": time.time(),
               "task_types": ["echo", "hash", "sleep", "matmul"], "slots": 64, "speed": 1.0}
        peer.publish(f"{P}/node/fake-{i}/state", json.dumps(doc), qos=0, wait=False)
    wait_until(lambda: counted(node, "edgesched_telemetry_rejected_total",
                               "neighbour_limit") >= 1000, 30, what="refusals counted")
    known = len(node.status()["neighbours"])
    flooded = echo_latencies(50)
    p50, p90 = statistics.median(flooded), sorted(flooded)[44]
    refused = counted(node, "edgesched_telemetry_rejected_total", "neighbour_limit")
    print(f"\nneighbours {known}, refused {refused:.0f}; echo p50 {base * 1e3:.2f} ms before, "
          f"{p50 * 1e3:.2f} ms (p90 {p90 * 1e3:.2f} ms) with 4,000 fake neighbours")
    assert known <= 256
    # What keeps decisions fast with a full table: each one scores at most
    # policy.max_candidates (4) neighbours, whatever the table holds (timings are printed
    # above, not asserted: they measure the machine as much as the node).
    decisions = node.status()["scheduler"]["decisions"]
    assert decisions
    for d in decisions:
        neighbours = [c for c in d["candidates"] if c.get("placement") == "neighbour"]
        assert len(neighbours) <= 4, (len(neighbours), d["id"])


# -- 6. command handlers --------------------------------------------------------------------

ENV_DUMP = "import json, os, sys; sys.stdin.read(); print(json.dumps(dict(os.environ)))"


def _printer(size: int) -> list[str]:
    code = (f"import sys; sys.stdin.read(); sys.stdout.write('\"' + 'x' * {size} + '\"')")
    return [sys.executable, "-c", code]


def test_command_handlers_get_a_clean_environment_and_any_output_size(
        mosquitto: Mosquitto, node_factory: Any, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "cloud_token").write_text("s3cr3t-token\n")
    local = {"handler": "command", "offload": "local", "timeout_s": 30}
    node = node_factory("gw-1", broker=mosquitto, overrides={"task_types": {
        "envdump": {**local, "command": [sys.executable, "-c", ENV_DUMP],
                    "env": {"HANDLER_MODE": "test"}},
        "print1m": {**local, "command": _printer(MiB)},
        "print17m": {**local, "command": _printer(17 * MiB)},
    }}, env={"CREDENTIALS_DIRECTORY": str(creds), "EDGESCHED_LOG__LEVEL": "INFO",
             "NOTIFY_SOCKET": "/nonexistent/notify"})
    url = node.base_url + "/v1/tasks"

    reply = post(url, {"type": "envdump", "input": None})
    assert reply["status"] == "ok", reply
    env = reply["result"]
    assert "CREDENTIALS_DIRECTORY" not in env and "NOTIFY_SOCKET" not in env
    assert not [k for k in env if k.startswith("EDGESCHED_")], sorted(env)
    assert env["HANDLER_MODE"] == "test"
    assert "PATH" in env and set(env) <= {"PATH", "LANG", "HANDLER_MODE", "LC_CTYPE"}, env
    assert "s3cr3t" not in json.dumps(env)

    started = time.monotonic()
    reply = post(url, {"type": "print1m", "input": None})
    took = time.monotonic() - started
    assert reply["status"] == "ok", reply.get("error")
    assert len(reply["result"]) == MiB
    assert took < 10, f"1 MB of output took {took:.1f}s"

    reply = post(url, {"type": "print17m", "input": None})
    assert reply["status"] == "failed"
    assert f"more than {16 * MiB} bytes" in reply["error"], reply["error"]
    assert node.running
