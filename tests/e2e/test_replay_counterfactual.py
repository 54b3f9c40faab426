"""Counterfactual validity of `edgesched replay`, measured live (issue 17).

A real cluster — edge `E1` (2 slots, where every task is submitted), an idle neighbour `E2`,
and a cloud node behind a WAN emulator (100 ms RTT) — runs the same seeded workload three
times: once with `policy.name: cost`, recorded (`record.path`, with `record.explore: 0.2` so
every target is measured), once with `local`, once with `cloud`. The replay of the cost
recording under `local` and `cloud` must land within 25 % of the live runs' mean latency and
within 0.03 of their deadline-miss ratio; under `cost` within 15 % of what was observed.

The workload is meaningful and stable on a loaded 2-core box: `sleep` tasks (timer-bound, not
CPU-bound; 20-250 ms, mean ~90 ms) arriving as a Poisson stream at ~60 % of E1's two slots,
deadline 0.35 s: `local` queues (and misses some deadlines), `cloud` pays the WAN on every
task, `cost` spreads the load over E1, E2 and the cloud.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgesched.demo.cluster import WanSpec
from edgesched.demo.wan import WanEmulator
from edgesched.sim.replay import read_recording, replay
from tests.e2e.client import TaskClient
from tests.support.broker import Mosquitto
from tests.support.nodes import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 17
RATE_PER_S = 13.0
DURATION_S = 10.0
DEADLINE_S = 0.35
WAN = WanSpec(rtt_s=0.1, uplink_bps=50e6)


def workload(seed: int = SEED) -> list[tuple[float, float]]:
    """(send time, sleep seconds) of every task: the same list for every run."""
    rng = np.random.default_rng(seed)
    n = int(rng.poisson(RATE_PER_S * DURATION_S))
    times = np.sort(rng.uniform(0.0, DURATION_S, n))
    sleeps = np.clip(rng.lognormal(np.log(0.08), 0.5, n), 0.02, 0.25)
    return [(float(t), round(float(s), 3)) for t, s in zip(times, sleeps, strict=True)]


async def drive(client: TaskClient, node: str, tasks: list[tuple[float, float]]
                ) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    keys = []
    for at, seconds in tasks:
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        keys.append(await client.submit(node, {"type": "sleep", "input": {"seconds": seconds},
                                               "deadline_s": DEADLINE_S}))
    got = await client.wait_all(keys, within_s=20)
    return [got[k] for k in keys]


def figures(replies: list[dict[str, Any]]) -> tuple[float, float]:
    """Mean latency of the completed tasks, and the miss ratio over all of them."""
    ok = [r["latency_s"] for r in replies if r["status"] == "ok"]
    missed = sum(1 for r in replies if r["status"] != "ok" or r["latency_s"] > DEADLINE_S)
    return float(np.mean(ok)), missed / len(replies)


async def live_runs(mosquitto: Mosquitto, node_factory: Any, record: Path
                    ) -> dict[str, tuple[float, float]]:
    cloud = node_factory("cloud-1", broker=mosquitto, overrides={
        "role": "cloud", "executor": {"slots": 16}})
    async with WanEmulator(cloud.http_port, WAN) as wan:
        common = {"executor": {"slots": 2}, "cloud": {"url": wan.url},
                  "telemetry": {"interval_s": 0.5}}
        node_factory("E2", broker=mosquitto, overrides=common)
        tasks = workload()
        out: dict[str, tuple[float, float]] = {}
        async with TaskClient(mosquitto) as client:
            for policy in ("cost", "local", "cloud"):
                extra = {"record": {"path": str(record), "explore": 0.2}} if (
                    policy == "cost") else {}
                e1 = node_factory(f"E1{policy}", broker=mosquitto, overrides={
                    **common, "node_id": "E1", "policy": {"name": policy}, **extra})
                wait_until(lambda e=e1: e.neighbour_status().get("E2") == "online", 10,
                           what="E1 sees E2")
                # warm-up: a few tasks so every target's link has been measured once
                await drive(client, "E1", [(i * 0.05, 0.02) for i in range(6)])
                replies = await drive(client, "E1", tasks)
                if policy == "cost":  # live regret and the recording's count, on /metrics
                    n = len(tasks) + 6
                    wait_until(lambda e=e1, n=n: (e.metric(
                        "edgesched_decisions_recorded_total") or 0) >= n, 10,
                        what="every task recorded")
                    regret_count = e1.metric("edgesched_regret_seconds_count")
                    assert regret_count == sum(1 for r in replies if r["status"] == "ok") + 6
                e1.terminate()  # the recorder's last lines are written on the way out
                out[policy] = figures(replies)
                print(policy, Counter(r.get("placement") for r in replies),
                      np.percentile([r["latency_s"] for r in replies], [50, 95, 99]))
        return out


def test_replay_of_a_cost_recording_predicts_local_and_cloud(
        mosquitto: Mosquitto, node_factory: Any, tmp_path: Path) -> None:
    record = tmp_path / "record"
    live = asyncio.run(live_runs(mosquitto, node_factory, record))
    rec = read_recording(record)
    report = replay(rec, ["cost", "local", "cloud"])
    (tmp_path / "report.json").write_text(json.dumps({"live": live, "replay": report}))
    lines = [f"live {p}: mean {m * 1e3:.1f} ms, miss {r:.3f}" for p, (m, r) in live.items()]
    for p, s in report["policies"].items():
        lines.append(f"replay {p}: mean {s['mean_latency_s'] * 1e3:.1f} ms, "
                     f"miss {s['deadline_miss_ratio']:.3f}")
    obs = report["observed"]
    lines.append(f"observed: mean {obs['mean_latency_s'] * 1e3:.1f} ms, miss "
                 f"{obs['deadline_miss_ratio']:.3f}, placements {obs['placements']}")
    print("\n".join(lines))
    assert not rec.problems, rec.problems
    # the recording: the warm-up's 6 tasks and the workload's, under cost, some explored
    assert len(rec.tasks) == len(workload()) + 6 and obs["policy"] == "cost"
    assert obs["explored"] > 0
    assert min(obs["placements"].values()) > 0, obs["placements"]  # every target measured
    # not trivially all-equal: local queues, cloud pays the WAN
    assert abs(live["local"][0] - live["cloud"][0]) > 0.01, lines
    sim = report["policies"]
    assert sim["cost"]["mean_latency_s"] == pytest.approx(obs["mean_latency_s"], rel=0.15), lines
    for policy in ("local", "cloud"):
        mean, miss = live[policy]
        assert sim[policy]["mean_latency_s"] == pytest.approx(mean, rel=0.25), lines
        assert abs(sim[policy]["deadline_miss_ratio"] - miss) <= 0.03, lines
    assert report["regret_s"] is not None and report["regret_s"] >= -0.005
