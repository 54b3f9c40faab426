"""Idle footprint of a default edge node (issue 19, part 3), with a real mosquitto.

Prints, for a node started with the default config (only the node id, the broker and the HTTP
port set): the main process's RSS and PSS, and RSS/PSS summed over its whole process tree
(pool workers, forkserver, resource tracker), idle and then after one cpu-bound task (`hash`)
and one `matmul` (numpy); beside a bare `python -c "import aiomqtt; ..."` process connected to
the same broker. Goal: idle main ≤ 60 MB RSS, ≤ 90 MB over all the node's processes.

RSS counts shared pages (the interpreter, libraries) once per process; PSS splits them between
the processes sharing them, so the tree's PSS is what the node really costs the machine.

Run: .venv/bin/python benchmarks/bench_memory.py [--settle 3] [--importtime]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.nodes import NodeProcess  # noqa: E402

MB = 1 << 20

BARE = """
import asyncio, sys, aiomqtt
async def main():
    async with aiomqtt.Client(sys.argv[1], int(sys.argv[2]), protocol=aiomqtt.ProtocolVersion.V5):
        print("ready", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


def children(pid: int) -> list[int]:
    """Every thread's children (the pool is started from a worker thread, not the main one)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree(pid: int) -> list[int]:
    out = [pid]
    for child in children(pid):
        out += tree(child)
    return out


def rss_pss(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes from /proc/PID/smaps_rollup; (0, 0) once the process is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:90]


def report(label: str, pid: int) -> tuple[int, int]:
    pids = tree(pid)
    figures = [(p, *rss_pss(p)) for p in pids]
    main_rss, main_pss = figures[0][1], figures[0][2]
    total_rss = sum(f[1] for f in figures)
    total_pss = sum(f[2] for f in figures)
    print(f"{label}: main RSS {main_rss / MB:6.1f} MB (PSS {main_pss / MB:5.1f}); "
          f"{len(pids)} process(es): RSS {total_rss / MB:6.1f} MB, PSS {total_pss / MB:5.1f} MB")
    for p, rss, pss in figures[1:]:
        print(f"    pid {p}: RSS {rss / MB:5.1f} MB PSS {pss / MB:5.1f} MB  {cmdline(p)}")
    return main_rss, total_rss


def submit(node: NodeProcess, task_type: str, value: object) -> dict[str, object]:
    body = json.dumps({"type": task_type, "input": value}).encode()
    request = urllib.request.Request(node.base_url + "/v1/tasks", data=body,
                                     headers={"Content-Type": "application/json",
                                              **node.auth_headers})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


def importtime() -> None:
    """The slowest/heaviest modules `edgesched run`'s import chain pulls in."""
    code = "import edgesched.node.service"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                          capture_output=True, text=True, cwd=REPO, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), parts[2].rstrip()))
    print("top cumulative imports of edgesched.node.service (us):")
    for us, name in sorted(rows, reverse=True)[:25]:
        print(f"  {us:9d} {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=float, default=3.0, help="seconds idle before measuring")
    ap.add_argument("--importtime", action="store_true", help="also list the heavy imports")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]} ({sys.executable}); {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir)
        broker.start()
        try:
            bare = subprocess.Popen([sys.executable, "-c", BARE, broker.host, str(broker.port)],
                                    stdout=subprocess.PIPE, text=True)
            assert bare.stdout is not None
            bare.stdout.readline()
            time.sleep(0.5)
            report("bare aiomqtt client", bare.pid)
            bare.terminate()
            bare.wait(5)
            node = NodeProcess(workdir, "mem-1", broker=broker,
                               overrides={"telemetry": {"interval_s": 1.0}})
            node.start()
            try:
                time.sleep(args.settle)
                assert node.proc is not None
                report("edge node, idle", node.proc.pid)
                reply = submit(node, "hash", {"data": "x", "rounds": 1000})
                assert reply["status"] == "ok", reply
                time.sleep(0.5)
                report("after one hash (cpu-bound)", node.proc.pid)
                reply = submit(node, "matmul", {"n": 64, "seed": 1})
                assert reply["status"] == "ok", reply
                time.sleep(0.5)
                report("after one matmul (numpy)", node.proc.pid)
            finally:
                node.terminate()
        finally:
            broker.stop()
    if args.importtime:
        importtime()


if __name__ == "__main__":
    main()
