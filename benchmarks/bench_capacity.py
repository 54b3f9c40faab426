"""One node's capacity for local `echo` over MQTT v5, and what happens at twice it (issue 19).

1. Capacity: a paho MQTT v5 client on this box submits `echo` tasks (QoS 1, Response Topic +
   Correlation Data) at a paced offered rate, stepped up; a step holds when every submission
   got its reply and the p99 submit->reply latency is <= 50 ms. The node's capacity is the
   highest rate that holds. The same steps run against a bare aiomqtt request/reply responder
   (a process that answers each request with a concurrent QoS 1 publish, no parsing) on the
   same broker in the same run; the ratio node / bare is the figure (goal >= 0.8).
2. Overload: twice the node's capacity for `--overload-s` seconds (default 30): every
   submission must get exactly one reply (no broker drop, no node drop), the accepted (`ok`)
   ones p99 <= 250 ms, the others `rejected` with reason `overloaded`; RSS growth <= 30 MB.
   Its load is mosquitto_pub / mosquitto_sub (`CLoad`): at twice a capacity near the bare
   responder's, the paho load took more than half the box.

The broker is a real mosquitto with `set_tcp_nodelay true` (tests/support/broker.py). The
client, broker and node share the machine's cores: the figures are the whole box's.

Run: .venv/bin/python benchmarks/bench_capacity.py [--step-s 4] [--rates 400,600,...]
     [--overload-s 30] [--skip-bare] [--profile] [--node-only]
`--profile` runs the node under cProfile for the capacity steps and prints its top functions.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.nodes import NodeProcess, wait_until  # noqa: E402

P99_GOAL_S = 0.050
OVERLOAD_P99_GOAL_S = 0.250
DEFAULT_RATES = (400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000, 2400, 2800)

# A bare request/reply responder: every request answered by a concurrent QoS 1 publish of a
# fixed small body to its Response Topic with its Correlation Data; nothing is parsed. Its
# socket has TCP_NODELAY, as the node's has (without it each reply waits ~40 ms for Nagle);
# otherwise aiomqtt's defaults.
BARE = r"""
import asyncio, socket, sys
import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

async def main():
    host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    body = b'{"v":1,"status":"ok","result":null}'
    pending = set()
    nodelay = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)  # as the node's adapter sets
    async with aiomqtt.Client(host, port, protocol=aiomqtt.ProtocolVersion.V5,
                              identifier="bare-responder", socket_options=nodelay) as client:
        await client.subscribe(topic, qos=1)
        print("ready", flush=True)
        async for msg in client.messages:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = msg.properties.CorrelationData
            task = asyncio.create_task(client.publish(msg.properties.ResponseTopic, body,
                                                      qos=1, properties=props))
            pending.add(task)
            task.add_done_callback(pending.discard)

asyncio.run(main())
"""


# The submitting side: paced QoS 1 publishes in 5 ms batches, each with a Response Topic and
# its key as Correlation Data; writes {key: monotonic send time} (the clock is system-wide).
PUBLISHER = r"""
import json, socket, sys, time
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
host, port, topic, reply_topic, token = sys.argv[1:6]
first, total, rate = int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8])
body, out = sys.argv[9].encode(), sys.argv[10]
client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
client.max_inflight_messages_set(0)
client.max_queued_messages_set(0)
client.connect(host, int(port), keepalive=30)
client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
client.loop_start()
sent = {}
start = time.monotonic()
i = 0
while i < total:
    due = min(total, int((time.monotonic() - start) * rate) + 1)
    while i < due:
        key = f"{token}-{first + i}"
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = key.encode()
        sent[key] = time.monotonic()
        client.publish(topic, body, qos=1, properties=props)
        i += 1
    time.sleep(0.005)
time.sleep(0.5)  # let paho write what it queued
client.disconnect()
client.loop_stop()
with open(out, "w") as f:
    json.dump(sent, f)
