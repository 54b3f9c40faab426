"""`edgesched demo`: a whole edge cluster on this machine, driven through four phases."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgesched.adapters.embedded_broker import EmbeddedBroker, require_amqtt
from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import MqttClient, MqttOptions
from edgesched.demo.cluster import BrokerAddress, Cluster, ClusterSpec, load_cluster_spec
from edgesched.demo.compare import compare
from edgesched.demo.fleet import Fleet
from edgesched.demo.live import LiveView, Monitor, Snapshot
from edgesched.demo.phases import (
    OVERLOADED,
    VICTIM,
    Phase,
    PhaseKind,
    generate,
    plan_phases,
)
from edgesched.demo.report import print_summary
from edgesched.demo.summary import Tally, summary_doc, write_json
from edgesched.demo.wan import WanEmulator
from edgesched.errors import MqttError

log = logging.getLogger("edgesched.demo")

TOPIC_PREFIX = "edgesched"
MESH_TIMEOUT_S = 20.0
FINAL_WAIT_S = 30.0
DRAIN_BEFORE_KILL_S = 10.0
EXIT_INTERRUPTED = 130


@dataclass
class DemoRun:
    """State shared by the phase driver, the live view and the summary."""

    duration_s: float
    seed: int
    spec: ClusterSpec
    phases: tuple[Phase, ...]
    broker_label: str = ""
    phase: str = "starting"
    headline: str = "starting nodes"
    down_window: tuple[float, float] | None = None
    roam_window: tuple[float, float] | None = None  # the victim's devices submit elsewhere
    monitor: Monitor | None = None
    record_dir: Path | None = None  # what the edge nodes recorded (kept after the demo)
    fleet: Fleet | None = None
    lost: int = 0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def snapshot(self) -> Snapshot:
        assert self.monitor is not None
        fleet = self.fleet
        elapsed = fleet.elapsed() if fleet else 0.0
        battery = {}
        if fleet is not None:
            battery = {n.node_id: fleet.battery_level(n.node_id)
                       for n in self.spec.edges if n.battery is not None}
        return Snapshot(
            elapsed_s=elapsed, duration_s=self.duration_s, phase=self.phase,
            headline=self.headline, nodes=list(self.monitor.views.values()),
            tally=fleet.tally if fleet else Tally(),
            outstanding=len(fleet.pending) if fleet else 0,
            energy_j=self.monitor.edge_energy_j, battery=battery,
        )


async def demo_command(args: argparse.Namespace, shutdown_trigger: Awaitable[None]) -> int:
    run = DemoRun(duration_s=float(args.duration), seed=int(args.seed), spec=load_cluster_spec(),
                  phases=plan_phases(float(args.duration)))
    body = asyncio.create_task(_demo(run, args), name="edgesched.demo.main")
    stop = asyncio.ensure_future(shutdown_trigger)
    try:
        done, _ = await asyncio.wait({body, stop}, return_when=asyncio.FIRST_COMPLETED)
        if body not in done:
            run.interrupted = True
            print("\ninterrupted: stopping the fleet, the nodes and the broker ...",
                  file=sys.stderr, flush=True)
            body.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await body  # a failure inside its task groups: cli.main reports it in one line
    finally:
        stop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop
    return _finish(run, args)


def _finish(run: DemoRun, args: argparse.Namespace) -> int:
    if run.fleet is None or run.monitor is None:
        return EXIT_INTERRUPTED if run.interrupted else 1
    if run.interrupted:  # in flight when stopped: no terminal outcome was seen
        run.lost = len(run.fleet.pending)
    comparison = None if run.interrupted else compare(
        run.spec, run.phases, seed=run.seed, down_window=run.down_window,
        roam_window=run.roam_window)
    doc = summary_doc(
        run.fleet.tally, lost=run.lost, energy_j=run.monitor.edge_energy_j,
        duration_s=run.duration_s, seed=run.seed, broker=run.broker_label, comparison=comparison,
    )
    doc["interrupted"] = run.interrupted
    if run.record_dir is not None:
        doc["record_dir"] = str(run.record_dir)
        run.notes.append(f"the edge nodes recorded their traffic in {run.record_dir}: "
                         f"`edgesched replay {run.record_dir} --policy local` replays it "
                         "(docs/replay.md)")
    print_summary(doc, run.notes)
    if args.json_path:
        write_json(args.json_path, doc)
    return EXIT_INTERRUPTED if run.interrupted else 0


@contextlib.asynccontextmanager
async def _broker(run: DemoRun, args: argparse.Namespace) -> AsyncIterator[BrokerAddress]:
    if args.broker is not None:
        host, port = args.broker
        await _reachable(host, port)
        # A shared broker may carry real edgesched traffic: the demo's nodes and devices use
        # their own topic prefix, so neither side sees the other.
        prefix = f"{TOPIC_PREFIX}-demo-{uuid.uuid4().hex[:6]}"
        run.broker_label = f"{host}:{port} (MQTT v5, topic prefix {prefix})"
        address = BrokerAddress(host=host, port=port, protocol="5", topic_prefix=prefix)
        try:
            yield address
        finally:
            await _clear_retained(address, [n.node_id for n in run.spec.nodes])
        return
    async with EmbeddedBroker() as broker:
        run.broker_label = f"embedded amqtt on 127.0.0.1:{broker.port} (MQTT 3.1.1)"
        yield BrokerAddress(host=broker.host, port=broker.port, protocol="3.1.1",
                            topic_prefix=TOPIC_PREFIX)


async def _clear_retained(broker: BrokerAddress, node_ids: list[str]) -> None:
    """Leave no retained node-state documents of this run behind on someone else's broker."""
    options = MqttOptions(host=broker.host, port=broker.port, protocol=broker.protocol,
                          client_id=f"edgesched-demo-cleanup-{uuid.uuid4().hex[:8]}")
    try:
        async with asyncio.timeout(5.0), MqttClient(options, Metrics()) as client:
            await client.wait_connected()
            for node_id in node_ids:
                await client.publish(f"{broker.topic_prefix}/node/{node_id}/state", b"",
                                     qos=1, retain=True)
    except (MqttError, TimeoutError) as exc:
        log.warning("could not clear the demo's retained state topics: %s", exc)


