"""Each offload attempt answered once, no work after its time (issue #15, parts 4 and 5):
the expiry arithmetic of `sent_at`, the dedupe key (origin, task id, attempt), and the cancel
of an abandoned attempt, over a real mosquitto."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import MqttClient, MqttOptions
from edgesched.node import protocol as p
from edgesched.node.offload import OffloadClient, OffloadServer
from tests.support.broker import Mosquitto

PREFIX = "t"
NOW_MS = 1_760_000_000_000


def task(task_id: str, value: Any = 1) -> p.SubmitRequest:
    return p.SubmitRequest(id=task_id, type="echo", input=value,
                           input_bytes=len(json.dumps(value)))


# -- the arithmetic ----------------------------------------------------------------------


def test_time_left_counts_lateness_beyond_the_tolerance() -> None:
    # seen 20 s after it was sent with 3 s left: 17 s too late
    assert p.time_left(3.0, NOW_MS - 20_000, NOW_MS) == pytest.approx(-17.0)
    # seen 2.5 s late with 10 s left: 7.5 s left
    assert p.time_left(10.0, NOW_MS - 2_500, NOW_MS) == pytest.approx(7.5)


def test_time_left_within_the_tolerance_is_the_relative_deadline() -> None:
    # clocks disagree a little (either way): only the relative deadline counts
    assert p.time_left(3.0, NOW_MS - 900, NOW_MS) == 3.0
    assert p.time_left(3.0, NOW_MS + 5_000, NOW_MS) == 3.0  # "sent in the future"
    assert p.time_left(3.0, None, NOW_MS) == 3.0  # an origin that sends no stamp
    assert p.time_left(None, NOW_MS - 60_000, NOW_MS) is None  # no deadline: never expires
    assert p.late_s(NOW_MS - 1_500, NOW_MS, tolerance_s=2.0) == 0.0
    assert p.late_s(NOW_MS - 2_500, NOW_MS, tolerance_s=2.0) == pytest.approx(2.5)


def test_offload_request_carries_attempt_and_send_time() -> None:
    doc = p.offload_request_doc(task("t1"), origin="a", reply_to="t/node/a/offload-reply",
                                correlation_id="t1/abc", deadline_s=2.0, expected_s=None,
                                attempt="abc", sent_at_ms=NOW_MS)
    req = p.parse_offload(p.encode(doc), max_bytes=1 << 16, max_input_bytes=1 << 12,
                          known_types={"echo"})
    assert (req.attempt, req.task.sent_at_ms, req.task.deadline_s) == ("abc", NOW_MS, 2.0)
    assert req.key == ("a", "t1", "abc")


def test_dedupe_key_falls_back_to_the_correlation_id() -> None:
    doc = p.offload_request_doc(task("t1"), origin="a", reply_to="t/node/a/offload-reply",
                                correlation_id="t1/abc", deadline_s=None, expected_s=None)
    req = p.parse_offload(p.encode(doc), max_bytes=1 << 16, max_input_bytes=1 << 12,
                          known_types={"echo"})
    assert req.attempt is None and req.key == ("a", "t1", "t1/abc")


@pytest.mark.parametrize("bad", [True, 1.5, -3, "123", 2**60])
def test_bad_sent_at_is_refused(bad: Any) -> None:
    with pytest.raises(p.SubmissionError, match="sent_at must be"):
        p.parse_submit({"type": "echo", "sent_at": bad}, max_bytes=1 << 16,
                       max_input_bytes=1 << 12, known_types={"echo"})


@pytest.mark.parametrize(("doc", "what"), [
    ({"id": "t1", "origin": "a"}, "attempt"),
    ({"id": "t1", "origin": "a/#", "attempt": "x"}, "origin"),
    ({"origin": "a", "attempt": "x"}, "id"),
    ({"id": "t1", "origin": "a", "attempt": "x", "extra": 1}, "unknown field"),
])
def test_bad_cancel_is_refused(doc: dict[str, Any], what: str) -> None:
    with pytest.raises(p.SubmissionError, match=what):
        p.parse_cancel(p.encode(doc), max_bytes=1 << 16)


# -- over a real broker ------------------------------------------------------------------


@pytest.fixture
async def pair(mosquitto: Mosquitto) -> AsyncIterator[dict[str, Any]]:
    """Origin `a` (OffloadClient) and receiver `b` (OffloadServer) whose tasks wait on
    `release` while "queued" (the receiver's `waiting` says so)."""
    metrics = {"a": Metrics(), "b": Metrics()}
    mqtt = {n: MqttClient(MqttOptions(host=mosquitto.host, port=mosquitto.port,
                                      client_id=f"attempts-{n}"), metrics[n]) for n in "ab"}
    state: dict[str, Any] = {"runs": [], "release": asyncio.Event(), "queued": set(),
                             "started": False}
    running: set[asyncio.Task[None]] = set()

    async def run(req: p.OffloadRequest) -> p.OffloadReply:
        me = asyncio.current_task()
        state["queued"].add(me)
        try:
            await state["release"].wait()
        finally:
            state["queued"].discard(me)
        state["runs"].append(req.key)
        return p.OffloadReply(id=req.task.id, correlation_id=req.task.correlation_id or "",
                              status=p.Status.OK, result=req.task.input, executed_by="b")

    def spawn(coro: Any, name: str) -> None:
        t = asyncio.get_running_loop().create_task(coro, name=name)
        running.add(t)
        t.add_done_callback(running.discard)

    client = OffloadClient(mqtt=mqtt["a"], prefix=PREFIX, node_id="a", metrics=metrics["a"],
                           max_payload_bytes=1 << 16)
    server = OffloadServer(mqtt=mqtt["b"], prefix=PREFIX, node_id="b", metrics=metrics["b"],
                           max_payload_bytes=1 << 16, max_input_bytes=1 << 12,
                           known_types=lambda: frozenset({"echo"}), run=run, spawn=spawn,
                           waiting=lambda t: t in state["queued"] and not state["started"])
    await client.start()
    await server.start()
    async with mqtt["a"], mqtt["b"]:
        async with asyncio.timeout(10):
            await mqtt["a"].wait_connected()
            await mqtt["b"].wait_connected()
        yield {"client": client, "metrics": metrics, "state": state, "mqtt": mqtt}
        for t in list(running):
            t.cancel()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def until(check: Any, within_s: float = 5.0) -> None:
    """Poll `check` (a metric or a list: nothing to wait on) until true, bounded."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the bound"
        await asyncio.sleep(0.02)


def request_doc(task_id: str, attempt: str) -> bytes:
    return p.encode(p.offload_request_doc(
        task(task_id), origin="a", reply_to=f"{PREFIX}/node/a/offload-reply",
        correlation_id=f"{task_id}/{attempt}", deadline_s=None, expected_s=None,
        attempt=attempt, sent_at_ms=None))


async def test_a_redelivered_attempt_runs_once_another_attempt_runs_again(
        pair: dict[str, Any]) -> None:
    state, a = pair["state"], pair["mqtt"]["a"]
    state["release"].set()
    for attempt in ("x1", "x1", "x1", "x2"):  # x1 delivered three times, then a new attempt
        await a.publish(f"{PREFIX}/node/b/offload", request_doc("t1", attempt), qos=1)
    await until(lambda: len(state["runs"]) >= 2)
    await asyncio.sleep(0.3)  # time for a wrong third run to show
    assert sorted(state["runs"]) == [("a", "t1", "x1"), ("a", "t1", "x2")]
    assert sample(pair["metrics"]["b"], "edgesched_mqtt_messages_dropped_total",
                  reason="duplicate") == 2


async def test_an_abandoned_attempt_is_cancelled_and_never_runs(pair: dict[str, Any]) -> None:
    state, metrics = pair["state"], pair["metrics"]
    reply = await pair["client"].request("b", task("slow"), deadline_s=None, expected_s=None,
                                         timeout_s=0.3)
    assert reply is None  # the origin gave up: it tells b to drop it
    await until(lambda: sample(metrics["b"], "edgesched_cancels_total",
                               direction="received", result="dropped") == 1)
    assert sample(metrics["a"], "edgesched_cancels_total", direction="sent",
                  result="sent") == 1
    state["release"].set()
    await asyncio.sleep(0.3)
    assert state["runs"] == []  # cancelled while it waited: never started, no reply


async def test_a_cancel_that_arrives_first_drops_the_request(pair: dict[str, Any]) -> None:
    state, metrics, a = pair["state"], pair["metrics"], pair["mqtt"]["a"]
    state["release"].set()
    cancel = p.CancelRequest(id="t9", origin="a", attempt="z1")
    await a.publish(f"{PREFIX}/node/b/cancel", p.encode(cancel.to_dict()), qos=1)
    await asyncio.sleep(0.2)
    await a.publish(f"{PREFIX}/node/b/offload", request_doc("t9", "z1"), qos=1)
    await until(lambda: sample(metrics["b"], "edgesched_cancels_total",
                               direction="received", result="dropped") == 1)
    assert state["runs"] == []


async def test_a_malformed_cancel_is_counted(pair: dict[str, Any]) -> None:
    await pair["mqtt"]["a"].publish(f"{PREFIX}/node/b/cancel", b'{"id": 1}', qos=1)
    await until(lambda: sample(pair["metrics"]["b"], "edgesched_messages_rejected_total",
                               reason="malformed") == 1)


async def test_a_cancel_of_a_running_attempt_lets_it_finish(pair: dict[str, Any]) -> None:
    state, metrics = pair["state"], pair["metrics"]
    state["started"] = True  # the receiver's executor says: already running
    reply = await pair["client"].request("b", task("busy"), deadline_s=None, expected_s=None,
                                         timeout_s=0.3)
    assert reply is None
    await until(lambda: sample(metrics["b"], "edgesched_cancels_total",
                               direction="received", result="running") == 1)
    state["release"].set()
    await until(lambda: len(state["runs"]) == 1)  # it finishes; its reply comes too late
    await until(lambda: sample(metrics["a"], "edgesched_offload_replies_ignored_total",
                               reason="late") == 1)
    assert sample(metrics["b"], "edgesched_cancels_total", direction="received",
                  result="dropped") == 0
