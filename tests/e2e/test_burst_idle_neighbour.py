"""Issue 20's live failure, with real processes: a burst next to an idle neighbour.

edge-a (2 slots) holds 12 local-only 4 s sleeps (2 running, 10 queued: ~20 s of work),
edge-b is idle, and the cloud node (2 slots) is busy with 8 sleeps of its own (~16 s of
queue). A burst of 150 `hash` tasks (3,000 rounds, ~2 ms each) with 3 s deadlines is
submitted to edge-a. Before the fix edge-a modelled the cloud as unbounded (0.06 s) and sent
every task there first; the cloud refused each one ("predicted 15.9 s") and nothing was learned
from it. Now the cloud's own reports (its telemetry: slots, queue, est_wait_s) say it is busy,
a refusal blocks the target until a report newer than the refusal says it has room, and the
burst runs on edge-b.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import aiohttp
import pytest

from tests.e2e.client import TaskClient, expected_digest
from tests.support.broker import Mosquitto, free_port
from tests.support.nodes import wait_until

pytestmark = [pytest.mark.e2e]

HOLD = {"handler": "builtin:sleep", "offload": "local"}  # sleeps that stay on edge-a
BURST = 150


def burst_cluster(mosquitto: Mosquitto, node_factory: Any, *,
                  cloud_telemetry: bool = True) -> dict[str, Any]:
    """edge-a, edge-b and a 2-slot cloud node; without `cloud_telemetry` the cloud node's
    broker is a port nothing listens on, so it publishes no load report."""
    cloud_mqtt = {} if cloud_telemetry else {"mqtt": {"host": "127.0.0.1", "port": free_port()}}
    cloud = node_factory("cloud", broker=mosquitto, overrides={
        "role": "cloud", "executor": {"slots": 2}, **cloud_mqtt})
    # intake.shed_after_s 0: the burst is read however far behind the event loop falls on a
    # loaded test machine (load shedding is tested elsewhere; this test is about decisions)
    common = {"executor": {"slots": 2}, "mqtt": {"keepalive_s": 2},
              "intake": {"shed_after_s": 0}, "task_types": {"hold": HOLD}}
    b = node_factory("edge-b", broker=mosquitto, overrides=common)
    a = node_factory("edge-a", broker=mosquitto, overrides={
        **common, "cloud": {"url": cloud.base_url}})
    wait_until(lambda: a.neighbour_status().get("edge-b") == "online", 10, what="a sees b")
    return {"a": a, "b": b, "cloud": cloud}


def rejected(node: Any) -> float:
    text = node.metrics_text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgesched_tasks_rejected_total{"))


async def burst(client: TaskClient, nodes: dict[str, Any], tag: str) -> dict[str, Any]:
    """Submit the burst to edge-a; the replies, where they ran, and the cloud's refusals."""
    refused_before = await asyncio.to_thread(rejected, nodes["cloud"])
    keys = [await client.submit("edge-a", {
        "type": "hash", "deadline_s": 3, "input": {"data": f"{tag}{i}", "rounds": 3000}})
        for i in range(BURST)]
    replies = await client.wait_all(keys, within_s=20)
    refused = await asyncio.to_thread(rejected, nodes["cloud"]) - refused_before
    for i, key in enumerate(keys):
        if replies[key]["status"] == "ok":
            assert replies[key]["result"] == {"digest": expected_digest(f"{tag}{i}", 3000)}
    ok = [r for r in replies.values() if r["status"] == "ok"]
    return {"ok": len(ok), "by": collections.Counter(r.get("executed_by") for r in ok),
            "statuses": collections.Counter(r["status"] for r in replies.values()),
            "errors": collections.Counter((r.get("error") or "")[:90] for r in replies.values()
                                          if r["status"] != "ok"),
            "cloud_refused": refused}


def cloud_queue_seen(observer: Any) -> int:
    return next((int(n["queued"]) for n in observer.status()["neighbours"]
                 if n["node_id"] == "cloud"), -1)