async def _reachable(host: str, port: int) -> None:
    """Fail fast, with the address, when --broker points at nothing."""
    try:
        async with asyncio.timeout(5.0):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise MqttError(f"cannot reach the MQTT broker at {host}:{port} (--broker): "
                        f"{exc or 'timed out'}") from None
    writer.close()


async def _demo(run: DemoRun, args: argparse.Namespace) -> None:
    """Broker → WAN relay → nodes → fleet, torn down in reverse order on every exit path."""
    if args.broker is None:
        require_amqtt()  # before anything starts: the embedded broker is the demo extra's
    # The recording outlives the demo's temporary directory: `edgesched replay` reads it.
    run.record_dir = Path(tempfile.mkdtemp(prefix="edgesched-demo-record-"))
    with tempfile.TemporaryDirectory(prefix="edgesched-demo-") as tmp:
        async with _broker(run, args) as broker:
            cluster = Cluster(run.spec, broker=broker, workdir=Path(tmp),
                              record_dir=run.record_dir)
            cloud_port = cluster.allocate_ports()[run.spec.cloud.node_id]
            async with WanEmulator(cloud_port, run.spec.wan_normal) as wan, cluster:
                cluster.write_configs(cloud_url_for_edges=wan.url)
                print(f"edgesched demo: broker {run.broker_label}; starting "
                      f"{len(run.spec.nodes)} nodes (logs in {tmp}) ...", flush=True)
                await cluster.start_all()
                wan.target_port = cluster.http_port(run.spec.cloud.node_id)  # in case it moved
                run.monitor = Monitor(cluster)
                await _wait_for_mesh(run, run.monitor)
                await _drive(run, cluster, wan, broker)


