"""The demo's phase plan and the seeded workload each phase submits (pure: no I/O, no clock).

Each phase is designed so that one placement shows up for a reason the cost model can see:

- calm: light work everywhere runs where it arrives (local); the battery gateway's heavy
  matrix products go to the cloud (its energy weight is high, its one slot is slow);
- overload: a burst of slot-holding `sleep` tasks on the fast gateway exceeds its two slots,
  so queue waits make neighbours (and past them the cloud) the better place;
- wan: every gateway's uplink reports (and the WAN emulator applies) a long RTT and a thin
  pipe, so heavy work stays on the edge;
- node-down: the edge box is killed with SIGKILL while work is offloaded to it, then restarted;
  the gateways fall back and later use it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np


class PhaseKind(StrEnum):
    CALM = "calm"
    OVERLOAD = "overload"
    WAN = "wan-degraded"
    NODE_DOWN = "node-down"


@dataclass(frozen=True, kw_only=True)
class Phase:
    kind: PhaseKind
    start_s: float
    end_s: float
    headline: str

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


# Share of the run each phase gets, in order.
_SHARES = (
    (PhaseKind.CALM, 0.25, "calm: light work stays local, heavy work leaves the battery gateway"),
    (PhaseKind.OVERLOAD, 0.25, "gw-fast overloaded: a burst of slot-holding tasks"),
    (PhaseKind.WAN, 0.25, "WAN degraded: long RTT and a thin uplink to the cloud"),
    (PhaseKind.NODE_DOWN, 0.25, "edge-box killed (SIGKILL), then restarted"),
)

OVERLOADED = "gw-fast"
VICTIM = "edge-box"
BATTERY_NODE = "gw-slow"


def plan_phases(duration_s: float) -> tuple[Phase, ...]:
    """The four phases laid end to end over `duration_s` seconds of submissions."""
    phases = []
    start = 0.0
    for kind, share, headline in _SHARES:
        end = start + share * duration_s
        phases.append(Phase(kind=kind, start_s=start, end_s=end, headline=headline))
        start = end
    return tuple(phases)


@dataclass(frozen=True, kw_only=True)
class Submission:
    """One task the fleet submits: when, to which node, and what."""

    at_s: float
    node_id: str
    task_type: str
    input: dict[str, Any]
    deadline_s: float
    device_id: str
    phase: PhaseKind


@dataclass(frozen=True, kw_only=True)
class Stream:
    """A Poisson stream of one kind of task into one node during some phases."""

    node_id: str
    task_type: str
    rate_per_s: float
    deadline_s: float
    phases: tuple[PhaseKind, ...]
    size: int  # rounds (hash), n (matmul), centiseconds (sleep), bytes (echo)


_ALL = tuple(PhaseKind)
_GATEWAYS = ("gw-fast", "gw-slow", "edge-box")

# The workload. Rates are low enough for a 2-core machine running four nodes; the overload
# burst needs no CPU at all (sleep holds a slot without computing).
STREAMS: tuple[Stream, ...] = (
    *(Stream(node_id=g, task_type="echo", rate_per_s=1.5, deadline_s=1.0, phases=_ALL, size=64)
      for g in _GATEWAYS),
    *(Stream(node_id=g, task_type="hash", rate_per_s=0.6, deadline_s=2.0, phases=_ALL,
             size=20_000) for g in ("gw-fast", "edge-box")),
    Stream(node_id="gw-fast", task_type="matmul", rate_per_s=0.4, deadline_s=3.0,
           phases=_ALL, size=300),
    Stream(node_id=BATTERY_NODE, task_type="matmul", rate_per_s=0.8, deadline_s=4.0,
           phases=_ALL, size=400),
    Stream(node_id=BATTERY_NODE, task_type="hash", rate_per_s=0.5, deadline_s=4.0,
           phases=_ALL, size=60_000),
    Stream(node_id=OVERLOADED, task_type="sleep", rate_per_s=5.0, deadline_s=3.0,
           phases=(PhaseKind.OVERLOAD,), size=100),
    Stream(node_id=OVERLOADED, task_type="sleep", rate_per_s=1.5, deadline_s=3.0,
           phases=(PhaseKind.WAN, PhaseKind.NODE_DOWN), size=100),
)


def task_input(task_type: str, size: int, rng: np.random.Generator) -> dict[str, Any]:
    if task_type == "hash":
        return {"data": f"frame-{int(rng.integers(1 << 30))}", "rounds": size}
    if task_type == "matmul":
        return {"n": size, "seed": int(rng.integers(1 << 30))}
    if task_type == "sleep":
        return {"seconds": size / 100.0}
    return {"reading": round(float(rng.random()), 6), "pad": "x" * size}


def generate(
    phases: tuple[Phase, ...], rng: np.random.Generator, streams: tuple[Stream, ...] = STREAMS,
) -> list[Submission]:
    """Every submission of the run, sorted by time (Poisson arrivals per stream and phase)."""
    out: list[Submission] = []
    for stream in streams:
        for phase in phases:
            if phase.kind not in stream.phases:
                continue
            t = phase.start_s + float(rng.exponential(1.0 / stream.rate_per_s))
            while t < phase.end_s:
                out.append(Submission(
                    at_s=t, node_id=stream.node_id, task_type=stream.task_type,
                    input=task_input(stream.task_type, stream.size, rng),
                    deadline_s=stream.deadline_s, device_id=f"{stream.node_id}-cam",
                    phase=phase.kind,
                ))
                t += float(rng.exponential(1.0 / stream.rate_per_s))
    out.sort(key=lambda s: s.at_s)
    return out
