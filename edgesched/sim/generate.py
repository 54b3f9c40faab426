"""Scenario families: clusters, links, workloads and events drawn from wide ranges.

`edgesched simulate --generate FAMILY --count N --seed S` draws N scenarios of a family (the
same YAML format as the shipped ones, docs/simulator.md), writes them with `--out DIR` and/or
runs every policy on each and prints the distribution of cost/oracle and cost/best-baseline.
Tune on one set of seeds, judge on another (benchmarks/bench_families.py uses fixed seeds
that nothing was tuned on); never on one scenario.

Families (each scenario seeded from `seed` and its index, so the same arguments give the same
scenarios):

- `mixed`: 2-12 gateways of heterogeneous speed (0.5-2x) and slots (1-4), 1-3 task types
  (light to heavy work, small to large inputs), 30-110 % of the cluster's capacity offered,
  unevenly over the nodes.
- `contention`: many origins (8-30 nodes, each with its own load), most of them busy, a few
  idle neighbours all of them see: the herd case (stale telemetry of the same idle nodes).
- `heavy_tail`: execution times lognormal with cv 1-2.5 (a few tasks 10x the mean).
- `wan_collapse`: cloud-favoured work whose uplink degrades (RTT x5-20, bandwidth /10-/50)
  for a third of the run, on some or all nodes.
- `outage`: 1-3 nodes down for 10-30 % of the run each (work queued there is lost).
- `battery`: a third of the nodes on battery (20-80 % charge), compute-heavy work.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import yaml

FAMILIES = ("mixed", "contention", "heavy_tail", "wan_collapse", "outage", "battery")
MAX_TASKS = 4000  # per scenario: keeps a family run of 50 scenarios x 8 policies in minutes


def _round(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _power(rng: np.random.Generator) -> dict[str, float]:
    idle = _round(rng.uniform(2.0, 5.0), 3)
    return {"idle_w": idle, "busy_w": _round(idle + rng.uniform(3.0, 8.0), 3),
            "tx_w": _round(rng.uniform(1.0, 2.5), 3), "rx_w": _round(rng.uniform(0.6, 1.5), 3)}


def _task_types(rng: np.random.Generator, n: int, *, cv: tuple[float, float],
                work: tuple[float, float]) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        mean = math.exp(rng.uniform(math.log(work[0]), math.log(work[1])))
        size = math.exp(rng.uniform(math.log(2e3), math.log(5e5)))
        out.append({
            "name": f"t{i}",
            "work": {"dist": "lognormal", "mean": _round(mean), "cv": _round(rng.uniform(*cv))},
            "input_bytes": {"dist": "uniform", "low": _round(0.5 * size, 3),
                            "high": _round(1.5 * size, 3)},
            "output_bytes": int(rng.integers(100, 5000)),
            # a deadline a few executions long: tight enough that placement matters
            "deadline_s": _round(mean * rng.uniform(3.0, 8.0) + 0.05, 3),
        })
    return out


def _nodes(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    return [{"id": f"n{i:02d}", "speed": _round(rng.uniform(0.5, 2.0), 3),
             "slots": int(rng.integers(1, 5)), "power": _power(rng)} for i in range(n)]


def _capacity(nodes: list[dict[str, Any]]) -> float:
    """Work units per second the edge nodes can do (speed x slots)."""
    return sum(n["speed"] * n["slots"] for n in nodes)


def _arrivals(rng: np.random.Generator, nodes: list[dict[str, Any]],
              types: list[dict[str, Any]], load: float, duration_s: float,
              weights: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Poisson arrivals offering `load` x the edge capacity, split over nodes by `weights`
    (uneven by default) and over types evenly; capped at MAX_TASKS in all."""
    if weights is None:
        weights = rng.dirichlet(np.full(len(nodes), 0.8))
    mean_work = float(np.mean([t["work"]["mean"] for t in types]))
    total_rate = load * _capacity(nodes) / mean_work
    total_rate = min(total_rate, MAX_TASKS / duration_s)
    out = []
    for node, w in zip(nodes, weights, strict=True):
        for t in types:
            rate = total_rate * float(w) / len(types)
            if rate >= 0.01:
                out.append({"node": node["id"], "type": t["name"], "process": "poisson",
                            "rate_per_s": _round(rate)})
    return out


