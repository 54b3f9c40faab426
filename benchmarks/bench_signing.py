"""What signed node-to-node messages cost (issue #14): the neighbour round trip and ingest.

Part 1 (neighbour offload): submit->reply latency of a no-op `echo` that the origin must hand
to its neighbour (its only slot is held by a local-only sleep, queue 0), on two otherwise
identical pairs of real nodes on one mosquitto: one pair unsigned, one with
`security.key_file`/`trust_dir`. The pairs take turns in rounds so a drifting machine affects
both alike. Goal: signing adds <= 0.5 ms to the p50.

Part 2 (ingest): signed node telemetry from 20 trusted (fake) nodes, pre-signed and published
as fast as one paho client can, into a signing daemon; the rate at which the daemon verifies,
parses and counts them (`edgesched_telemetry_messages_total{kind="node"}`), beside the same
run unsigned into an unsigned daemon, and the verifier alone in-process. Goal: >= 5,000
signed messages/s.

    .venv/bin/python benchmarks/bench_signing.py [--n 200] [--rounds 3] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import paho.mqtt.client as paho  # noqa: E402
from bench_e2e import HOLD, echo_latencies, pct  # noqa: E402

from edgesched.adapters.signing import (  # noqa: E402
    Signer,
    load_private_key,
    load_security,
    write_node_keypair,
)
from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.nodes import NodeProcess, wait_until  # noqa: E402

HOLD_ONLY = {"slots": 1, "process_workers": 1, "queue_size": 0}
FAKE_NODES = 20


def start_pair(workdir: Path, broker: Mosquitto, prefix: str,
               keys: Path | None) -> dict[str, NodeProcess]:
    def node(node_id: str, **extra: Any) -> NodeProcess:
        overrides: dict[str, Any] = {"mqtt": {"topic_prefix": prefix}, "executor": HOLD_ONLY,
                                     "log": {"level": "WARNING"}, **extra}
        if keys is not None:
            overrides["security"] = {"key_file": str(keys / f"{node_id}.key"),
                                     "trust_dir": str(keys)}
        return NodeProcess(workdir, node_id, broker=broker, overrides=overrides).start()

    pair = {"B": node(f"{prefix}-b"), "N": node(f"{prefix}-n", task_types={"hold": HOLD})}
    wait_until(lambda: pair["N"].neighbour_status().get(f"{prefix}-b") == "online", 15,
               what=f"{prefix}: origin sees its neighbour")
    hold = paho.Client(paho.CallbackAPIVersion.VERSION2)
    hold.connect(broker.host, broker.port)
    hold.loop_start()
    body = json.dumps({"type": "hold", "input": {"seconds": 60}})  # the most sleep allows
    hold.publish(f"{prefix}/node/{prefix}-n/submit", body, qos=1).wait_for_publish(5)
    hold.loop_stop()
    hold.disconnect()
    wait_until(lambda: pair["N"].status()["tasks"]["running"] == 1, 10, what="origin busy")
    return pair


async def neighbour_rounds(broker: Mosquitto, n: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"unsigned": [], "signed": []}
    for _ in range(rounds):
        for label, prefix in (("unsigned", "pu"), ("signed", "ps")):
            times[label] += await echo_latencies(broker, prefix, f"{prefix}-n", n, "neighbour")
    return times


def telemetry(node_id: str, i: int) -> bytes:
    return json.dumps({"v": 1, "node_id": node_id, "incarnation": 1, "ts": time.time(),
                       "cpu_util": 0.1, "running": i % 3, "queued": 0, "slots": 4,
                       "est_wait_s": 0.0}).encode()


def counted(node: NodeProcess) -> tuple[float, float]:
    """(verified and parsed, skipped unverified because a newer one of its node was queued)."""
    handled = node.metric("edgesched_telemetry_messages_total", kind="node") or 0.0
    superseded = node.metric("edgesched_mqtt_messages_dropped_total", reason="superseded")
    return handled, superseded or 0.0


def ingest_rate(broker: Mosquitto, daemon: NodeProcess, prefix: str,
                messages: list[tuple[str, bytes]]) -> tuple[float, float]:
    """(messages/s the daemon took in, share of them verified one by one), from the first
    publish to the last one counted. Node telemetry is conflated (the newest per node wins):
    when the daemon falls behind, a message with a newer one of its node queued is skipped
    before its signature is checked."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-{prefix}")
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    before = counted(daemon)
    started = time.perf_counter()
    for topic, payload in messages:
        client.publish(topic, payload, qos=0)
    last, last_at = 0.0, time.perf_counter()
    verified = 0.0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.05)
        handled, superseded = counted(daemon)
        now = handled + superseded - sum(before)
        if now > last:
            last, last_at, verified = now, time.perf_counter(), handled - before[0]
        elif now >= len(messages) or time.perf_counter() - last_at > 2:
            break
    client.loop_stop()
    client.disconnect()
    if last < 0.99 * len(messages):
        print(f"  ({prefix}: {len(messages) - last:.0f} of {len(messages)} never reached the "
              "daemon's handler: a full queue or the broker dropped them)")
    return last / (last_at - started), verified / max(last, 1.0)


