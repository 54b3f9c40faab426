"""End-to-end overhead and prediction accuracy of the task pipeline, with real processes.

Part 1 (overhead): submit->reply latency of a no-op `echo` placed locally, on a neighbour and
on the cloud, beside the raw MQTT request/reply round trip on the same broker (a responder
that answers at once, same client library and QoS) and a `mosquitto_rr` process run.
Goals: local overhead <= 2 ms p50; neighbour <= 2 x raw MQTT round trip + 2 ms.

Part 2 (prediction): a steady sequential workload per task type; after 50 warm-up tasks per
type, the median |actual - predicted| latency of the next ones, as a share of the median
actual latency. Goal: <= 25 %.

Each placement has its own topic prefix, so a node only sees the neighbour it is meant to use:
  pl: L alone                      (echo runs locally)
  pn: N (slot held by a long local-only sleep) + B   (echo goes to B)
  pc: C (slot held the same way) with cloud.url -> the cloud node   (echo goes to the cloud)
Run: .venv/bin/python benchmarks/bench_e2e.py [--n 300] [--skip-prediction]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgesched.adapters.metrics import Metrics  # noqa: E402
from edgesched.adapters.mqtt import InboundMessage, MqttClient, MqttOptions  # noqa: E402
from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.nodes import NodeProcess, wait_until  # noqa: E402

HOLD = {"handler": "builtin:sleep", "offload": "local"}
ONE_SLOT = {"slots": 1, "process_workers": 1}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Requester:
    """One MQTT connection that sends a request and awaits the reply on its own topic."""

    def __init__(self, broker: Mosquitto) -> None:
        self.token = uuid.uuid4().hex[:8]
        self.reply_topic = f"bench/{self.token}/reply"
        self._waiting: asyncio.Future[bytes] | None = None
        self.client = MqttClient(MqttOptions(host=broker.host, port=broker.port,
                                             client_id=f"bench-{self.token}"), Metrics())

    async def __aenter__(self) -> Requester:
        await self.client.subscribe(self.reply_topic, self._on_reply, qos=1)
        await self.client.__aenter__()
        async with asyncio.timeout(10):
            await self.client.wait_connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(*exc)

    async def _on_reply(self, msg: InboundMessage) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(msg.payload)

    async def call(self, topic: str, payload: bytes) -> tuple[float, bytes]:
        self._waiting = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        await self.client.publish(topic, payload, qos=1, response_topic=self.reply_topic,
                                  correlation_data=b"x")
        async with asyncio.timeout(30):
            reply = await self._waiting
        return time.perf_counter() - started, reply


async def raw_rtts(broker: Mosquitto, n: int) -> list[float]:
    """The broker round trip alone: a responder that publishes the reply at once."""
    responder = MqttClient(MqttOptions(host=broker.host, port=broker.port,
                                       client_id="bench-responder"), Metrics())

    async def answer(msg: InboundMessage) -> None:
        assert msg.response_topic
        await responder.publish(msg.response_topic, msg.payload, qos=1,
                                correlation_data=msg.correlation_data)

    await responder.subscribe("bench/raw/request", answer, qos=1)
    async with responder, Requester(broker) as req:
        await asyncio.wait_for(responder.wait_connected(), 10)
        times = [(await req.call("bench/raw/request", b'{"v":1}'))[0] for _ in range(n + 30)]
    return times[30:]


async def echo_latencies(broker: Mosquitto, prefix: str, node: str, n: int,
                         expect: str) -> list[float]:
    doc = {"v": 1, "type": "echo", "input": None}
    times: list[float] = []
    async with Requester(broker) as req:
        for i in range(n + 50):
            elapsed, payload = await req.call(f"{prefix}/node/{node}/submit",
                                              json.dumps(doc).encode())
            reply = json.loads(payload)
            if reply["status"] != "ok" or reply["placement"] != expect:
                raise RuntimeError(f"echo via {node} was not placed {expect}: {reply}")
            if i >= 50:  # warm-up: connections, estimators
                times.append(elapsed)
    return times


def mosquitto_rr_once(broker: Mosquitto, prefix: str, node: str) -> float:
    started = time.perf_counter()
    subprocess.run(["mosquitto_rr", "-p", str(broker.port), "-t", f"{prefix}/node/{node}/submit",
                    "-e", f"bench/rr/{uuid.uuid4().hex[:6]}", "-q", "1", "-W", "10",
                    "-m", '{"v":1,"type":"echo","input":null}'],
                   check=True, capture_output=True, timeout=20)
    return time.perf_counter() - started


def start_nodes(workdir: Path, broker: Mosquitto) -> dict[str, NodeProcess]:
    def node(node_id: str, prefix: str, **extra: Any) -> NodeProcess:
        overrides = {"mqtt": {"topic_prefix": prefix}, "executor": ONE_SLOT,
                     "log": {"level": "WARNING"}, **extra}
        return NodeProcess(workdir, node_id, broker=broker, overrides=overrides).start()

    cloud = node("cloud", "pcloud", role="cloud")
    nodes = {
        "L": node("L", "pl"), "B": node("B", "pn"),
        "N": node("N", "pn", task_types={"hold": HOLD}),
        "C": node("C", "pc", task_types={"hold": HOLD}, cloud={"url": cloud.base_url}),
        "cloud": cloud,
    }
    wait_until(lambda: nodes["N"].neighbour_status().get("B") == "online", 15, what="N sees B")
    for origin, prefix in (("N", "pn"), ("C", "pc")):  # hold the origin's only slot (10 min)
        for _ in range(10):
            body = json.dumps({"type": "hold", "input": {"seconds": 60}})
            subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-q", "1", "-t",
                            f"{prefix}/node/{origin}/submit", "-m", body], check=True,
                           timeout=10)
        wait_until(lambda o=origin: nodes[o].status()["tasks"]["running"] == 1, 10,
                   what=f"{origin} busy")
    return nodes


def status_record(node: NodeProcess, task_id: str) -> dict[str, Any] | None:
    with urllib.request.urlopen(node.base_url + "/v1/status", timeout=5) as resp:
        doc = json.loads(resp.read())
    for record in doc["scheduler"]["decisions"]:
        if record["id"] == task_id:
            return dict(record)
    return None


WORKLOAD = {
    "echo": {"x": 1},
    "hash": {"data": "bench", "rounds": 100_000},
    "matmul": {"n": 200, "seed": 3},
    "sleep": {"seconds": 0.05},
}


def prediction(node: NodeProcess, warmup: int,
               measured: int) -> dict[str, tuple[float, float, float, float]]:
    """Per type, after `warmup` tasks each: median |actual - predicted|, median actual,
    median signed error (bias), and the median |actual - median actual| (the spread that no
    predictor of a single number can beat)."""
    errors: dict[str, list[float]] = {t: [] for t in WORKLOAD}
    signed: dict[str, list[float]] = {t: [] for t in WORKLOAD}
    actuals: dict[str, list[float]] = {t: [] for t in WORKLOAD}
    for i in range(warmup + measured):
        for name, value in WORKLOAD.items():
            task_id = f"p-{name}-{i}"
            body = json.dumps({"id": task_id, "type": name, "input": value}).encode()
            req = urllib.request.Request(node.base_url + "/v1/tasks", data=body, method="POST")
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert json.loads(resp.read())["status"] == "ok"
            record = status_record(node, task_id)
            if i >= warmup and record and record["actual_s"] is not None:
                errors[name].append(abs(record["actual_s"] - record["predicted_s"]))
                signed[name].append(record["actual_s"] - record["predicted_s"])
                actuals[name].append(record["actual_s"])
    out = {}
    for t in WORKLOAD:
        mid = statistics.median(actuals[t])
        spread = statistics.median(abs(a - mid) for a in actuals[t])
        out[t] = (statistics.median(errors[t]), mid, statistics.median(signed[t]), spread)
    return out


async def overhead(broker: Mosquitto, n: int) -> None:
    raw = await raw_rtts(broker, n)
    rows = [("raw MQTT request/reply", raw)]
    for label, prefix, node, placement in (("echo local (L)", "pl", "L", "local"),
                                           ("echo neighbour (N->B)", "pn", "N", "neighbour"),
                                           ("echo cloud (C->cloud)", "pc", "C", "cloud")):
        rows.append((label, await echo_latencies(broker, prefix, node, n, placement)))
    raw_p50 = statistics.median(raw)
    print(f"\nsubmit->reply latency, {n} sequential requests each (after warm-up), ms")
    print(f"{'path':28} {'p50':>8} {'p99':>8} {'p50 - raw':>10}")
    for label, times in rows:
        p50, p99 = statistics.median(times) * 1e3, pct(times, 0.99) * 1e3
        print(f"{label:28} {p50:8.3f} {p99:8.3f} {p50 - raw_p50 * 1e3:10.3f}")
    local = statistics.median(rows[1][1]) - raw_p50
    neighbour = statistics.median(rows[2][1])
    print(f"goal local overhead <= 2 ms p50: {local * 1e3:.3f} ms "
          f"-> {'met' if local <= 0.002 else 'NOT met'}")
    limit = 2 * raw_p50 + 0.002
    print(f"goal neighbour p50 <= 2 x raw + 2 ms = {limit * 1e3:.3f} ms: "
          f"{neighbour * 1e3:.3f} ms -> {'met' if neighbour <= limit else 'NOT met'}")
    rr = [mosquitto_rr_once(broker, "pl", "L") for _ in range(5)]
    print(f"(mosquitto_rr process, connect included, echo on L: median "
          f"{statistics.median(rr) * 1e3:.1f} ms over 5 runs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="measured requests per path")
    parser.add_argument("--skip-prediction", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--measured", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # Without TCP_NODELAY the broker's small writes wait for delayed ACKs (~40 ms a hop).
        broker = Mosquitto(workdir=workdir, extra_conf="set_tcp_nodelay true\n")
        broker.start()
        nodes: dict[str, NodeProcess] = {}
        try:
            nodes = start_nodes(workdir, broker)
            if not args.skip_overhead:
                asyncio.run(overhead(broker, args.n))
            if not args.skip_prediction:
                result = prediction(nodes["L"], args.warmup, args.measured)
                print(f"\nprediction on a steady workload ({args.warmup} warm-up, "
                      f"{args.measured} measured per type, run locally on L)")
                print(f"{'type':8} {'median |err| ms':>16} {'median actual ms':>17} "
                      f"{'share':>7} {'bias ms':>9} {'spread ms':>10}")
                for name, (err, actual, bias, spread) in result.items():
                    share = err / actual if actual > 0 else float("inf")
                    print(f"{name:8} {err * 1e3:16.3f} {actual * 1e3:17.3f} {share:7.1%} "
                          f"{bias * 1e3:9.3f} {spread * 1e3:10.3f} "
                          f"{'(goal <= 25% met)' if share <= 0.25 else '(goal NOT met)'}")
        finally:
            for node in nodes.values():
                node.terminate(timeout=5)
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