def _cloud(rng: np.random.Generator) -> dict[str, Any]:
    return {"rtt_s": _round(rng.uniform(0.02, 0.15), 3),
            "bandwidth_bps": _round(math.exp(rng.uniform(math.log(5e6), math.log(1e8))), 3),
            "speed": _round(rng.uniform(2.0, 8.0), 3), "slots": 64}


def _links(rng: np.random.Generator) -> dict[str, float]:
    return {"rtt_s": _round(rng.uniform(0.001, 0.01), 3),
            "bandwidth_bps": _round(math.exp(rng.uniform(math.log(2e7), math.log(1e9))), 3)}


def generate_one(family: str, seed: int, index: int = 0) -> dict[str, Any]:
    """One scenario document of `family` (a plain dict in the scenario format)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    rng = np.random.default_rng([seed, index, FAMILIES.index(family)])
    duration = float(rng.integers(60, 121))
    doc: dict[str, Any] = {
        "version": 1, "name": f"{family}-{seed}-{index}",
        "description": f"generated: family {family}, seed {seed}, index {index}",
        "duration_s": duration, "seed": int(rng.integers(1, 2**31 - 1)),
        "cloud": _cloud(rng), "links": _links(rng),
    }
    cv, work = (0.2, 0.8), (0.01, 0.3)
    n = int(rng.integers(2, 13))
    load = rng.uniform(0.3, 1.1)
    weights = None
    if family == "contention":
        n = int(rng.integers(8, 31))
        load = rng.uniform(0.6, 1.0)
        idle = max(1, n // int(rng.integers(3, 6)))
        weights = np.concatenate([rng.uniform(0.5, 1.5, n - idle), np.zeros(idle)])
        weights /= weights.sum()
    elif family == "heavy_tail":
        cv = (1.0, 2.5)
    elif family == "battery":
        work = (0.05, 0.4)
    nodes = _nodes(rng, n)
    types = _task_types(rng, int(rng.integers(1, 4)), cv=cv, work=work)
    if family == "wan_collapse":  # cloud-favoured: a fast cloud, heavy work
        doc["cloud"]["speed"] = _round(rng.uniform(4.0, 10.0), 3)
        for t in types:
            t["deadline_s"] = _round(t["deadline_s"] + 2 * doc["cloud"]["rtt_s"], 3)
    if family == "outage":
        for node in rng.choice(nodes, size=min(n - 1, int(rng.integers(1, 4))) or 1,
                               replace=False):
            span = duration * rng.uniform(0.1, 0.3)
            node["down"] = [{"at_s": _round(rng.uniform(0.1, 0.6) * duration, 3),
                             "for_s": _round(span, 3)}]
    if family == "battery":
        for node in nodes[: max(1, n // 3)]:
            node["battery"] = {"capacity_j": _round(rng.uniform(2e4, 1e5), 3),
                               "initial": _round(rng.uniform(0.2, 0.8), 3)}
    doc["nodes"] = nodes
    doc["task_types"] = types
    doc["arrivals"] = _arrivals(rng, nodes, types, float(load), duration, weights)
    if family == "wan_collapse":
        at, until = duration * rng.uniform(0.2, 0.4), duration * rng.uniform(0.6, 0.8)
        hit = nodes if rng.random() < 0.5 else nodes[: max(1, n // 2)]
        up, events = doc["cloud"], []
        for node in hit:
            events.append({"at_s": _round(at, 3), "link": {
                "node": node["id"], "to": "cloud",
                "rtt_s": _round(up["rtt_s"] * rng.uniform(5, 20), 3),
                "bandwidth_bps": _round(up["bandwidth_bps"] / rng.uniform(10, 50), 3)}})
            events.append({"at_s": _round(until, 3), "link": {
                "node": node["id"], "to": "cloud", "rtt_s": up["rtt_s"],
                "bandwidth_bps": up["bandwidth_bps"]}})
        doc["events"] = events
    return doc


def generate(family: str, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` scenarios of `family` (`mixed`, ..., or `all`: the families in turn)."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count!r}")
    if family == "all":
        return [generate_one(FAMILIES[i % len(FAMILIES)], seed, i) for i in range(count)]
    return [generate_one(family, seed, i) for i in range(count)]


def to_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)
