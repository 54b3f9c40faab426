"""Two edge nodes and a cloud node, all real processes on a real mosquitto: placement under
saturation, offload policies, 200+ mixed tasks answered exactly once, and a neighbour killed
with -9 while it runs offloaded work."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from tests.e2e.client import TaskClient, expected_digest, expected_trace
from tests.support.broker import Mosquitto
from tests.support.nodes import wait_until

pytestmark = pytest.mark.e2e

HOLD = {"handler": "builtin:sleep", "offload": "local"}  # a sleep that never leaves its node


def cluster(mosquitto: Mosquitto, node_factory: Any, *, slots: int = 2) -> dict[str, Any]:
    cloud = node_factory("cloud-1", broker=mosquitto, overrides={
        "role": "cloud", "executor": {"slots": 8}})
    common = {"executor": {"slots": slots}, "mqtt": {"keepalive_s": 2}}
    b = node_factory("B", broker=mosquitto, overrides={**common, "task_types": {"hold": HOLD}})
    a = node_factory("A", broker=mosquitto, overrides={
        **common, "cloud": {"url": cloud.base_url},
        "task_types": {"hold": HOLD, "lecho": {"handler": "builtin:echo", "offload": "local"}},
    })
    wait_until(lambda: a.neighbour_status().get("B") == "online", 10, what="A sees B")
    return {"A": a, "B": b, "cloud": cloud}


def neighbour_running(observer: Any, node_id: str) -> int:
    for entry in observer.status()["neighbours"]:
        if entry["node_id"] == node_id:
            return int(entry["running"])
    return -1


def mixed_task(rng: random.Random, i: int) -> tuple[dict[str, Any], Any]:
    """A submission and the result it must have (None = only status ok is checked)."""
    kind = i % 4
    if kind == 0:
        data, rounds = f"t{i}", rng.randint(1, 20_000)
        return ({"type": "hash", "input": {"data": data, "rounds": rounds}},
                {"digest": expected_digest(data, rounds)})
    if kind == 1:
        n, seed = rng.randint(5, 60), rng.randint(0, 10_000)
        return {"type": "matmul", "input": {"n": n, "seed": seed}}, ("trace", n, seed)
    if kind == 2:
        return {"type": "echo", "input": {"i": i, "xs": [i, None]}}, {"i": i, "xs": [i, None]}
    seconds = round(rng.uniform(0.01, 0.1), 3)
    return {"type": "sleep", "input": {"seconds": seconds}}, {"slept": seconds}


def check_result(reply: dict[str, Any], expected: Any) -> None:
    assert reply["status"] == "ok", reply
    if isinstance(expected, tuple):
        assert reply["result"]["trace"] == pytest.approx(expected_trace(expected[1], expected[2]))
    else:
        assert reply["result"] == expected


async def test_placement_saturation_and_mixed_load(mosquitto: Mosquitto,
                                                   node_factory: Any) -> None:
    nodes = cluster(mosquitto, node_factory)
    rng = random.Random(5)
    async with TaskClient(mosquitto) as client:
        # 1. 220 mixed submissions (to A and B, both reply paths, some with deadlines).
        expected: dict[str, Any] = {}
        for i in range(220):
            doc, want = mixed_task(rng, i)
            if i % 5 == 0:
                doc["deadline_s"] = 20.0
            key = await client.submit("A" if i % 3 else "B", doc, v5=i % 2 == 0)
            expected[key] = want
        replies = await client.wait_all(list(expected), within_s=90)
        for key, want in expected.items():
            check_result(replies[key], want)
        placements = {r["executed_by"] for r in replies.values()}
        print("mixed load ran on", sorted(placements))
        sched = nodes["A"].status()["scheduler"]
        assert set(sched["estimates"]["hash"]["exec"]) == {"A", "B", "cloud"}
        assert 0 < len(sched["decisions"]) <= 20
        last = sched["decisions"][-1]
        assert {c["node_id"] for c in last["candidates"]} == {"A", "B", "cloud"}
        assert {"latency_mean_s", "latency_q_s", "energy_j", "score", "feasible",
                "reason"} <= set(last["candidates"][0])
        assert nodes["A"].metric("edgesched_latency_prediction_error_seconds_count")

        # 2. A's slots full of local-only holds: further tasks go to B or the cloud.
        holds = [await client.submit("A", {"type": "hold", "input": {"seconds": 12}})
                 for _ in range(2)]
        wait_until(lambda: nodes["A"].status()["tasks"]["running"] == 2, 5, what="A saturated")
        off = [await client.submit("A", {"type": "hash", "deadline_s": 5,
                                         "input": {"data": "s", "rounds": 50 + i}})
               for i in range(6)]
        got = await client.wait_all(off, within_s=30)
        for i, key in enumerate(off):
            check_result(got[key], {"digest": expected_digest("s", 50 + i)})
            assert (got[key]["placement"], got[key]["executed_by"]) in (
                ("neighbour", "B"), ("cloud", "cloud-1")), got[key]

        # 3. B saturated too (A sees it in B's telemetry): tasks go to the cloud.
        holds += [await client.submit("B", {"type": "hold", "input": {"seconds": 10}})
                  for _ in range(2)]
        wait_until(lambda: neighbour_running(nodes["A"], "B") == 2, 5, what="A sees B full")
        to_cloud = [await client.submit("A", {"type": "echo", "input": i, "deadline_s": 3})
                    for i in range(5)]
        got = await client.wait_all(to_cloud, within_s=30)
        for i, key in enumerate(to_cloud):
            assert (got[key]["status"], got[key]["result"]) == ("ok", i)
            assert (got[key]["placement"], got[key]["executed_by"]) == ("cloud", "cloud-1")

        # 4. A local-only type never leaves A, even when A cannot take it.
        local_only = await client.submit("A", {"type": "lecho", "input": 1, "deadline_s": 2})
        reply = (await client.wait_all([local_only], within_s=10))[local_only]
        assert reply["status"] in ("rejected", "expired"), reply
        assert reply["placement"] in ("local", None) and reply["executed_by"] in ("A", None)
        assert "deadline" in reply["error"]

        done = await client.wait_all(holds, within_s=30)
        assert all(r["status"] == "ok" and r["placement"] == "local" for r in done.values())
        await asyncio.sleep(1.0)  # time for any duplicate reply to show up
    duplicated = {k: len(v) for k, v in client.replies.items() if len(v) != 1}
    assert not duplicated, duplicated
    assert nodes["A"].metric("edgesched_decisions_total", placement="cloud")


async def test_neighbour_killed_mid_task(mosquitto: Mosquitto, node_factory: Any) -> None:
    nodes = cluster(mosquitto, node_factory)  # keepalive 2 s: B's Will comes ~3 s after death
    async with TaskClient(mosquitto) as client:
        holds = [await client.submit("A", {"type": "hold", "input": {"seconds": 20}})
                 for _ in range(2)]
        wait_until(lambda: nodes["A"].status()["tasks"]["running"] == 2, 5, what="A saturated")
        work = [await client.submit("A", {"type": "sleep", "input": {"seconds": 4},
                                          "deadline_s": 20}) for _ in range(3)]
        wait_until(lambda: nodes["B"].status()["tasks"]["running"] >= 1, 5, what="B busy")
        nodes["B"].kill()
        killed = time.monotonic()
        got = await client.wait_all(work, within_s=20)
        print("after kill -9 of B:", [(r["status"], r["executed_by"], r.get("error"))
                                      for r in got.values()])
        for reply in got.values():
            if reply["status"] == "ok":
                assert reply["executed_by"] == "cloud-1", reply
            else:
                assert reply["status"] in ("failed", "expired") and reply["error"], reply
        # The tasks B was running were re-run on the cloud (the deadline allowed it).
        assert sum(r["attempts"] > 1 for r in got.values()) >= 1
        assert all(r["status"] == "ok" for r in got.values())
        # A gave up on B when B's Will said it was gone, before the attempt's ~4.6 s timeout.
        attempts = [a for d in nodes["A"].status()["scheduler"]["decisions"]
                    for a in d["attempts"] if a["node_id"] == "B"]
        assert any("went offline" in (a["error"] or "") for a in attempts), attempts
        assert time.monotonic() - killed < 16
        for key in holds:
            client.replies.pop(key, None)  # still holding A's slots; not part of this check
    assert all(len(v) == 1 for v in client.replies.values())
