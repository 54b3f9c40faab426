"""What the durable spool costs on the local echo path over MQTT (issue #15 part 2).

The same edge node (echo local, 2 slots) is run without `state_dir` (no spool) and with it
(spool in a temporary directory on the same disk as the test); each configuration is run
`--rounds` times, alternating, on one real mosquitto. Per run:

- p50 / p90 latency of `--n` sequential echo submissions (submit -> reply at the client);
- throughput: `--burst` submissions published with `--window` in flight, tasks/s from the
  first publish to the last reply.

Goals: the spool adds <= 1 ms to the p50 and keeps >= 0.7x the throughput without it.
Run: .venv/bin/python benchmarks/bench_spool.py [--n 300] [--burst 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.client import TaskClient  # noqa: E402
from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.nodes import NodeProcess  # noqa: E402


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (noise-proof on a shared box)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_run(broker: Mosquitto, workdir: Path, spool: bool, n: int, burst: int,
                  window: int) -> dict[str, float]:
    overrides: dict[str, Any] = {
        "executor": {"slots": 2, "queue_size": 4096},
        "task_types": {"echo": {"offload": "local"}},
        "log": {"level": "WARNING"},
    }
    if spool:
        overrides["state_dir"] = str(workdir / "state")
    node = NodeProcess(workdir, "S" if spool else "P", broker=broker, overrides=overrides)
    await asyncio.to_thread(node.start)
    try:
        async with TaskClient(broker) as client:
            for i in range(50):  # warm-up
                await client.wait_all([await client.submit(node.node_id, {
                    "type": "echo", "input": i})], within_s=10)
            lat = []
            for i in range(n):
                t0 = time.perf_counter()
                key = await client.submit(node.node_id, {"type": "echo", "input": i})
                await client.wait_all([key], within_s=10)
                lat.append(time.perf_counter() - t0)
            sem = asyncio.Semaphore(window)
            keys: list[str] = []

            async def send(i: int) -> None:
                async with sem:
                    key = await client.submit(node.node_id, {"type": "echo", "input": i})
                    keys.append(key)
                    await client.wait_all([key], within_s=60)

            assert node.proc is not None
            c0 = cpu_s(node.proc.pid)
            t0 = time.perf_counter()
            await asyncio.gather(*(send(i) for i in range(burst)))
            took = time.perf_counter() - t0
            cpu_us = (cpu_s(node.proc.pid) - c0) / burst * 1e6
            bad = sum(1 for k in keys if len(client.replies[k]) != 1)
            spooled = node.metric("edgesched_spool_tasks") or 0.0
    finally:
        await asyncio.to_thread(node.terminate, 10)
    return {"p50_ms": pct(lat, 0.5) * 1e3, "p90_ms": pct(lat, 0.9) * 1e3,
            "tasks_s": burst / took, "cpu_us": cpu_us, "not_once": bad, "left_in_spool": spooled}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--burst", type=int, default=2000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt's "pending publish calls"
    with tempfile.TemporaryDirectory(prefix="bench-spool-", dir=str(REPO / ".bench-tmp")
                                     if (REPO / ".bench-tmp").is_dir() else None) as tmp:
        work = Path(tmp)
        broker = Mosquitto(workdir=work)
        broker.start()
        results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        try:
            for r in range(args.rounds):
                for spool in (False, True):
                    run_dir = work / f"{r}-{int(spool)}"
                    run_dir.mkdir()
                    res = await one_run(broker, run_dir, spool, args.n, args.burst,
                                        args.window)
                    results[spool].append(res)
                    print(f"round {r + 1} {'spool   ' if spool else 'no spool'}: "
                          f"p50 {res['p50_ms']:.3f} ms, p90 {res['p90_ms']:.3f} ms, "
                          f"{res['tasks_s']:.0f} tasks/s, node CPU {res['cpu_us']:.0f} us/task, "
                          f"not answered once: "
                          f"{res['not_once']:g}", flush=True)
        finally:
            broker.stop()
    base_p50 = statistics.median(x["p50_ms"] for x in results[False])
    spool_p50 = statistics.median(x["p50_ms"] for x in results[True])
    base_tps = statistics.median(x["tasks_s"] for x in results[False])
    spool_tps = statistics.median(x["tasks_s"] for x in results[True])
    base_cpu = statistics.median(x["cpu_us"] for x in results[False])
    spool_cpu = statistics.median(x["cpu_us"] for x in results[True])
    best_base = max(x["tasks_s"] for x in results[False])
    best_spool = max(x["tasks_s"] for x in results[True])
    print(f"\nnode CPU per task (median): {base_cpu:.0f} -> {spool_cpu:.0f} us "
          f"(CPU-bound throughput ratio {base_cpu / spool_cpu:.2f}x); best run: "
          f"{best_base:.0f} -> {best_spool:.0f} tasks/s ({best_spool / best_base:.2f}x)")
    print(f"median of {args.rounds} rounds: p50 {base_p50:.3f} ms -> {spool_p50:.3f} ms "
          f"(+{spool_p50 - base_p50:.3f} ms; goal <= 1 ms); throughput {base_tps:.0f} -> "
          f"{spool_tps:.0f} tasks/s ({spool_tps / base_tps:.2f}x; goal >= 0.7x)")


if __name__ == "__main__":
    asyncio.run(main())
