"""Telemetry fan-out by cluster size (issue 19, part 2), with a real mosquitto.

For each N: starts N idle `edgesched run` nodes on one broker (`sys_interval 1`), waits until
every node sees the N-1 others online, then for `--seconds` measures the broker's delivery
rate (`$SYS/broker/messages/sent`) beside N²/T, and each node's CPU (/proc/PID/stat, the
node and its children) and RSS. With `--max-fanout-rate R` the nodes run with
`telemetry.max_fanout_rate: R` and the interval each settles on is printed too.

Run: .venv/bin/python benchmarks/bench_fanout.py [--nodes 10,20,30] [--interval 1.0]
     [--seconds 10] [--max-fanout-rate 0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.broker import Mosquitto, free_listen_port  # noqa: E402
from tests.support.cluster import cpu_seconds, start_all, stop_all  # noqa: E402
from tests.support.nodes import NodeProcess, wait_until  # noqa: E402


class SentCounter:
    def __init__(self, broker: Mosquitto) -> None:
        self.latest: tuple[float, int] | None = None
        self._lock = threading.Lock()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-sys")
        self._client.on_connect = lambda c, *_: c.subscribe("$SYS/broker/messages/sent")
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.latest = (time.monotonic(), int(msg.payload))

    def read(self) -> tuple[float, int] | None:
        with self._lock:
            return self.latest

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(n: int, interval: float, seconds: float, rate: float, workdir: Path) -> None:
    broker = Mosquitto(workdir=workdir, port=free_listen_port(), extra_conf="sys_interval 1\n")
    broker.start()
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_listen_port())
    telemetry = {"interval_s": interval, **({"max_fanout_rate": rate} if rate else {})}
    nodes = [NodeProcess(workdir, f"n{n}-{i:03d}", broker=broker, overrides={
        "http": {"port": port}, "telemetry": telemetry, "log": {"level": "WARNING"},
        "mqtt": {"keepalive_s": 10}}) for i, port in enumerate(sorted(ports))]
    counter = SentCounter(broker)
    try:
        t0 = time.monotonic()
        start_all(nodes, timeout=60 + 5 * n)
        wait_until(lambda: all(sum(s == "online" for s in node.neighbour_status().values())
                               == n - 1 for node in nodes), 60 + n, 0.5)
        started = time.monotonic() - t0
        if rate:  # let every node settle on its stretched interval
            time.sleep(3 * max(interval, n * n / rate))
        wait_until(lambda: counter.read() is not None, 10)
        cpu0 = {node.node_id: cpu_seconds(node.proc.pid) for node in nodes if node.proc}
        sent0, m0 = counter.read(), time.monotonic()
        time.sleep(seconds)
        sent1 = counter.read()
        elapsed = time.monotonic() - m0
        cpu = sorted((cpu_seconds(node.proc.pid) - cpu0[node.node_id]) / elapsed
                     for node in nodes if node.proc)
        rss = [rss_mb(node.proc.pid) for node in nodes if node.proc]
        assert sent0 is not None and sent1 is not None
        delivered = (sent1[1] - sent0[1]) / max(1e-9, sent1[0] - sent0[0])
        used = nodes[0].metric("edgesched_telemetry_interval_seconds") or interval
        print(f"{n:>4} {started:>8.1f} {used:>7.2f} {n * n / used:>8.0f} {delivered:>9.0f} "
              f"{statistics.median(cpu):>8.1%} {cpu[-1]:>7.1%} {statistics.median(rss):>7.0f}",
              flush=True)
    finally:
        counter.close()
        stop_all(nodes)
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="10,20,30")
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--max-fanout-rate", type=float, default=0.0)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; telemetry.interval_s {args.interval}, "
          f"max_fanout_rate {args.max_fanout_rate or 'off'}")
    print("   N  start_s  intv_s   N²/T/s  broker/s  cpu_med  cpu_max  rss_MB")
    for n in (int(x) for x in args.nodes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
            measure(n, args.interval, args.seconds, args.max_fanout_rate, Path(tmp))


if __name__ == "__main__":
    main()
