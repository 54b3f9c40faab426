"""Issue #14's MQTT attacks replayed against real signed nodes on a real mosquitto.

The attacker has only an anonymous connection to the same broker (no ACL here: the broker
recipe is tested in test_mtls_cluster.py). Each attack below worked before nodes signed their
messages; now each is refused, counted by reason, and honest tasks still get one correct reply.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from edgesched.adapters.signing import FRAME_MAGIC, write_node_keypair
from tests.e2e.client import TaskClient, expected_digest
from tests.support.broker import Mosquitto
from tests.support.nodes import wait_until

pytestmark = pytest.mark.e2e

HOLD = {"handler": "builtin:sleep", "offload": "local"}  # keeps gw-1's one slot busy
P = "edgesched"


class Attacker:
    """A raw paho client: records what it hears, publishes whatever it likes."""

    def __init__(self, broker: Mosquitto, subscriptions: list[str]) -> None:
        self.heard: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"evil-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        for flt in subscriptions:
            self.client.subscribe(flt, qos=1)
        self.client.loop_start()
        self.on_message: Any = None

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.heard.append((msg.topic, bytes(msg.payload)))
        if self.on_message is not None:
            self.on_message(msg.topic, bytes(msg.payload))

    def on(self, topic_part: str) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(t, p) for t, p in self.heard if topic_part in t]

    def publish(self, topic: str, payload: bytes | str, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def signed_cluster(mosquitto: Mosquitto, node_factory: Any, tmp_path: Path) -> dict[str, Any]:
    keys = tmp_path / "keys"
    for node in ("gw-1", "gw-2"):
        write_node_keypair(node, keys)

    def security(node: str) -> dict[str, Any]:
        return {"key_file": str(keys / f"{node}.key"), "trust_dir": str(keys)}

    gw2 = node_factory("gw-2", broker=mosquitto, overrides={
        "executor": {"slots": 4}, "security": security("gw-2")})
    # offload.min_timeout_s 3: these tests are about forgeries, and on a loaded machine a
    # genuine reply from gw-2 once took over the default 1 s (the attempt timed out, gw-1
    # was held busy, the task failed): that is not what they check.
    gw1 = node_factory("gw-1", broker=mosquitto, overrides={
        "executor": {"slots": 1}, "security": security("gw-1"),
        "mqtt": {"keepalive_s": 2}, "task_types": {"hold": HOLD},
        "offload": {"min_timeout_s": 3}})
    wait_until(lambda: gw1.neighbour_status().get("gw-2") == "online", 10, what="gw-1 sees gw-2")
    return {"gw-1": gw1, "gw-2": gw2}


def rejected(node: Any, reason: str) -> float:
    return node.metric("edgesched_messages_rejected_total", reason=reason) or 0.0


def forged_state(node_id: str, *, online: bool, incarnation: int) -> bytes:
    return json.dumps({
        "v": 1, "node_id": node_id, "status": "online" if online else "offline", "role": "edge",
        "incarnation": incarnation, "ts": time.time(), "task_types": ["hash", "echo", "sleep",
                                                                      "matmul"],
        "slots": 1000, "speed": 1000.0}).encode()


def forged_telemetry(node_id: str, incarnation: int) -> bytes:
    return json.dumps({
        "v": 1, "node_id": node_id, "incarnation": incarnation, "ts": time.time(),
        "cpu_util": 0.0, "running": 0, "queued": 0, "slots": 1000, "est_wait_s": 0.0}).encode()


async def test_a_fake_node_forged_results_and_forged_offline_state_are_refused(
        mosquitto: Mosquitto, node_factory: Any, tmp_path: Path) -> None:
    nodes = signed_cluster(mosquitto, node_factory, tmp_path)
    gw1, gw2 = nodes["gw-1"], nodes["gw-2"]
    evil = Attacker(mosquitto, [f"{P}/node/+/offload"])
    forged_replies = 0

    def answer_first(topic: str, payload: bytes) -> None:
        """Answer every offload request at once with a forged `ok` result."""
        nonlocal forged_replies
        body = payload.split(b"\n", 1)[1] if payload.startswith(FRAME_MAGIC) else payload
        req = json.loads(body)
        reply = {"v": 1, "id": req["id"], "correlation_id": req["correlation_id"],
                 "status": "ok", "result": {"digest": "forged"}, "executed_by": "gw-2",
                 "wait_s": 0.0, "exec_s": 0.001}
        evil.client.publish(req["reply_to"], json.dumps(reply), qos=1)
        forged_replies += 1

    evil.on_message = answer_first
    try:
        # A fake node advertising huge capacity, and gw-2 declared offline "forever".
        evil.publish(f"{P}/node/evil/state", forged_state("evil", online=True,
                                                          incarnation=int(time.time() * 1000)),
                     retain=True)
        evil.publish(f"{P}/node/gw-2/state", forged_state("gw-2", online=False,
                                                          incarnation=2**63), retain=True)
        for _ in range(5):
            evil.publish(f"{P}/node/evil/telemetry",
                         forged_telemetry("evil", int(time.time() * 1000)))
            await asyncio.sleep(0.1)
        wait_until(lambda: rejected(gw1, "unsigned") >= 7, 10, what="forgeries counted")
        view = gw1.neighbour_status()
        assert "evil" not in view and view.get("gw-2") == "online", view

        async with TaskClient(mosquitto) as client:
            hold = await client.submit("gw-1", {"type": "hold", "input": {"seconds": 6}})
            wait_until(lambda: gw1.status()["tasks"]["running"] == 1, 5, what="gw-1 busy")
            keys = {await client.submit("gw-1", {
                "type": "hash", "deadline_s": 5, "input": {"data": f"d{i}", "rounds": 100 + i}}):
                i for i in range(30)}
            got = await client.wait_all(list(keys), within_s=30)
            await client.wait_all([hold], within_s=15)
        for key, i in keys.items():
            reply = got[key]
            assert reply["status"] == "ok", reply
            assert reply["result"] == {"digest": expected_digest(f"d{i}", 100 + i)}, reply
            assert reply["executed_by"] in ("gw-1", "gw-2")
        assert all(len(v) == 1 for v in client.replies.values())
        offloaded = sum(r["executed_by"] == "gw-2" for r in got.values())
        print(f"30 hash tasks: {offloaded} ran on gw-2, forged replies sent: {forged_replies}, "
              f"refused unsigned at gw-1: {rejected(gw1, 'unsigned')}")
        assert offloaded > 0 and forged_replies >= offloaded
        assert not evil.on(f"{P}/node/evil/offload"), "the fake node was sent work"
        assert gw1.neighbour_status().get("gw-2") == "online"
        assert rejected(gw2, "unsigned") >= 1  # the Will-like forged offline state
    finally:
        evil.close()


async def test_tampered_copies_are_bad_signature_and_exact_copies_replays(
        mosquitto: Mosquitto, node_factory: Any, tmp_path: Path) -> None:
    nodes = signed_cluster(mosquitto, node_factory, tmp_path)
    gw1, gw2 = nodes["gw-1"], nodes["gw-2"]
    spy = Attacker(mosquitto, [f"{P}/node/gw-2/telemetry", f"{P}/node/gw-2/offload",
                               f"{P}/node/gw-1/offload-reply"])
    try:
        async with TaskClient(mosquitto) as client:
            hold = await client.submit("gw-1", {"type": "hold", "input": {"seconds": 4}})
            wait_until(lambda: gw1.status()["tasks"]["running"] == 1, 5, what="gw-1 busy")
            key = await client.submit("gw-1", {"type": "hash", "deadline_s": 3,
                                               "input": {"data": "x", "rounds": 10}})
            reply = (await client.wait_all([key], within_s=15))[key]
            assert (reply["status"], reply["executed_by"]) == ("ok", "gw-2"), reply
            await client.wait_all([hold], within_s=10)
        wait_until(lambda: spy.on("/offload-reply"), 5, what="the offload reply seen")
        (req_topic, request), = spy.on("/gw-2/offload")
        tel_topic, telemetry = spy.on("/telemetry")[-1]
        replies_before = len(spy.on("/offload-reply"))

        # Exact copies: refused as replays by the node they were meant for.
        before = rejected(gw1, "replay"), rejected(gw2, "replay")
        spy.publish(tel_topic, telemetry)
        spy.publish(req_topic, request)
        wait_until(lambda: rejected(gw1, "replay") > before[0]
                   and rejected(gw2, "replay") > before[1], 5, what="replays counted")

        # Tampered copies: the request under a new correlation id, the telemetry claiming idle.
        header, body = request.split(b"\n", 1)
        doc = json.loads(body)
        doc["correlation_id"] = f"{doc['id']}/{uuid.uuid4().hex[:12]}"
        tampered_request = header + b"\n" + json.dumps(doc).encode()
        header, body = telemetry.split(b"\n", 1)
        tel = json.loads(body)
        tel["slots"] = 1000
        tampered_telemetry = header + b"\n" + json.dumps(tel).encode()
        before = rejected(gw1, "bad_signature"), rejected(gw2, "bad_signature")
        spy.publish(req_topic, tampered_request)
        spy.publish(tel_topic, tampered_telemetry)
        # ... and the request moved to another node's topic
        spy.publish(f"{P}/node/gw-1/offload", request)
        wait_until(lambda: rejected(gw2, "bad_signature") > before[1]
                   and rejected(gw1, "bad_signature") >= before[0] + 2, 5,
                   what="tampered copies counted")

        await asyncio.sleep(1.0)  # a request that ran again would have answered by now
        assert len(spy.on("/offload-reply")) == replies_before, "a replayed request ran again"
        slots = {n["node_id"]: n["slots"] for n in gw1.status()["neighbours"]}
        assert slots["gw-2"] == 4
    finally:
        spy.close()
