"""The demo's cluster and workload as a simulator scenario, to compare `cost` with `local`.

The comparison comes from the simulator (`edgesched.sim`), not from a replay on the real
nodes: the same decision code runs there over a model of the same cluster and workload.
Execution work of `hash` and `matmul` is calibrated by timing them once on this machine.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgesched.demo.cluster import ClusterSpec
from edgesched.demo.phases import OVERLOADED, STREAMS, VICTIM, Phase, PhaseKind, Stream
from edgesched.demo.summary import Comparison

log = logging.getLogger("edgesched.demo.compare")

SOURCE = "simulator (edgesched simulate, same cluster and workload, seed of this run)"
POLICIES = ("cost", "local")
# Input/output sizes in bytes of a submission of each type, as JSON on the wire.
_BYTES = {"echo": (120, 120), "hash": (80, 100), "matmul": (40, 64), "sleep": (30, 32)}


def _time_hash(rounds: int) -> float:
    start = time.perf_counter()
    digest = hashlib.sha256(b"calibration").digest()
    for _ in range(rounds - 1):
        digest = hashlib.sha256(digest).digest()
    return time.perf_counter() - start


def _time_matmul(n: int) -> float:
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n)), rng.random((n, n))
    float(np.trace(a @ b))
    return time.perf_counter() - start


def calibrate_work(stream: Stream) -> float:
    """Seconds one task of this stream takes at speed 1 on this machine."""
    if stream.task_type == "hash":
        return max(_time_hash(stream.size), 1e-4)
    if stream.task_type == "matmul":
        return max(min(_time_matmul(stream.size) for _ in range(2)), 1e-4)
    if stream.task_type == "sleep":
        return stream.size / 100.0
    return 2e-4


def _type_name(stream: Stream) -> str:
    return f"{stream.task_type}-{stream.size}"


Window = tuple[float, float]


def _windows(stream: Stream, phases: tuple[Phase, ...]) -> list[Window]:
    """The contiguous time windows in which a stream submits."""
    out: list[Window] = []
    for phase in phases:
        if phase.kind not in stream.phases:
            continue
        if out and out[-1][1] == phase.start_s:
            out[-1] = (out[-1][0], phase.end_s)
        else:
            out.append((phase.start_s, phase.end_s))
    return out


def _cut(windows: list[Window], hole: Window) -> list[Window]:
    out = []
    for start, end in windows:
        for a, b in ((start, min(end, hole[0])), (max(start, hole[1]), end)):
            if b > a:
                out.append((a, b))
    return out


def _clip(windows: list[Window], keep: Window) -> list[Window]:
    clipped = [(max(a, keep[0]), min(b, keep[1])) for a, b in windows]
    return [(a, b) for a, b in clipped if b > a]


def _arrivals(
    stream: Stream, node_id: str, windows: list[Window], total_s: float,
) -> list[dict[str, Any]]:
    base = {"node": node_id, "type": _type_name(stream)}
    if windows == [(0.0, total_s)]:
        return [{**base, "process": "poisson", "rate_per_s": stream.rate_per_s}]
    # One "burst" per window, repeating too rarely to happen twice within the run.
    return [{**base, "process": "bursty", "rate_per_s": 0.0,
             "burst_rate_per_s": stream.rate_per_s, "burst_every_s": total_s * 10,
             "burst_for_s": end - start, "burst_offset_s": start} for start, end in windows]


def _all_arrivals(
    phases: tuple[Phase, ...], roam: Window | None,
) -> list[dict[str, Any]]:
    """Every stream as scenario arrivals; while the victim's devices roam, its streams
    arrive at the node they roam to, as in the demo."""
    total = phases[-1].end_s
    out = []
    for stream in STREAMS:
        windows = _windows(stream, phases)
        if stream.node_id == VICTIM and roam is not None:
            out += _arrivals(stream, OVERLOADED, _clip(windows, roam), total)
            windows = _cut(windows, roam)
        out += _arrivals(stream, stream.node_id, windows, total)
    return out


def build_scenario(
    spec: ClusterSpec, phases: tuple[Phase, ...], *, seed: int,
    down_window: tuple[float, float] | None, roam_window: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """A contract §5 scenario mapping equivalent to the demo run."""
    total = phases[-1].end_s
    wan = next(p for p in phases if p.kind is PhaseKind.WAN)
    cloud = spec.cloud
    nodes = []
    for node in spec.edges:
        entry: dict[str, Any] = {
            "id": node.node_id, "speed": node.speed, "slots": node.slots,
            "power": {k: v for k, v in node.config.get("power", {}).items()
                      if k in ("idle_w", "busy_w", "tx_w", "rx_w")},
        }
        if node.battery is not None:
            entry["battery"] = {"capacity_j": node.battery.capacity_j,
                                "initial": node.battery.initial}
        if node.node_id == VICTIM and down_window is not None:
            entry["down"] = [{"at_s": down_window[0], "for_s": down_window[1] - down_window[0]}]
        nodes.append(entry)
    types: list[dict[str, Any]] = []
    for stream in STREAMS:
        if any(t["name"] == _type_name(stream) for t in types):
            continue
        size_in, size_out = _BYTES[stream.task_type]
        types.append({"name": _type_name(stream),
                      "work": {"dist": "fixed", "value": calibrate_work(stream)},
                      "input_bytes": size_in, "output_bytes": size_out,
                      "deadline_s": stream.deadline_s, "offload": "anywhere"})
    events = []
    for node in spec.edges:
        for at, cond in ((wan.start_s, spec.wan_degraded), (wan.end_s, spec.wan_normal)):
            events.append({"at_s": at, "link": {"node": node.node_id, "to": "cloud",
                                                 "rtt_s": cond.rtt_s,
                                                 "bandwidth_bps": cond.uplink_bps}})
    return {
        "version": 1, "name": "edgesched-demo", "duration_s": total, "seed": seed,
        "cloud": {"rtt_s": spec.wan_normal.rtt_s, "bandwidth_bps": spec.wan_normal.uplink_bps,
                  "speed": cloud.speed, "slots": cloud.slots, "cost_per_task": 0.0},
        "links": {"rtt_s": 0.002, "bandwidth_bps": 1.0e9},
        "nodes": nodes, "task_types": types,
        "arrivals": _all_arrivals(phases, roam_window),
        "events": events,
    }


def _sim_api() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """`(load_scenario, run_scenario)` of the simulator's Python API, wherever it exports them."""
    found: dict[str, Callable[..., Any]] = {}
    for module_name in ("edgesched.sim", "edgesched.sim.scenario", "edgesched.sim.run",
                        "edgesched.sim.runner", "edgesched.sim.report", "edgesched.sim.engine"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name in ("load_scenario", "run_scenario"):
            if name not in found and callable(getattr(module, name, None)):
                found[name] = getattr(module, name)
    if len(found) < 2:
        return None
    return found["load_scenario"], found["run_scenario"]


def compare(
    spec: ClusterSpec, phases: tuple[Phase, ...], *, seed: int,
    down_window: tuple[float, float] | None, roam_window: tuple[float, float] | None = None,
) -> Comparison:
    """Run the scenario under `cost` and `local`; a Comparison saying why when it cannot."""
    api = _sim_api()
    if api is None:
        return Comparison(source=SOURCE, policies={},
                          note="simulator not available in this build (no run_scenario)")
    load_scenario, run_scenario = api
    mapping = build_scenario(spec, phases, seed=seed, down_window=down_window,
                             roam_window=roam_window)
    try:
        report = run_scenario(load_scenario(mapping), list(POLICIES), seed)
    except Exception as exc:  # the comparison is an extra; the demo's own results stand
        log.warning("simulator comparison failed: %s", exc)
        return Comparison(source=SOURCE, policies={}, note=f"simulator failed: {exc}")
    return Comparison(
        source=SOURCE, policies=dict(report.get("policies", {})),
        note=(f"{report.get('tasks', '?')} simulated tasks; 'local' is the local-first baseline "
              "(another target only when this node cannot take the task at all)"),
    )