"""


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Replies:
    """What a load sent (key -> send time) and got back (key -> [(arrival time, payload)]),
    and the figures of a run from them; `Load` and `CLoad` submit and receive."""

    def __init__(self, broker: Mosquitto) -> None:
        self.host, self.port = broker.host, broker.port
        self.count = 0
        self.token = uuid.uuid4().hex[:8]
        self.reply_topic = f"bench/{self.token}/reply"
        self.lock = threading.Lock()
        self.sent: dict[bytes, float] = {}
        self.replies: dict[bytes, list[tuple[float, bytes]]] = {}

    def sent_rate(self, keys: list[bytes]) -> float:
        """Submissions per second, from the first send to the last."""
        with self.lock:
            times = [self.sent[k] for k in keys]
        return (len(times) - 1) / max(1e-9, max(times) - min(times))

    def settle(self, keys: list[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(k in self.replies for k in keys):
                    break
            time.sleep(0.05)
        time.sleep(0.3)  # a late duplicate has time to show

    def summary(self, keys: list[bytes]) -> dict[str, Any]:
        with self.lock:
            got = {k: list(self.replies.get(k, [])) for k in keys}
            sent = {k: self.sent[k] for k in keys}
        latencies = [got[k][0][0] - sent[k] for k in keys if got[k]]
        missing = sum(1 for k in keys if not got[k])
        dupes = sum(max(0, len(got[k]) - 1) for k in keys)
        return {"n": len(keys), "answered": len(latencies), "missing": missing,
                "duplicates": dupes, "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99),
                "got": got, "sent": sent}


class Load(Replies):
    """Receives the replies (a paho MQTT v5 client, by correlation); `run` submits them."""

    def __init__(self, broker: Mosquitto) -> None:
        super().__init__(broker)
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"load-{self.token}", protocol=paho.MQTTv5)
        self.client.max_inflight_messages_set(65535)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        # Receive Maximum: QoS 1 replies the broker may send before our PUBACKs (without it
        # mosquitto sends 20, queues 1000 per client and drops the rest of a burst)
        connect = Properties(PacketTypes.CONNECT)
        connect.ReceiveMaximum = 65535
        self.client.connect(broker.host, broker.port, keepalive=30, properties=connect)
        sock = self.client.socket()
        assert sock is not None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # paho does not set it
        self.client.loop_start()
        self.client.subscribe(self.reply_topic, qos=1)
        if not self.subscribed.wait(10):
            raise TimeoutError("load client not subscribed")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        now = time.monotonic()
        key = msg.properties.CorrelationData  # type: ignore[union-attr]
        with self.lock:
            self.replies.setdefault(key, []).append((now, msg.payload))

    def run(self, topic: str, rate: float, seconds: float, body: bytes) -> list[bytes]:
        """Submit at `rate`/s for `seconds` from a publisher process of its own (so the
        receiving client here never waits for the sending one's GIL); returns the keys."""
        first = self.count
        total = int(rate * seconds)
        self.count += total
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            subprocess.run(
                [sys.executable, "-c", PUBLISHER, self.host, str(self.port), topic,
                 self.reply_topic, self.token, str(first), str(total), str(rate),
                 body.decode(), out.name], check=True, timeout=seconds + 60)
            sent = json.loads(Path(out.name).read_text())
        with self.lock:
            self.sent.update({k.encode(): t for k, t in sent.items()})
        return [f"{self.token}-{i}".encode() for i in range(first, first + total)]

class CLoad(Replies):
    """The overload phase's load: mosquitto_pub and mosquitto_sub (C) instead of paho.

    At twice a node's capacity the paho publisher and this process's paho receiver took
    ~1.1 of the box's 2 cores (and mosquitto 0.3): the node was measured on what they left.
    Here one mosquitto_pub publishes the submissions this process writes to it, paced, one
    per line (QoS 1, v5 Response Topic, each with an `id` of its own), and one mosquitto_sub
    prints each reply with its arrival time; replies are matched by `id`. Times are the wall
    clock (mosquitto_sub's `%U`)."""

    def __init__(self, broker: Mosquitto) -> None:
        super().__init__(broker)
        self.sub = subprocess.Popen(
            ["mosquitto_sub", "-h", self.host, "-p", str(self.port), "-V", "5", "-q", "1",
             "-t", self.reply_topic, "-F", "%U %p", "-D", "CONNECT", "receive-maximum",
             "65535"], stdout=subprocess.PIPE)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        probe = b"probe-" + self.token.encode()
        wait_until(lambda: self._probe(probe), 10, 0.2, "mosquitto_sub subscribed")

    def _probe(self, key: bytes) -> bool:
        subprocess.run(["mosquitto_pub", "-h", self.host, "-p", str(self.port), "-t",
                        self.reply_topic, "-m", json.dumps({"id": key.decode()})],
                       check=True, timeout=5)
        time.sleep(0.1)
        with self.lock:
            return key in self.replies

    def _read(self) -> None:
        assert self.sub.stdout is not None
        for line in self.sub.stdout:
            stamp, _, payload = line.rstrip(b"\n").partition(b" ")
            try:
                key = json.loads(payload)["id"].encode()
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            with self.lock:
                self.replies.setdefault(key, []).append((float(stamp), payload))

    def close(self) -> None:
        self.sub.terminate()
        self.sub.wait(5)

    def run(self, topic: str, rate: float, seconds: float, body: bytes) -> list[bytes]:
        doc = json.loads(body)
        first, total = self.count, int(rate * seconds)
        self.count += total
        pub = subprocess.Popen(
            ["mosquitto_pub", "-h", self.host, "-p", str(self.port), "-V", "5", "-q", "1",
             "-M", "65535", "-t", topic, "-l", "-D", "PUBLISH", "response-topic",
             self.reply_topic], stdin=subprocess.PIPE)
        assert pub.stdin is not None
        keys: list[bytes] = []
        sent: dict[bytes, float] = {}
        start = time.monotonic()
        i = 0
        while i < total:  # in 5 ms batches, as the paho publisher
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            lines = []
            now = time.time()
            while i < due:
                key = f"{self.token}-{first + i}"
                lines.append(json.dumps(dict(doc, id=key)))
                sent[key.encode()] = now
                keys.append(key.encode())
                i += 1
            pub.stdin.write(("\n".join(lines) + "\n").encode())
            pub.stdin.flush()
            time.sleep(0.005)
        pub.stdin.close()
        pub.wait(seconds + 60)
        with self.lock:
            self.sent.update(sent)
        return keys


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_step(load: Load, topic: str, body: bytes, rate: int, step_s: float, label: str,
             pid: int) -> bool:
    cpu_before = cpu_s(pid)
    keys = load.run(topic, rate, step_s, body)
    achieved = load.sent_rate(keys)
    load.settle(keys, timeout=max(5.0, step_s))
    per_task_us = (cpu_s(pid) - cpu_before) / len(keys) * 1e6
    s = load.summary(keys)
    refused = sum(1 for k in keys if s["got"][k] and b'"rejected"' in s["got"][k][0][1])
    held = (s["missing"] == 0 and s["duplicates"] == 0 and refused == 0
            and s["p99"] <= P99_GOAL_S)
    print(f"  {label:5s} {rate:5d}/s offered ({achieved:6.0f}/s sent): p50 "
          f"{s['p50'] * 1000:7.2f} ms p99 {s['p99'] * 1000:8.2f} ms, missing "
          f"{s['missing']}, duplicates {s['duplicates']}, rejected {refused}, CPU "
          f"{per_task_us:5.0f} us/task  {'held' if held else 'NOT held'}", flush=True)
    return bool(held)


def step_up(load: Load, topic: str, body: bytes, rates: list[int], step_s: float,
            label: str, pid: int) -> float:
    """The highest rate of `rates` with every reply in and p99 <= 50 ms (0 if none).

    A rate is run twice only when its first run fails (other work on the machine makes a
    single run's p99 noisy). Also prints the responder's CPU time per message: it moves less
    than the latencies when other work shares the cores, and 1 / it is roughly the rate one
    core could carry."""
    best = 0.0
    for rate in rates:
        for attempt in (1, 2):  # a step that fails is tried once more
            held = run_step(load, topic, body, rate, step_s, label, pid)
            time.sleep(1.0)
            if held:
                best = float(rate)
                break
            if attempt == 2:
                return best
    return best


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mosquitto_dropped(broker: Mosquitto) -> str:
    """mosquitto's own count of messages it dropped (from $SYS), or '?'."""
    try:
        out = subprocess.run(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-C", "1", "-W", "3",
             "-t", "$SYS/broker/publish/messages/dropped"],
            capture_output=True, text=True, timeout=6)
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def overload(load: Load | CLoad, node: NodeProcess, topic: str, body: bytes, rate: float,
             seconds: float) -> None:
    assert node.proc is not None
    rss_before = rss_mb(node.proc.pid)
    peak = [rss_before]
    halt = threading.Event()

    def sample() -> None:
        assert node.proc is not None
        while not halt.wait(0.5):
            peak.append(rss_mb(node.proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    keys = load.run(topic, rate, seconds, body)
    sent_s = len(keys) / load.sent_rate(keys)
    load.settle(keys, timeout=30)
    halt.set()
    sampler.join(2)
    rss_after = rss_mb(node.proc.pid)
    s = load.summary(keys)
    statuses: Counter[str] = Counter()
    ok_latency: list[float] = []
    node_latency: list[float] = []  # the node's own latency_s: from its socket read to reply
    for key in keys:
        replies = s["got"][key]
        if not replies:
            continue
        doc = json.loads(replies[0][1])
        status = doc["status"]
        if status == "rejected":
            status += ":" + ("overloaded" if "overloaded" in doc.get("error", "") else
                             doc.get("error", "")[:30])
        statuses[status] += 1
        if doc["status"] == "ok":
            ok_latency.append(replies[0][0] - s["sent"][key])
            node_latency.append(doc["latency_s"])
    print(f"overload: {rate:.0f}/s offered for {seconds:g} s ({len(keys) / sent_s:.0f}/s "
          f"sent): {s['n']} submitted, {s['answered']} answered, {s['missing']} missing, "
          f"{s['duplicates']} duplicates; {dict(statuses)}")
    print(f"  ok: {len(ok_latency) / sent_s:.0f}/s, p50 {pct(ok_latency, 0.5) * 1000:.1f} ms, "
          f"p99 {pct(ok_latency, 0.99) * 1000:.1f} ms (goal <= {OVERLOAD_P99_GOAL_S * 1000:.0f}"
          f"); all replies p99 {s['p99'] * 1000:.1f} ms; the node's latency_s of the ok ones "
          f"(after its socket read): p50 {pct(node_latency, 0.5) * 1000:.1f} ms, p99 "
          f"{pct(node_latency, 0.99) * 1000:.1f} ms")
    print(f"  node RSS {rss_before:.1f} -> {rss_after:.1f} MB (peak {max(peak):.1f}; goal: "
          f"growth <= 30 MB)")
    held = (s["missing"] == 0 and s["duplicates"] == 0
            and pct(ok_latency, 0.99) <= OVERLOAD_P99_GOAL_S and max(peak) - rss_before <= 30)
    print(f"  {'held' if held else 'NOT held'}")


def start_profiled(node: NodeProcess, out: Path) -> None:
    """`node` run under cProfile (written at its graceful stop)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGESCHED_")}
    env["PYTHONPATH"] = str(REPO)
    with node.log_path.open("ab") as log:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "edgesched", "run",
             "--config", str(node.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(node.workdir))
    node.wait_healthy(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--step-s", type=float, default=4.0)
    ap.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)))
    ap.add_argument("--overload-s", type=float, default=30.0)
    ap.add_argument("--skip-bare", action="store_true")
    ap.add_argument("--skip-overload", action="store_true")
    ap.add_argument("--profile", action="store_true", help="cProfile the node's capacity steps")
    ap.add_argument("--overload-rate", type=float, default=None,
                    help="the overload phase's rate (default: twice the node's capacity)")
    ap.add_argument("--shed-after", type=float, default=None,
                    help="the node's intake.shed_after_s (default: the node's default)")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    print(f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load avg "
          f"{os.getloadavg()[0]:.2f} (other work on the box slows every figure)")
    body = json.dumps({"v": 1, "type": "echo", "input": {"x": 1}}).encode()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir)
        broker.start()
        load = Load(broker)
        try:
            bare_rate = 0.0
            if not args.skip_bare:
                bare = subprocess.Popen(
                    [sys.executable, "-c", BARE, broker.host, str(broker.port), "bare/submit"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                try:
                    assert bare.stdout is not None
                    bare.stdout.readline()
                    print("bare aiomqtt responder:")
                    bare_rate = step_up(load, "bare/submit", body, rates, args.step_s, "bare",
                                        bare.pid)
                finally:
                    bare.terminate()
                    bare.wait(5)
            overrides: dict[str, Any] = {"telemetry": {"interval_s": 1.0},
                                         "log": {"level": "WARNING"}}
            if args.shed_after is not None:
                overrides["intake"] = {"shed_after_s": args.shed_after}
            node = NodeProcess(workdir, "cap-1", broker=broker, overrides=overrides)
            if args.profile:
                start_profiled(node, workdir / "node.prof")
            else:
                node.start()
            try:
                print("edgesched node (echo, local):")
                assert node.proc is not None
                node_rate = step_up(load, "edgesched/node/cap-1/submit", body, rates,
                                    args.step_s, "node", node.proc.pid)
                print(f"capacity: node {node_rate:.0f}/s, bare responder {bare_rate:.0f}/s, "
                      f"ratio {node_rate / bare_rate if bare_rate else float('nan'):.2f} "
                      "(goal >= 0.8)")
                over = args.overload_rate or 2 * node_rate
                if not args.skip_overload and over:
                    time.sleep(2)
                    light = CLoad(broker)  # the load must not take the node's CPU
                    try:
                        overload(light, node, "edgesched/node/cap-1/submit", body, over,
                                 args.overload_s)
                    finally:
                        light.close()
                    metrics = node.metrics_text()
                    for line in metrics.splitlines():
                        if (line.startswith("edgesched_tasks_rejected_total")
                                or line.startswith("edgesched_mqtt_messages_dropped_total")) \
                                and not line.endswith(" 0.0"):
                            print("  node:", line)
                    print(f"  mosquitto $SYS publish/messages/dropped: "
                          f"{mosquitto_dropped(broker)}")
            finally:
                node.terminate()
            if args.profile:
                wait_until(lambda: (workdir / "node.prof").exists(), 10)
                import pstats

                stats = pstats.Stats(str(workdir / "node.prof"))
                kept = Path(tempfile.gettempdir()) / "bench-capacity-node.prof"
                stats.dump_stats(str(kept))  # for pstats / snakeviz afterwards
                print(f"profile kept in {kept}")
                stats.sort_stats("tottime").print_stats(30)
                stats.sort_stats("cumulative").print_stats("edgesched", 40)
        finally:
            load.close()
            broker.stop()


if __name__ == "__main__":
    main()