def ingest(workdir: Path, broker: Mosquitto, count: int) -> None:
    keys = workdir / "fleet-keys"
    fakes = [f"f{i:02d}" for i in range(FAKE_NODES)]
    for node_id in [*fakes, "ingest-s"]:
        write_node_keypair(node_id, keys)
    signers = {f: Signer(f, load_private_key(keys / f"{f}.key")) for f in fakes}
    plain = NodeProcess(workdir, "ingest-u", broker=broker, overrides={
        "mqtt": {"topic_prefix": "iu"}, "log": {"level": "WARNING"}}).start()
    signed = NodeProcess(workdir, "ingest-s", broker=broker, overrides={
        "mqtt": {"topic_prefix": "is"}, "log": {"level": "WARNING"},
        "security": {"key_file": str(keys / "ingest-s.key"), "trust_dir": str(keys)}}).start()
    try:
        unsigned_msgs = [(f"iu/node/{fakes[i % FAKE_NODES]}/telemetry",
                          telemetry(fakes[i % FAKE_NODES], i)) for i in range(count)]
        t0 = time.perf_counter()
        signed_msgs = []
        for i in range(count):
            node_id = fakes[i % FAKE_NODES]
            topic = f"is/node/{node_id}/telemetry"
            signed_msgs.append((topic, signers[node_id].sign(topic, telemetry(node_id, i))))
        sign_rate = count / (time.perf_counter() - t0)
        u_rate, u_share = ingest_rate(broker, plain, "iu", unsigned_msgs)
        s_rate, s_share = ingest_rate(broker, signed, "is", signed_msgs)
    finally:
        plain.terminate()
        signed.terminate()
    sec = load_security("ingest-s", keys / "ingest-s.key", keys, max_skew_s=300)
    t0 = time.perf_counter()
    for topic, payload in signed_msgs:
        sec.verifier.verify(topic, payload)
    verify_rate = count / (time.perf_counter() - t0)
    print(f"\ningest of node telemetry, {count} messages from {FAKE_NODES} nodes, messages/s")
    print(f"  daemon, unsigned:            {u_rate:9.0f}  ({u_share:.0%} parsed one by one)")
    print(f"  daemon, signed:              {s_rate:9.0f}  ({s_share:.0%} verified one by one, "
          f"the rest superseded) -> goal >= 5,000: {'met' if s_rate >= 5000 else 'NOT met'}")
    print(f"  verifier alone, in-process:  {verify_rate:9.0f}")
    print(f"  signer alone, in-process:    {sign_rate:9.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="measured requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]} ({sys.executable})")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir=workdir, extra_conf="max_queued_messages 100000\n")
        broker.start()
        nodes: list[NodeProcess] = []
        try:
            keys = workdir / "keys"
            for node_id in ("ps-n", "ps-b"):
                write_node_keypair(node_id, keys)
            nodes += start_pair(workdir, broker, "pu", None).values()
            nodes += start_pair(workdir, broker, "ps", keys).values()
            times = asyncio.run(neighbour_rounds(broker, args.n, args.rounds))
            print(f"\necho handed to the neighbour, {args.rounds} rounds x {args.n} "
                  "sequential requests per variant, ms")
            print(f"{'variant':10} {'p50':>8} {'p99':>8}")
            for label, values in times.items():
                print(f"{label:10} {statistics.median(values) * 1e3:8.3f} "
                      f"{pct(values, 0.99) * 1e3:8.3f}")
            added = statistics.median(times["signed"]) - statistics.median(times["unsigned"])
            print(f"signing adds {added * 1e3:.3f} ms to the p50 -> goal <= 0.5 ms: "
                  f"{'met' if added <= 0.0005 else 'NOT met'}")
            ingest(workdir, broker, args.messages)
        finally:
            for node in nodes:
                node.terminate()
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
