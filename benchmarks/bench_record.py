"""What recording (`record.path`, issue #17) costs on the local echo path over MQTT.

The same edge node (echo local, 2 slots) is run without `record.path` and with it (a record
directory on the same disk), alternating, `--rounds` times each, each run on a real mosquitto
of its own. Per run: `--burst` echo submissions published with `--window` in flight, tasks/s
from the first publish to the last reply, and the node's CPU time per task (user + system,
from /proc: less sensitive than wall time to the other work on a shared box), and that of the
node's threads other than the event loop's (the recorder's worker thread compresses and
writes). With recording, the run also reads how many tasks were written
(`edgesched_decisions_recorded_total`).

The node is pinned to one core and the broker and the load client to the other (on a 2-core
box unpinned runs of the *same* config differed by up to 25 % in throughput, depending on
which processes shared a core); the order of the two configs alternates from round to round.

Goal: recording keeps >= 0.95x the throughput without it (the issue's "<= 5 %").
Run: .venv/bin/python benchmarks/bench_record.py [--burst 3000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
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
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def other_threads_cpu_s(pid: int) -> float:
    """CPU seconds of the node's threads other than its event loop's (the main thread): the
    recorder's worker thread, the executor's, libuv's."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.name == str(pid):
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def pin(pid: int, cpus: set[int]) -> None:
    """Pin process `pid` and all its threads to `cpus` (no-op where not supported)."""
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cpus)
    except (OSError, AttributeError):
        pass


NODE_CPU = {0}
OTHER_CPUS = {1} if (os.cpu_count() or 1) > 1 else {0}


async def one_run(broker: Mosquitto, workdir: Path, record: bool, burst: int,
                  window: int, rate: float) -> dict[str, float]:
    overrides: dict[str, Any] = {
        "executor": {"slots": 2, "queue_size": 4096},
        "task_types": {"echo": {"offload": "local"}},
        "log": {"level": "WARNING"},
    }
    if record:
        overrides["record"] = {"path": str(workdir / "record")}
    node = NodeProcess(workdir, "R" if record else "P", broker=broker, overrides=overrides)
    await asyncio.to_thread(node.start)
    try:
        async with TaskClient(broker) as client:
            for i in range(100):  # warm-up
                await client.wait_all([await client.submit(node.node_id, {
                    "type": "echo", "input": i})], within_s=10)
            sem = asyncio.Semaphore(window)

            start = asyncio.get_running_loop().time() + 0.05

            async def send(i: int) -> None:
                if rate > 0:  # paced: the i-th submission at its time
                    await asyncio.sleep(max(0.0, start + i / rate
                                            - asyncio.get_running_loop().time()))
                async with sem:
                    key = await client.submit(node.node_id, {"type": "echo", "input": i})
                    await client.wait_all([key], within_s=60)

            assert node.proc is not None
            pid = node.proc.pid
            pin(pid, NODE_CPU)
            c0, o0 = cpu_s(pid), other_threads_cpu_s(pid)
            t0 = time.perf_counter()
            await asyncio.gather(*(send(i) for i in range(burst)))
            took = time.perf_counter() - t0
            cpu_us = (cpu_s(pid) - c0) / burst * 1e6
            threads_us = (other_threads_cpu_s(pid) - o0) / burst * 1e6
            await asyncio.sleep(1.0)  # the recorder's last batch
            recorded = node.metric("edgesched_decisions_recorded_total") or 0.0
            dropped = node.metric("edgesched_record_dropped_total", reason="buffer_full") or 0.0
    finally:
        await asyncio.to_thread(node.terminate, 10)
    size = sum(f.stat().st_size for f in (workdir / "record").glob("*")) if record else 0
    return {"tasks_s": burst / took, "cpu_us": cpu_us, "threads_us": threads_us,
            "recorded": recorded,
            "dropped": dropped, "bytes": size}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--burst", type=int, default=3000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.0,
                    help="submissions/s (default 0: as fast as the window allows)")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-record-") as tmp:
        work = Path(tmp)
        pin(os.getpid(), OTHER_CPUS)
        results: dict[bool, list[dict[str, float]]] = {False: [], True: []}
        for r in range(args.rounds):
            for record in ((False, True) if r % 2 == 0 else (True, False)):
                run_dir = work / f"{r}-{int(record)}"
                run_dir.mkdir()
                # a broker of its own per run: one shared by every run kept the earlier
                # runs' nodes in its retained state, and each node saw them as neighbours
                # (a second candidate in every decision and every recorded line)
                broker = Mosquitto(workdir=run_dir)
                broker.start()
                try:
                    assert broker.proc is not None
                    pin(broker.proc.pid, OTHER_CPUS)
                    res = await one_run(broker, run_dir, record, args.burst, args.window,
                                        args.rate)
                finally:
                    broker.stop()
                results[record].append(res)
                extra = (f", recorded {res['recorded']:.0f} (dropped {res['dropped']:.0f}),"
                         f" {res['bytes'] / max(res['recorded'], 1):.0f} B/task on disk"
                         if record else "")
                print(f"round {r + 1} {'record   ' if record else 'no record'}: "
                      f"{res['tasks_s']:.0f} tasks/s, node CPU {res['cpu_us']:.0f} us/task "
                      f"(threads other than the loop's {res['threads_us']:.0f})"
                      f"{extra}", flush=True)
    for record in (False, True):
        rates = sorted(round(x["tasks_s"]) for x in results[record])
        print(f"{'record' if record else 'no record'}: tasks/s by round, sorted: {rates}")
    base = statistics.median(x["tasks_s"] for x in results[False])
    rec = statistics.median(x["tasks_s"] for x in results[True])
    base_cpu = statistics.median(x["cpu_us"] for x in results[False])
    rec_cpu = statistics.median(x["cpu_us"] for x in results[True])
    threads = statistics.median(x["threads_us"] for x in results[True]) - statistics.median(
        x["threads_us"] for x in results[False])
    print(f"\nthe node's threads other than the event loop's: +{threads:.0f} us/task with "
          "recording (its worker thread)")
    print(f"median of {args.rounds} rounds: {base:.0f} -> {rec:.0f} tasks/s "
          f"(ratio {rec / base:.3f}; goal >= 0.95); node CPU per task {base_cpu:.0f} -> "
          f"{rec_cpu:.0f} us (CPU-bound throughput ratio {base_cpu / rec_cpu:.3f})")
    # each round's two runs are next to each other in time: their ratio is less exposed to
    # what else the host does over the whole benchmark
    pairs = list(zip(results[False], results[True], strict=True))
    paired = statistics.median(rec["tasks_s"] / base["tasks_s"] for base, rec in pairs)
    paired_cpu = statistics.median(base["cpu_us"] / rec["cpu_us"] for base, rec in pairs)
    print(f"median of the {len(pairs)} rounds' own ratios: throughput {paired:.3f}, "
          f"CPU-bound {paired_cpu:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
