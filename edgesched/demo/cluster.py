"""The demo cluster: generated node configs and the `edgesched run` subprocesses they drive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml

from edgesched.adapters.signing import write_node_keypair
from edgesched.config import child_environment
from edgesched.demo.probe import ProbeError, http_get
from edgesched.errors import EdgeschedError

log = logging.getLogger("edgesched.demo.cluster")

HEALTHY_TIMEOUT_S = 45.0
STOP_GRACE_S = 8.0
START_ATTEMPTS = 3
_START_MARK = "--- demo: start #"
_PORT_TAKEN = "address already in use"


class ClusterError(EdgeschedError):
    """A demo node could not be started or stopped."""


@dataclass(frozen=True, kw_only=True)
class BatterySpec:
    capacity_j: float
    initial: float
    idle_drain_w: float = 0.0


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """One node of the demo cluster, as cluster.yaml describes it."""

    node_id: str
    role: str
    description: str
    config: dict[str, Any]
    battery: BatterySpec | None = None

    @property
    def slots(self) -> int:
        return int(self.config.get("executor", {}).get("slots", 1))

    @property
    def speed(self) -> float:
        return float(self.config.get("executor", {}).get("speed", 1.0))

    @property
    def battery_device(self) -> str | None:
        device = self.config.get("power", {}).get("battery_device")
        return str(device) if device else None


@dataclass(frozen=True, kw_only=True)
class WanSpec:
    rtt_s: float
    uplink_bps: float


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    nodes: tuple[NodeSpec, ...]
    wan_normal: WanSpec
    wan_degraded: WanSpec

    @property
    def edges(self) -> tuple[NodeSpec, ...]:
        return tuple(n for n in self.nodes if n.role == "edge")

    @property
    def cloud(self) -> NodeSpec:
        return next(n for n in self.nodes if n.role == "cloud")

    def node(self, node_id: str) -> NodeSpec:
        return next(n for n in self.nodes if n.node_id == node_id)


def load_cluster_spec(text: str | None = None) -> ClusterSpec:
    """Parse cluster.yaml (the packaged one unless `text` is given)."""
    if text is None:
        text = resources.files("edgesched.demo").joinpath("cluster.yaml").read_text("utf-8")
    doc = yaml.safe_load(text)
    nodes = []
    for entry in doc["nodes"]:
        battery = entry.get("battery")
        nodes.append(NodeSpec(
            node_id=entry["id"], role=entry["role"], description=entry.get("description", ""),
            config=dict(entry.get("config") or {}),
            battery=BatterySpec(**battery) if battery else None,
        ))
    spec = ClusterSpec(
        nodes=tuple(nodes),
        wan_normal=_wan(doc["wan"]["normal"]),
        wan_degraded=_wan(doc["wan"]["degraded"]),
    )
    if sum(1 for n in spec.nodes if n.role == "cloud") != 1:
        raise ValueError("cluster.yaml must define exactly one cloud node")
    return spec


def _wan(raw: dict[str, Any]) -> WanSpec:
    # float(): YAML 1.1 reads "2.0e7" (no exponent sign) as a string
    spec = WanSpec(rtt_s=float(raw["rtt_s"]), uplink_bps=float(raw["uplink_bps"]))
    if spec.rtt_s < 0 or spec.uplink_bps <= 0:
        raise ValueError("wan: rtt_s must be >= 0 and uplink_bps > 0")
    return spec


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the node binds it a second later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, kw_only=True)
class BrokerAddress:
    host: str
    port: int
    protocol: Literal["5", "3.1.1"]
    topic_prefix: str


def node_config(
    node: NodeSpec, *, http_port: int, broker: BrokerAddress, cloud_url: str | None,
    state_dir: Path, keys_dir: Path | None = None, record_dir: Path | None = None,
) -> dict[str, Any]:
    """The full config document of one demo node: its fragment plus the wiring; with
    `keys_dir` (the demo's default) the node signs and verifies node-to-node messages."""
    doc: dict[str, Any] = {key: value for key, value in node.config.items()}
    doc.update({
        "node_id": node.node_id,
        "role": node.role,
        "state_dir": str(state_dir),
        "mqtt": {"host": broker.host, "port": broker.port, "protocol": broker.protocol,
                 "topic_prefix": broker.topic_prefix, "keepalive_s": 3,
                 "client_id": f"edgesched-demo-{node.node_id}-{os.getpid()}",
                 # a fresh client id each run: a persistent session would outlive it unused
                 "session_expiry_s": 0},
        "http": {"host": "127.0.0.1", "port": http_port},
        "telemetry": {"interval_s": 0.5, "suspect_after_intervals": 3,
                      "offline_after_intervals": 6},
        "log": {"level": "INFO", "format": "text"},
    })
    if node.role == "edge" and cloud_url:
        doc["cloud"] = {"url": cloud_url, "timeout_s": 20.0}
    if node.role == "edge" and record_dir is not None:  # for `edgesched replay` afterwards
        doc["record"] = {"path": str(record_dir)}
    if keys_dir is not None:
        doc["security"] = {"key_file": str(keys_dir / f"{node.node_id}.key"),
                           "trust_dir": str(keys_dir)}
    return doc


@dataclass
class NodeProcess:
    """One running (or stopped) `edgesched run` child."""

    spec: NodeSpec
    config_path: Path
    log_path: Path
    http_port: int
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    log_file: Any = field(default=None, repr=False)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_tail(self, lines: int = 15) -> str:
        """The end of this node's log since its latest start."""
        try:
            text = self.log_path.read_text("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        text = text.rsplit(_START_MARK, 1)[-1]
        return "\n".join(text.splitlines()[-lines:])


class Cluster:
    """Starts every node as a real `python -m edgesched run --config FILE` process.

    An async context manager: on exit (normal, error, Ctrl-C or cancellation) every child it
    started is terminated, then killed if it has not stopped within STOP_GRACE_S.
    """

    def __init__(self, spec: ClusterSpec, *, broker: BrokerAddress, workdir: Path,
                 record_dir: Path | None = None) -> None:
        self.spec = spec
        self.record_dir = record_dir  # edge nodes record their traffic here (record.path)
        self.broker = broker
        self.workdir = workdir
        self.nodes: dict[str, NodeProcess] = {}
        self._ports: dict[str, int] = {}
        self._cloud_url: str | None = None

    def http_port(self, node_id: str) -> int:
        return self.nodes[node_id].http_port

    def allocate_ports(self) -> dict[str, int]:
        """Choose every node's HTTP port (before the configs, which name the cloud's)."""
        self._ports = {n.node_id: free_port() for n in self.spec.nodes}
        return dict(self._ports)

    def write_configs(self, cloud_url_for_edges: str | None = None) -> None:
        """Write every node's config file (no process started yet)."""
        if not self._ports:
            self.allocate_ports()
        ports = self._ports
        self._cloud_url = (cloud_url_for_edges or
                           f"http://127.0.0.1:{ports[self.spec.cloud.node_id]}")
        keys = self.workdir / "keys"  # the demo runs signed, as a deployment should
        for node in self.spec.nodes:
            if not (keys / f"{node.node_id}.key").exists():
                write_node_keypair(node.node_id, keys)
        for node in self.spec.nodes:
            path = self._write_config(node, ports[node.node_id])
            self.nodes[node.node_id] = NodeProcess(
                spec=node, config_path=path, log_path=self.workdir / f"{node.node_id}.log",
                http_port=ports[node.node_id],
            )

    def _write_config(self, node: NodeSpec, http_port: int) -> Path:
        state_dir = self.workdir / node.node_id
        state_dir.mkdir(parents=True, exist_ok=True)
        doc = node_config(node, http_port=http_port, broker=self.broker,
                          cloud_url=self._cloud_url, state_dir=state_dir,
                          keys_dir=self.workdir / "keys", record_dir=self.record_dir)
        path = self.workdir / f"{node.node_id}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    async def start_healthy(self, node_id: str) -> None:
        """Start a node and wait until healthy; if its HTTP port was taken meanwhile (the
        port was only free when chosen), move it to another free port and try again."""
        for attempt in range(1, START_ATTEMPTS + 1):
            await self.start(node_id)
            try:
                await self.wait_healthy(node_id)
                return
            except ClusterError:
                node = self.nodes[node_id]
                if attempt == START_ATTEMPTS or _PORT_TAKEN not in node.log_tail(60):
                    raise
            node.http_port = self._ports[node_id] = free_port()
            self._write_config(node.spec, node.http_port)
            log.warning("%s: its HTTP port was taken; retrying on port %d", node_id,
                        node.http_port)

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a cancelled demo must still reap its children.
        await asyncio.shield(self.stop_all())

    async def start(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.alive:
            return
        if node.log_file is None:
            node.log_file = node.log_path.open("ab")
        node.starts += 1
        node.log_file.write(f"{_START_MARK}{node.starts} ---\n".encode())
        node.log_file.flush()
        node.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgesched", "run", "--config", str(node.config_path),
            stdin=asyncio.subprocess.DEVNULL, stdout=node.log_file, stderr=node.log_file,
            env=child_environment(),
            # Own session: the terminal's Ctrl-C reaches the demo only; it stops the nodes in
            # order (fleet first, then nodes, then the broker).
            start_new_session=True,
        )
        log.info("started %s (pid %d, http port %d)", node_id, node.proc.pid, node.http_port)

    async def wait_healthy(self, node_id: str, timeout_s: float = HEALTHY_TIMEOUT_S) -> None:
        """Poll /healthz until 200; fail with the node's log tail if it exits or times out."""
        node = self.nodes[node_id]
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not node.alive:
                code = node.proc.returncode if node.proc else None
                raise ClusterError(
                    f"node {node_id} exited (code {code}) before becoming healthy; "
                    f"its log ({node.log_path}):\n{node.log_tail()}")
            try:
                status, body = await http_get("127.0.0.1", node.http_port, "/healthz",
                                              timeout_s=1.0)
                if status == 200:
                    return
                last = f"/healthz answered {status}: {body[:200]!r}"
            except ProbeError as exc:
                last = str(exc)
            await asyncio.sleep(0.2)
        raise ClusterError(
            f"node {node_id} not healthy after {timeout_s:.0f}s ({last}); "
            f"its log ({node.log_path}):\n{node.log_tail()}")

    async def start_all(self) -> None:
        async with asyncio.TaskGroup() as group:
            for node_id in self.nodes:
                group.create_task(self.start_healthy(node_id),
                                  name=f"edgesched.demo.start_{node_id}")

    async def kill(self, node_id: str) -> None:
        """SIGKILL: no graceful offline state, no drain — as a power cut would."""
        node = self.nodes[node_id]
        if node.proc is None or not node.alive:
            return
        node.proc.send_signal(signal.SIGKILL)
        await node.proc.wait()
        log.info("killed %s (SIGKILL)", node_id)

    async def stop(self, node_id: str) -> None:
        node = self.nodes[node_id]
        proc = node.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                log.warning("%s did not stop within %.0fs of SIGTERM; killing it",
                            node_id, STOP_GRACE_S)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if node.log_file is not None:
            node.log_file.close()
            node.log_file = None

    async def stop_all(self) -> None:
        """Terminate edges first (they drain towards the cloud), then the cloud."""
        edges = [n for n, p in self.nodes.items() if p.spec.role == "edge"]
        clouds = [n for n in self.nodes if n not in edges]
        for group_ids in (edges, clouds):
            await asyncio.gather(*(self.stop(n) for n in group_ids), return_exceptions=True)
