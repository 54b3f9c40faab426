"""A node's persistent MQTT session (`mqtt.session_expiry_s`): QoS 1 submissions published
while the node is down are queued by the broker and answered once it is back.

Issue #15 measured before sessions were persistent: 10 submitted while the node was down,
0 answered after its restart.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any

import pytest

from tests.e2e.client import TaskClient
from tests.support.broker import Mosquitto, broker_workdir
from tests.support.nodes import NodeProcess

pytestmark = pytest.mark.e2e


def node(node_factory: Any, mosquitto: Mosquitto, protocol: str,
         session_expiry_s: int | None = None) -> NodeProcess:
    mqtt: dict[str, Any] = {"protocol": protocol}
    if session_expiry_s is not None:
        mqtt["session_expiry_s"] = session_expiry_s
    started: NodeProcess = node_factory("A", broker=mosquitto, overrides={
        "mqtt": mqtt, "shutdown": {"grace_s": 1.0}})
    return started


async def down_and_back(client: TaskClient, a: NodeProcess, count: int,
                        protocol: str = "5", how: str = "sigterm") -> tuple[list[str], float]:
    """Stop `a` (SIGTERM, or SIGKILL with how="sigkill"), publish `count` QoS 1 submissions,
    start it again. On 3.1.1 the node sees no v5 properties: every submission names
    `reply_to` in its body."""
    v5 = protocol == "5"
    first = await client.submit("A", {"type": "echo", "input": "before"}, v5=v5)
    await client.wait_all([first], within_s=10)  # A is subscribed: its session exists
    if how == "sigkill":
        a.kill()
    else:
        assert a.terminate(timeout=10) == 0
    keys = [await client.submit("A", {"type": "echo", "input": i}, v5=v5 and i % 2 == 0)
            for i in range(count)]
    await asyncio.sleep(0.3)
    assert not any(client.replies.get(k) for k in keys)  # nobody answered while A was down
    restarted = time.monotonic()
    await asyncio.to_thread(a.start)
    return keys, restarted


@pytest.mark.parametrize(("protocol", "how"),
                         [("5", "sigterm"), ("3.1.1", "sigterm"), ("5", "sigkill")])
async def test_submissions_while_node_down_are_answered_after_restart(
        mosquitto: Mosquitto, node_factory: Any, protocol: str, how: str) -> None:
    a = node(node_factory, mosquitto, protocol)
    async with TaskClient(mosquitto) as client:
        keys, restarted = await down_and_back(client, a, 10, protocol, how)
        replies = await client.wait_all(keys, within_s=20)
        took = time.monotonic() - restarted
        await asyncio.sleep(0.5)  # time for a duplicate to show up
    print(f"\nMQTT {protocol}, {how}: 10 submitted while down, {len(replies)} answered "
          f"{took:.2f}s after the restart began")
    for i, key in enumerate(keys):
        assert len(client.replies[key]) == 1, client.replies[key]
        assert replies[key]["status"] == "ok" and replies[key]["result"] == i, replies[key]


async def test_clean_session_when_expiry_is_zero(mosquitto: Mosquitto,
                                                 node_factory: Any) -> None:
    """`session_expiry_s: 0` keeps today's clean sessions: nothing is queued while away."""
    a = node(node_factory, mosquitto, "5", session_expiry_s=0)
    async with TaskClient(mosquitto) as client:
        keys, _ = await down_and_back(client, a, 3)
        with pytest.raises(TimeoutError):
            await client.wait_all(keys, within_s=3)


async def test_queued_submissions_survive_a_broker_restart(node_factory: Any) -> None:
    """With mosquitto's `persistence true` the queued submissions outlive a broker restart
    (a clean one: mosquitto writes its database on exit and every `autosave_interval`)."""
    workdir = broker_workdir()
    broker = Mosquitto(workdir=workdir,
                       extra_conf=f"persistence true\npersistence_location {workdir}/\n")
    broker.start()
    try:
        a = node(node_factory, broker, "5")
        async with TaskClient(broker) as client:
            first = await client.submit("A", {"type": "echo", "input": "before"})
            await client.wait_all([first], within_s=10)
            assert a.terminate(timeout=10) == 0
            keys = [await client.submit("A", {"type": "echo", "input": i}) for i in range(10)]
            await asyncio.sleep(0.3)
            broker.stop()
            broker.start()
            # The client's session is not persistent: it must be back before the node
            # answers (a node that starts in ~0.5 s used to win that race now and then).
            await client.reconnected()
            await asyncio.to_thread(a.start)
            replies = await client.wait_all(keys, within_s=20)
            await asyncio.sleep(0.5)
        assert all(len(client.replies[k]) == 1 for k in keys)
        assert [replies[k]["result"] for k in keys] == list(range(10))
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
