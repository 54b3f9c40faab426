"""Offload client and server over a real mosquitto: request/reply, rejection, late replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import MqttClient, MqttOptions
from edgesched.core.model import Placement
from edgesched.node import protocol as p
from edgesched.node.offload import OffloadClient, OffloadServer
from edgesched.node.pipeline import ENTRY_OVERHEAD_BYTES, TaskBook
from tests.support.broker import Mosquitto

PREFIX = "t"


def task(task_id: str, value: Any) -> p.SubmitRequest:
    return p.SubmitRequest(id=task_id, type="echo", input=value,
                           input_bytes=len(json.dumps(value)))


@pytest.fixture
async def pair(mosquitto: Mosquitto) -> AsyncIterator[dict[str, Any]]:
    """An origin with an OffloadClient and a receiver whose behaviour a test controls."""
    metrics = {"a": Metrics(), "b": Metrics()}
    mqtt = {n: MqttClient(MqttOptions(host=mosquitto.host, port=mosquitto.port,
                                      client_id=f"offload-{n}"), metrics[n]) for n in "ab"}
    behaviour: dict[str, Any] = {"delay": 0.0, "seen": []}
    running: set[asyncio.Task[None]] = set()

    async def run(req: p.OffloadRequest) -> p.OffloadReply:
        behaviour["seen"].append(req)
        await asyncio.sleep(behaviour["delay"])
        return p.OffloadReply(id=req.task.id, correlation_id=req.task.correlation_id or "",
                              status=p.Status.OK, result=req.task.input, executed_by="b",
                              exec_s=0.001)

    def spawn(coro: Any, name: str) -> None:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        running.add(t)
        t.add_done_callback(running.discard)

    client = OffloadClient(mqtt=mqtt["a"], prefix=PREFIX, node_id="a", metrics=metrics["a"],
                           max_payload_bytes=1 << 16)
    server = OffloadServer(mqtt=mqtt["b"], prefix=PREFIX, node_id="b", metrics=metrics["b"],
                           max_payload_bytes=1 << 16, max_input_bytes=1 << 12,
                           known_types=lambda: frozenset({"echo"}), run=run, spawn=spawn)
    await client.start()
    await server.start()
    async with mqtt["a"], mqtt["b"]:
        async with asyncio.timeout(10):
            await mqtt["a"].wait_connected()
            await mqtt["b"].wait_connected()
        yield {"client": client, "metrics": metrics, "behaviour": behaviour, "mqtt": mqtt}
        for t in list(running):
            t.cancel()


async def test_round_trip_carries_hop_and_deadline(pair: dict[str, Any]) -> None:
    reply = await pair["client"].request("b", task("t1", {"x": [1, 2]}), deadline_s=2.5,
                                         expected_s=0.1, timeout_s=5)
    assert reply is not None
    assert (reply.status, reply.result, reply.executed_by) == (p.Status.OK, {"x": [1, 2]}, "b")
    seen = pair["behaviour"]["seen"][0]
    assert (seen.origin, seen.hop, seen.task.deadline_s, seen.expected_s) == ("a", 1, 2.5, 0.1)
    assert pair["client"].pending == 0


async def test_late_reply_is_ignored_and_counted(pair: dict[str, Any]) -> None:
    pair["behaviour"]["delay"] = 0.6
    reply = await pair["client"].request("b", task("slow", 1), deadline_s=None,
                                         expected_s=None, timeout_s=0.2)
    assert reply is None  # given up on
    metrics = pair["metrics"]["a"]
    for _ in range(100):  # the late reply arrives ~0.4 s after the give-up
        if metrics.registry.get_sample_value("edgesched_offload_replies_ignored_total",
                                             {"reason": "late"}):
            break
        await asyncio.sleep(0.05)
    assert metrics.registry.get_sample_value("edgesched_offload_replies_ignored_total",
                                             {"reason": "late"}) == 1
    assert pair["client"].pending == 0


async def test_receiver_rejects_unknown_type_with_reason(pair: dict[str, Any]) -> None:
    req = p.SubmitRequest(id="u1", type="launch", input=None)
    reply = await pair["client"].request("b", req, deadline_s=None, expected_s=None,
                                         timeout_s=5)
    assert reply is not None and reply.status is p.Status.REJECTED
    assert "unknown task type 'launch'" in (reply.error or "")
    assert pair["behaviour"]["seen"] == []  # never reached the runner


async def test_malformed_request_does_not_disturb_the_receiver(pair: dict[str, Any]) -> None:
    await pair["mqtt"]["a"].publish(f"{PREFIX}/node/b/offload", b"\x00garbage", qos=1)
    reply = await pair["client"].request("b", task("after", 7), deadline_s=None,
                                         expected_s=None, timeout_s=5)
    assert reply is not None and reply.result == 7
    assert pair["metrics"]["b"].registry.get_sample_value(
        "edgesched_tasks_rejected_total", {"reason": "malformed"}) == 1


async def test_task_book_idempotency() -> None:
    book = TaskBook(max_outcomes=2)
    assert book.existing("a") is None
    future = book.begin("a")
    assert book.existing("a") is future  # a repeat attaches to the in-flight task
    reply = p.Reply(id="a", status=p.Status.OK, result=1)
    book.finish("a", reply)
    assert future.result() is reply
    assert book.existing("a").result() == reply  # type: ignore[union-attr]
    for other in ("b", "c"):
        book.begin(other)
        book.finish(other, p.Reply(id=other, status=p.Status.OK))
    assert book.existing("a") is None  # bounded: the oldest outcome was forgotten


async def test_task_book_is_bounded_by_bytes() -> None:
    reply = p.Reply(id="x", status=p.Status.OK, result="y" * 1000,
                    placement=Placement.LOCAL, executed_by="gw-1", latency_s=0.25, attempts=1)
    size = len(reply.encode()) + ENTRY_OVERHEAD_BYTES
    book = TaskBook(max_bytes=3 * size)
    for key in range(5):
        book.begin(key)
        book.finish(key, reply)
    assert list(book.outcomes) == [2, 3, 4] and book.cached_bytes == 3 * size
    assert book.existing(4).result() == reply  # type: ignore[union-attr]  # decoded as sent
    book.existing(2)  # used: now the most recent
    book.begin(5)
    book.finish(5, reply)
    assert list(book.outcomes) == [4, 2, 5]
    huge = p.Reply(id="h", status=p.Status.OK, result="z" * (4 * size))
    book.begin("h")
    book.finish("h", huge)  # larger than the whole budget: never remembered
    assert book.existing("h") is None and list(book.outcomes) == [4, 2, 5]
    book.begin("n")
    book.finish("n", reply, remember=False)
    assert book.existing("n") is None
