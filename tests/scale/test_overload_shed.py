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
# submissions per second, about twice what one node runs on this 2-core box: ~4,000 local
# echo tasks/s since issue 19's capacity work (at the 2,500/s of before, a quiet run took
# all 3,800 in time and nothing was shed)
PACE = 8000


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

    def submit(self, topic: str, doc: dict[str, Any], n: int, *, repeat_every: int,
               repeat_after: int, pace: float = PACE) -> tuple[list[bytes], list[bytes]]:
        """`n` submissions of `doc`; every `repeat_every`-th one has an id and is sent again
        `repeat_after` submissions later, with the same correlation (as a broker redelivers
        it) and input `copy` 1, then 2; `pace` submissions a second. Returns the keys and the
        keys of those sent twice."""
        keys, twice = [], []
        again: dict[int, tuple[bytes, bytes]] = {}
        start = time.monotonic()
        for i in range(n):
            if i % 25 == 0:  # paced: a stream past capacity more than one burst
                time.sleep(max(0.0, start + i / pace - time.monotonic()))
            key = f"{self.token}-{i}".encode()
            if i % repeat_every == 0:
                first = dict(doc, id=f"t-{i}", input={"copy": 1})
                self._publish(topic, key, json.dumps(first).encode())
                again[i + repeat_after] = (key, json.dumps(dict(first, input={"copy": 2}))
                                           .encode())
                twice.append(key)
            else:
                self._publish(topic, key, json.dumps(doc).encode())
            keys.append(key)
            if i in again:
                self._publish(topic, *again.pop(i))
        for key, body in again.values():
            self._publish(topic, key, body)
        return keys, twice

    def _publish(self, topic: str, key: bytes, body: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = key
        self.client.publish(topic, body, qos=1, properties=props)

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
    # A low threshold on one slot: the burst must overload the node on a fast, quiet machine
    # too (with the defaults, 0.1 s and two slots, a quiet run once took all 3,800 in time).
    node = node_factory("shed-1", broker=mosquitto, overrides={
        "telemetry": {"interval_s": 1.0}, "log": {"level": "WARNING"},
        "intake": {"shed_after_s": 0.005}, "executor": {"slots": 1}})
    assert node.proc is not None
    assert not mapped(node.proc.pid, "numpy"), "an idle node's main process loaded numpy"
    assert children(node.proc.pid) == [], "a process pool before any cpu-bound task"

    client = Client(mosquitto)
    try:
        doc = {"v": 1, "type": "echo", "input": {"x": 1}}
        began = time.monotonic()
        keys, twice = client.submit(f"edgesched/node/{node.node_id}/submit", doc, BURST,
                                    repeat_every=20, repeat_after=30)
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
        wait_until(lambda: all(len(client.replies[k]) == 2 for k in twice), 10, 0.1,
                   "both copies of each repeated submission answered")
        time.sleep(0.5)  # a third reply would show up by now
        with client.lock:
            replies = {k: list(client.replies[k]) for k in keys}
    finally:
        client.close()

    def overloaded(reply: dict[str, Any]) -> bool:
        return reply["status"] == "rejected" and reply["error"].startswith("overloaded")

    shed = sum(overloaded(r) for answers in replies.values() for r in answers)
    # A repeated id on the same reply route is never run twice, and once its first copy is
    # taken the second is not shed: it gets the first one's reply again (result copy 1). A
    # first copy that was shed was not run, so the second may run (result copy 2).
    first_taken = 0
    for key in twice:
        answers = replies.pop(key)
        if any(r["status"] == "ok" and r["result"] == {"copy": 1} for r in answers):
            first_taken += 1
            assert answers[0] == answers[1], answers
    assert first_taken > 0
    counts = Counter(len(r) for r in replies.values())
    assert counts == {1: BURST - len(twice)}, f"replies per submission: {counts}"
    outcomes = Counter("overloaded" if overloaded(r[0]) else r[0]["status"]
                       for r in replies.values())
    print(f"\n{BURST} published in {published_s:.2f} s: {dict(outcomes)}")
    assert set(outcomes) <= {"ok", "overloaded"}, outcomes
    assert outcomes["overloaded"] > 0 and outcomes["ok"] > 0, outcomes
    assert node.metric("edgesched_tasks_rejected_total", reason="overloaded") == shed
    assert node.metric("edgesched_tasks_submitted_total") == BURST + len(twice)
    for reason in ("incoming_queue_full", "outgoing_queue_full"):  # (stale telemetry may be
        # superseded under load: that one is meant to be dropped)
        assert node.metric("edgesched_mqtt_messages_dropped_total", reason=reason) == 0, reason


def test_a_full_submit_queue_answers_overloaded_instead_of_dropping(
        mosquitto: Mosquitto, node_factory: Any) -> None:
    """The node reads faster than its intake takes submissions: past `mqtt.incoming_queue`
    waiting ones, each further submission is answered `overloaded` from the read path (it
    was dropped without a reply, counted, at 2x a fast node's capacity: 21,744 of 240,000 in
    bench_capacity). Shedding by waiting time is off here, so only the full queue sheds."""
    node = node_factory("full-1", broker=mosquitto, overrides={
        "telemetry": {"interval_s": 1.0}, "log": {"level": "WARNING"},
        "mqtt": {"incoming_queue": 200}, "intake": {"shed_after_s": 0},
        "executor": {"slots": 1}})
    client = Client(mosquitto)
    burst = 1500
    try:
        keys, twice = client.submit(f"edgesched/node/{node.node_id}/submit",
                                    {"v": 1, "type": "echo", "input": {"x": 1}}, burst,
                                    repeat_every=burst * 10, repeat_after=1, pace=1e9)
        try:
            wait_until(lambda: client.answered(keys) == len(keys), 25, 0.1,
                       f"every one of {burst} submissions answered")
        except TimeoutError:
            dropped = node.metric("edgesched_mqtt_messages_dropped_total",
                                  reason="incoming_queue_full")
            raise AssertionError(
                f"{client.answered(keys)} of {burst} answered; node: dropped {dropped}"
                f", rejected {node.metric('edgesched_tasks_rejected_total', reason='overloaded')}"
                f", replies dropped {node.metric('edgesched_replies_dropped_total')}\n"
                + node.log_text()[-2000:]) from None
        time.sleep(0.5)  # a second reply would show up by now
        with client.lock:
            replies = {k: list(client.replies[k]) for k in keys if k not in twice}
    finally:
        client.close()
    assert Counter(len(r) for r in replies.values()) == {1: burst - len(twice)}
    full = [r[0] for r in replies.values() if r[0]["status"] == "rejected"]
    assert full and all("queue of submissions is full" in r["error"] for r in full), full[:3]
    assert any(r[0]["status"] == "ok" for r in replies.values())
    assert node.metric("edgesched_mqtt_messages_dropped_total",
                       reason="incoming_queue_full") == 0
    assert node.metric("edgesched_tasks_rejected_total", reason="overloaded") >= len(full)
