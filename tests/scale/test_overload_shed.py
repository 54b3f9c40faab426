"""Past its capacity a node sheds early and cheaply (issue 19 part 5), real processes.

A burst of local `echo` submissions far faster than one node runs them (a paho MQTT v5 client
publishing QoS 1 as fast as it can, the broker a real mosquitto with its default per-client
limits): every submission gets exactly one reply, none is lost at the broker or in the node,
the ones the node could not take in time are answered `rejected` with reason `overloaded`
(and counted so), the rest `ok`. Before: the broker queued what the node had not read yet
(max_inflight_messages 20 to the node, then max_queued_messages 1000) and dropped the rest
without a word; the node read one packet per loop iteration.

The idle node's footprint is checked on the way: before any cpu-bound task its main process
has not loaded numpy and it has no child process (no pool yet).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.broker import Mosquitto
from tests.support.nodes import node_factory, wait_until

__all__ = ["node_factory"]  # the fixture, for this module
pytestmark = pytest.mark.e2e

BURST = 4000


class Client:
    """paho MQTT v5, TCP_NODELAY, no inflight cap: replies recorded by correlation data."""

    def __init__(self, broker: Mosquitto) -> None:
        self.token = uuid.uuid4().hex[:8]
        self.reply_topic = f"test/{self.token}/reply"
        self.lock = threading.Lock()
        self.replies: dict[bytes, list[dict[str, Any]]] = {}
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"shed-{self.token}", protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(0)  # 0: no limit
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        # Receive Maximum: how many QoS 1 replies the broker may send before our PUBACKs;
        # without it mosquitto sends 20, queues 1000 and drops the rest of a burst
        props = Properties(PacketTypes.CONNECT)
        props.ReceiveMaximum = 65535
        self.client.connect(broker.host, broker.port, keepalive=30, properties=props)
        sock = self.client.socket()
        assert sock is not None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        self.client.subscribe(self.reply_topic, qos=1)
        assert self.subscribed.wait(10), "the test client's subscription was not acknowledged"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        key = msg.properties.CorrelationData  # type: ignore[union-attr]
        with self.lock:
            self.replies.setdefault(key, []).append(json.loads(msg.payload))

    def submit(self, topic: str, body: bytes, n: int) -> list[bytes]:
        keys = []
        for i in range(n):
            key = f"{self.token}-{i}".encode()
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = key
            self.client.publish(topic, body, qos=1, properties=props)
            keys.append(key)
        return keys

    def answered(self, keys: list[bytes]) -> int:
        with self.lock:
            return sum(1 for k in keys if k in self.replies)


def mapped(pid: int, needle: str) -> bool:
    return needle in Path(f"/proc/{pid}/maps").read_text()


def children(pid: int) -> list[str]:
    return [child for task in Path(f"/proc/{pid}/task").glob("*")
            for child in (task / "children").read_text().split()]


def test_a_burst_past_capacity_is_answered_once_each_some_overloaded(
        mosquitto: Mosquitto, node_factory: Any) -> None:
    node = node_factory("shed-1", broker=mosquitto, overrides={
        "telemetry": {"interval_s": 1.0}, "log": {"level": "WARNING"}})
    assert node.proc is not None
    assert not mapped(node.proc.pid, "numpy"), "an idle node's main process loaded numpy"
    assert children(node.proc.pid) == [], "a process pool before any cpu-bound task"

    client = Client(mosquitto)
    try:
        body = json.dumps({"v": 1, "type": "echo", "input": {"x": 1}}).encode()
        began = time.monotonic()
        keys = client.submit(f"edgesched/node/{node.node_id}/submit", body, BURST)
        published_s = time.monotonic() - began
        try:
            wait_until(lambda: client.answered(keys) == len(keys), 25, 0.1,
                       f"every one of {BURST} submissions answered")
        except TimeoutError:
            raise AssertionError(
                f"{client.answered(keys)} of {BURST} answered; node: "
                f"{node.metric('edgesched_tasks_submitted_total')} submitted, dropped "
                f"{node.metric('edgesched_mqtt_messages_dropped_total')}, rejected "
                f"{node.metric('edgesched_tasks_rejected_total')}, replies dropped "
                f"{node.metric('edgesched_replies_dropped_total')}\n"
                + node.log_text()[-2000:]) from None
        time.sleep(0.5)  # a duplicate would show up by now
        with client.lock:
            replies = {k: list(client.replies[k]) for k in keys}
    finally:
        client.close()

    counts = Counter(len(r) for r in replies.values())
    assert counts == {1: BURST}, f"replies per submission: {counts}"
    outcomes = Counter(
        "overloaded" if r[0]["status"] == "rejected" and r[0]["error"].startswith("overloaded")
        else r[0]["status"] for r in replies.values())
    print(f"\n{BURST} published in {published_s:.2f} s: {dict(outcomes)}")
    assert set(outcomes) <= {"ok", "overloaded"}, outcomes
    assert outcomes["overloaded"] > 0 and outcomes["ok"] > 0, outcomes
    assert node.metric("edgesched_tasks_rejected_total", reason="overloaded") == \
        outcomes["overloaded"]
    assert node.metric("edgesched_tasks_submitted_total") == BURST
    assert node.metric("edgesched_mqtt_messages_dropped_total") == 0