async def run_bursts(nodes: dict[str, Any], mosquitto: Mosquitto, count: int = 1, *,
                     wait_seen: bool = False) -> list[dict[str, Any]]:
    """Load edge-a and the cloud with 4 s sleeps, then `count` bursts 1 s apart; each burst's
    results, the first with edge-a's status after it."""
    a, cloud = nodes["a"], nodes["cloud"]
    out = []
    async with TaskClient(mosquitto) as client, aiohttp.ClientSession() as session:
        for _ in range(12):
            await client.submit("edge-a", {"type": "hold", "input": {"seconds": 4}})
        body = {"v": 1, "type": "sleep", "input": {"seconds": 4}}
        # the cloud's own work, from someone else: each POST waits for its reply
        posts = [asyncio.ensure_future(session.post(cloud.base_url + "/v1/tasks", json=body))
                 for _ in range(8)]
        try:
            # (in a thread: the cloud's POSTs run on this event loop meanwhile)
            await asyncio.to_thread(wait_until, lambda: a.status()["tasks"]["queued"] >= 10, 5,
                                    what="edge-a holds 12")
            await asyncio.to_thread(wait_until, lambda: cloud.status()["tasks"]["queued"] >= 6,
                                    5, what="the cloud holds 8")
            if wait_seen:  # edge-a has heard the cloud's queue (telemetry every 0.3 s)
                await asyncio.to_thread(wait_until, lambda: cloud_queue_seen(a) >= 6, 5,
                                        what="edge-a sees the cloud's queue")
            for n in range(count):
                if n:
                    await asyncio.sleep(1.0)
                got = await burst(client, nodes, f"b{n}-")
                got["status"] = await asyncio.to_thread(a.status)
                out.append(got)
        finally:
            for post in posts:
                post.cancel()
            await asyncio.gather(*posts, return_exceptions=True)
    return out


def show(what: str, got: dict[str, Any]) -> None:
    print(what, dict(got["statuses"]), dict(got["by"]), "cloud refused", got["cloud_refused"],
          got["errors"].most_common(2))


async def test_burst_next_to_idle_neighbour_runs(mosquitto: Mosquitto,
                                                 node_factory: Any) -> None:
    nodes = burst_cluster(mosquitto, node_factory)
    [got] = await run_bursts(nodes, mosquitto, wait_seen=True)
    show("burst:", got)
    assert got["ok"] >= 0.95 * BURST, got["errors"]
    assert got["by"]["edge-b"] >= 0.9 * BURST, got["by"]
    # the cloud's queue is known from its telemetry: (almost) nothing is sent to be refused
    assert got["cloud_refused"] <= 5, got["cloud_refused"]
    decisions = [d for d in got["status"]["scheduler"]["decisions"] if d["type"] == "hash"]
    latency = {c["node_id"]: c["latency_mean_s"] for c in decisions[0]["candidates"]}
    assert latency["edge-a"] > 10.0 and latency["cloud"] > 3.0, latency
    # the live coverage of the latency quantile, over the attempts that finished
    coverage = nodes["a"].metric("edgesched_prediction_coverage_ratio", placement="neighbour")
    assert coverage is not None and 0.0 <= coverage <= 1.0, coverage
    print("coverage of the 0.95 quantile on edge-b (a burst, no calibration yet):", coverage)


async def test_a_refusing_cloud_is_held_back_until_it_can_take_work(
        mosquitto: Mosquitto, node_factory: Any) -> None:
    """The cloud node publishes no telemetry: before its first reply edge-a cannot know its
    queue, and the first burst's early attempts reach it and are refused. Each refusal holds
    the cloud back (no telemetry to end it sooner), and its replies carry its load
    (X-Edgesched-Load): the second burst knows the cloud is busy and is not sent there."""
    nodes = burst_cluster(mosquitto, node_factory, cloud_telemetry=False)
    first, second = await run_bursts(nodes, mosquitto, count=2)
    show("first burst, silent cloud:", first)
    show("second burst:", second)
    assert first["cloud_refused"] >= 1  # the failure of issue 20 is there to be learned from
    assert second["ok"] >= 0.95 * BURST, second["errors"]
    assert second["cloud_refused"] <= 2, second["cloud_refused"]
    decisions = [d for d in second["status"]["scheduler"]["decisions"] if d["type"] == "hash"]
    cloud = [c for d in decisions for c in d["candidates"] if c["node_id"] == "cloud"]
    assert cloud and min(c["latency_mean_s"] for c in cloud) > 3.0, cloud[:2]
