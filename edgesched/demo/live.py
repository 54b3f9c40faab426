"""Watching the demo: per-node polling of /v1/status and /metrics, and the live terminal view."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edgesched.demo.cluster import Cluster
from edgesched.demo.probe import ProbeError, get_json, http_get, metric_sum
from edgesched.demo.summary import PLACEMENTS, Tally, percentile

POLL_INTERVAL_S = 1.0
ENERGY_METRIC = "edgesched_energy_joules_total"


@dataclass
class NodeView:
    """What the demo last learned about one node."""

    node_id: str
    role: str
    description: str
    up: bool = False
    running: int = 0
    queued: int = 0
    slots: int = 0
    neighbours_online: int = 0
    mqtt_connected: bool = False
    battery: float | None = None  # as the node itself reports it (its battery device's reading)
    energy_j: float = 0.0  # across restarts (a restarted node's counters start again at 0)
    _energy_banked: float = 0.0
    _energy_last: float = 0.0

    def observe_energy(self, value: float) -> None:
        if value < self._energy_last:  # counter reset: the node restarted
            self._energy_banked += self._energy_last
        self._energy_last = value
        self.energy_j = self._energy_banked + value


class Monitor:
    """Polls every node once per POLL_INTERVAL_S; one writer of the NodeViews."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.views = {
            node_id: NodeView(node_id=node_id, role=proc.spec.role,
                              description=proc.spec.description, slots=proc.spec.slots)
            for node_id, proc in cluster.nodes.items()
        }

    def energy_of(self, node_id: str) -> float:
        return self.views[node_id].energy_j

    @property
    def edge_energy_j(self) -> float:
        """Energy the edge nodes report (the cloud's own energy is not counted, as in §5)."""
        return sum(v.energy_j for v in self.views.values() if v.role == "edge")

    async def poll_loop(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(POLL_INTERVAL_S)

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(node_id) for node_id in self.views))

    async def _poll(self, node_id: str) -> None:
        view = self.views[node_id]
        port = self.cluster.http_port(node_id)
        try:
            status = await get_json("127.0.0.1", port, "/v1/status", timeout_s=1.0)
            code, metrics = await http_get("127.0.0.1", port, "/metrics", timeout_s=1.0)
        except ProbeError:
            view.up = False
            view.running = view.queued = view.neighbours_online = 0
            return
        view.up = True
        _apply_status(view, status)
        if code == 200:
            view.observe_energy(metric_sum(metrics.decode("utf-8", "replace"), ENERGY_METRIC))


def _apply_status(view: NodeView, status: Any) -> None:
    if not isinstance(status, dict):
        return
    tasks = status.get("tasks") or {}
    view.running = int(tasks.get("running") or 0)
    view.queued = int(tasks.get("queued") or 0)
    view.mqtt_connected = bool((status.get("mqtt") or {}).get("connected"))
    battery = (status.get("local") or {}).get("battery")
    view.battery = float(battery) if isinstance(battery, int | float) else None
    neighbours = status.get("neighbours") or []
    view.neighbours_online = sum(
        1 for n in neighbours if isinstance(n, dict) and n.get("status") == "online")


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """Everything the live view shows, taken at one instant."""

    elapsed_s: float
    duration_s: float
    phase: str
    headline: str
    nodes: list[NodeView]
    tally: Tally
    outstanding: int
    energy_j: float
    battery: dict[str, float]


def render(snap: Snapshot) -> Group:
    """The rich renderable of the live view."""
    header = Text.assemble(
        ("edgesched demo ", "bold"), f"t={snap.elapsed_s:5.1f}s/{snap.duration_s:.0f}s  ",
        ("phase: ", "dim"), (snap.phase, "bold cyan"), f"  {snap.headline}",
    )
    nodes = Table(title=None, expand=False, show_edge=False)
    for col in ("node", "role", "alive", "running/slots", "queued", "neighbours", "energy J",
                "battery"):
        nodes.add_column(col)
    for v in snap.nodes:
        if not v.up:
            alive = Text("DOWN", "bold red")
        else:
            alive = Text("up", "green") if v.mqtt_connected else Text("up, no MQTT", "yellow")
        battery = v.battery if v.battery is not None else snap.battery.get(v.node_id)
        nodes.add_row(
            f"{v.node_id}", v.role, alive, f"{v.running}/{v.slots}", str(v.queued),
            str(v.neighbours_online) if v.role == "edge" else "-", f"{v.energy_j:7.1f}",
            f"{battery:.0%}" if battery is not None else "mains",
        )
    return Group(header, nodes, Text(_totals_line(snap)))


def _totals_line(snap: Snapshot) -> str:
    t = snap.tally
    split = " ".join(f"{p}={t.placements[p]}" for p in PLACEMENTS)
    p50, p95 = percentile(t.latencies, 50), percentile(t.latencies, 95)
    lat = f"p50={p50:.3f}s p95={p95:.3f}s" if p50 is not None and p95 is not None else "p50=- p95=-"
    return (f"tasks submitted={t.submitted} ok={t.statuses['ok']} failed={t.statuses['failed']} "
            f"rejected={t.statuses['rejected']} expired={t.statuses['expired']} "
            f"in-flight={snap.outstanding} | placements {split} | latency {lat} | "
            f"deadline misses={t.deadline_misses} | edge energy={snap.energy_j:.1f} J")


def plain_line(snap: Snapshot) -> str:
    """One line per period when stdout is not a terminal (CI logs, pipes)."""
    alive = ",".join(f"{v.node_id}:{'up' if v.up else 'DOWN'}:{v.running}/{v.slots}"
                     for v in snap.nodes)
    return f"[{snap.elapsed_s:5.1f}s {snap.phase}] nodes {alive} | {_totals_line(snap)}"


class LiveView:
    """rich Live on a terminal; plain periodic lines otherwise."""

    def __init__(self, take: Callable[[], Snapshot], *, stream: TextIO | None = None,
                 plain_every_s: float = 5.0) -> None:
        self.take = take
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self.plain_every_s = plain_every_s
        self.console = Console(file=self.stream)

    async def loop(self) -> None:
        if self.interactive:
            with Live(render(self.take()), console=self.console, refresh_per_second=4,
                      transient=False) as live:
                while True:
                    await asyncio.sleep(0.5)
                    live.update(render(self.take()))
        else:
            next_at = time.monotonic()
            while True:
                if time.monotonic() >= next_at:
                    print(plain_line(self.take()), file=self.stream, flush=True)
                    next_at += self.plain_every_s
                await asyncio.sleep(0.5)