async def _wait_for_mesh(run: DemoRun, monitor: Monitor) -> None:
    """Bounded wait until every edge node sees the other edges online."""
    want = len(run.spec.edges) - 1
    deadline = time.monotonic() + MESH_TIMEOUT_S
    while time.monotonic() < deadline:
        await monitor.poll_once()
        edges = [v for v in monitor.views.values() if v.role == "edge"]
        if all(v.neighbours_online >= want for v in edges):
            return
        await asyncio.sleep(0.3)
    run.notes.append(f"not every edge node saw all its neighbours within {MESH_TIMEOUT_S:.0f}s")


async def _drive(run: DemoRun, cluster: Cluster, wan: WanEmulator, broker: BrokerAddress) -> None:
    assert run.monitor is not None
    schedule = generate(run.phases, np.random.default_rng(run.seed))
    fleet = Fleet(broker=broker, spec=run.spec, schedule=schedule,
                  energy_of=run.monitor.energy_of, fallback_node=OVERLOADED)
    run.fleet = fleet
    view = LiveView(run.snapshot)
    async with fleet, asyncio.TaskGroup() as group:
        poller = group.create_task(run.monitor.poll_loop(), name="edgesched.demo.poll_loop")
        live = group.create_task(view.loop(), name="edgesched.demo.view_loop")
        for phase in run.phases:
            if phase.kind is PhaseKind.NODE_DOWN:
                # The victim's devices roam away a little early, so that its own work is
                # answered by the time the phase starts and the kill lands on time.
                await _sleep_until(fleet, phase.start_s - min(3.0, 0.1 * run.duration_s))
                fleet.paused.add(VICTIM)
                run.roam_window = (fleet.elapsed(), run.duration_s)
            await _sleep_until(fleet, phase.start_s)
            run.phase, run.headline = phase.kind.value, phase.headline
            degraded = phase.kind is PhaseKind.WAN
            fleet.wan = wan.conditions = run.spec.wan_degraded if degraded else run.spec.wan_normal
            if phase.kind is PhaseKind.NODE_DOWN:
                await _kill_and_restart(run, cluster, fleet, phase)
        await fleet.submitting_done.wait()
        run.phase, run.headline = "draining", "waiting for the last replies"
        run.lost = await fleet.wait_outstanding(None, FINAL_WAIT_S)
        await run.monitor.poll_once()
        live.cancel()
        poller.cancel()


async def _sleep_until(fleet: Fleet, t: float) -> None:
    delay = t - fleet.elapsed()
    if delay > 0:
        await asyncio.sleep(delay)


async def _kill_and_restart(run: DemoRun, cluster: Cluster, fleet: Fleet, phase: Phase) -> None:
    """Once the victim's own devices' work is answered, SIGKILL it; restart it mid-phase.

    Work other nodes offloaded to it is still in flight when it dies: their fallback chain
    must answer it (that is what this phase shows).
    """
    fleet.paused.add(VICTIM)
    waited = fleet.elapsed()
    left = await fleet.wait_outstanding(VICTIM, timeout_s=DRAIN_BEFORE_KILL_S)
    if left:  # their origin node dies with them: they will show up as lost
        run.notes.append(f"{left} task(s) submitted to {VICTIM} were unanswered when it was killed")
    log.info("%s drained in %.1fs; killing it", VICTIM, fleet.elapsed() - waited)
    await cluster.kill(VICTIM)
    killed_at = fleet.elapsed()
    run.down_window = (killed_at, max(killed_at, phase.start_s + 0.5 * phase.length_s))
    run.headline = f"{VICTIM} killed with SIGKILL; gateways fall back"
    await _sleep_until(fleet, run.down_window[1])
    run.headline = f"{VICTIM} restarting"
    await cluster.start_healthy(VICTIM)
    run.down_window = (killed_at, fleet.elapsed())
    fleet.paused.discard(VICTIM)
    if run.roam_window is not None:
        run.roam_window = (run.roam_window[0], fleet.elapsed())
    run.headline = f"{VICTIM} back: it rejoins with a new incarnation"
    run.notes.append(f"{VICTIM} was killed (SIGKILL) at t={killed_at:.1f}s and healthy again "
                     f"at t={run.down_window[1]:.1f}s")
