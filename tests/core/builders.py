"""Builders for the pure core's unit tests."""

from __future__ import annotations

from edgesched.core.model import (
    Candidate,
    ExecEstimate,
    LinkEstimate,
    Placement,
    PowerModel,
    TaskSpec,
)


def task(**kw: object) -> TaskSpec:
    base: dict[str, object] = {"task_type": "detect", "input_bytes": 200_000.0,
                               "output_bytes": 1_000.0}
    base.update(kw)
    base.setdefault("work", base["input_bytes"])  # estimators linear in the input's size
    return TaskSpec(**base)  # type: ignore[arg-type]


def local(**kw: object) -> Candidate:
    base: dict[str, object] = {"node_id": "gw-1", "placement": Placement.LOCAL, "slots": 2,
                               "exec": ExecEstimate(mean_s=0.2, std_s=0.02)}
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def neighbour(node_id: str = "gw-2", **kw: object) -> Candidate:
    base: dict[str, object] = {
        "node_id": node_id, "placement": Placement.NEIGHBOUR, "slots": 2,
        "exec": ExecEstimate(mean_s=0.2, std_s=0.02),
        "link": LinkEstimate(rtt_s=0.004, rtt_std_s=0.001, bandwidth_bps=1e8),
        "origin_power": PowerModel(),
    }
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def cloud(**kw: object) -> Candidate:
    base: dict[str, object] = {
        "node_id": "cloud", "placement": Placement.CLOUD, "slots": 64,
        "exec": ExecEstimate(mean_s=0.025, std_s=0.005),
        "link": LinkEstimate(rtt_s=0.08, rtt_std_s=0.01, bandwidth_bps=2e7),
        "origin_power": PowerModel(),
    }
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]
