"""The simulator's report: per-policy figures (contract §5), the comparison, the text table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgesched.sim.engine import RunRecord
from edgesched.sim.policies import SIM_POLICY_NAMES
from edgesched.sim.scenario import Scenario

MISS_TOLERANCE = 0.01  # cost may miss at most this much more often than the best baseline
COMPARABLE_MISS = 0.02  # policies this close in miss ratio are compared on latency
LATENCY_TOLERANCE = 1.02  # ... and cost's mean latency must be within 2 % of the best of them
ORACLE_TOLERANCE = 1.15  # ... and within 15 % of the oracle's
# Not baselines of `cost`: the oracle, and EdgeCloudSim's rules, which read its exact probes
# (sim/policies.py: EcsBrain), more than a daemon can know.
NOT_BASELINES = ("cost", *SIM_POLICY_NAMES)


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 6)


def policy_summary(outcome: RunRecord, submitted: int, edge_energy_j: float) -> dict[str, Any]:
    """One policy's figures. Latencies are over completed tasks; a task that never completed
    counts as a deadline miss; energy is edge energy per submitted task."""
    lat = np.asarray(outcome.latency, dtype=float)
    completed = int(lat.shape[0])
    if completed:
        mean = float(lat.mean())
        p50, p95, p99 = (float(v) for v in np.percentile(lat, [50, 95, 99]))
    else:
        mean = p50 = p95 = p99 = math.nan
    misses = submitted - outcome.completed_in_time
    err = np.asarray(outcome.prediction_error, dtype=float)
    covered = outcome.covered
    return {
        "completed": completed,
        "mean_latency_s": _round(mean),
        "p50_latency_s": _round(p50),
        "p95_latency_s": _round(p95),
        "p99_latency_s": _round(p99),
        "deadline_miss_ratio": _round(misses / submitted) if submitted else 0.0,
        "energy_j_per_task": _round(edge_energy_j / submitted) if submitted else 0.0,
        "placements": dict(outcome.placements),
        "failures": dict(sorted(outcome.failures.items())),
        "prediction_error_mean_s": _round(float(err.mean())) if err.size else None,
        # share of completed tasks within the latency quantile their attempt was judged on
        "prediction_coverage": _round(sum(covered) / len(covered)) if covered else None,
    }


def comparison(policies: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """How `cost` fares against the baselines and the oracle (None when it was not run)."""
    cost = policies.get("cost")
    baselines = {k: v for k, v in policies.items() if k not in NOT_BASELINES}
    if cost is None or len(policies) < 2:
        return None
    miss = cost["deadline_miss_ratio"]
    best_name = min(baselines, key=lambda k: baselines[k]["deadline_miss_ratio"],
                    default=None)
    best_miss = None if best_name is None else baselines[best_name]["deadline_miss_ratio"]
    comparable = {k: v for k, v in baselines.items()
                  if abs(v["deadline_miss_ratio"] - miss) <= COMPARABLE_MISS + 1e-12
                  and v["mean_latency_s"] is not None}
    out: dict[str, Any] = {
        "best_baseline_by_miss": best_name,
        "miss_ratio_minus_best_baseline": None if best_miss is None else _round(
            miss - best_miss),
        "fastest_comparable_baseline": None,
        "latency_ratio_vs_fastest_comparable": None,
        "latency_ratio_vs_oracle": None,
        "energy_ratio_vs_greedy_latency": None,
    }
    mean = cost["mean_latency_s"]
    if comparable and mean is not None:
        fastest = min(comparable, key=lambda k: comparable[k]["mean_latency_s"])
        out["fastest_comparable_baseline"] = fastest
        out["latency_ratio_vs_fastest_comparable"] = _round(
            mean / comparable[fastest]["mean_latency_s"])
    oracle = policies.get("oracle")
    if oracle and oracle["mean_latency_s"] and mean is not None:
        out["latency_ratio_vs_oracle"] = _round(mean / oracle["mean_latency_s"])
    greedy = policies.get("greedy_latency")
    if greedy and greedy["energy_j_per_task"]:
        out["energy_ratio_vs_greedy_latency"] = _round(
            cost["energy_j_per_task"] / greedy["energy_j_per_task"])
    return out


def build_report(scenario: Scenario, seed: int, tasks: int,
                 policies: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON report: contract §5 keys, plus `comparison` (an extension)."""
    report: dict[str, Any] = {"scenario": scenario.name, "seed": seed, "tasks": tasks,
                              "policies": policies}
    cmp = comparison(policies)
    if cmp is not None:
        report["comparison"] = cmp
    return report


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """The comparison table as text cells, one row per policy (header first)."""
    rows = [["policy", "done", "mean ms", "p50 ms", "p95 ms", "p99 ms", "miss %", "J/task",
             "local/neigh/cloud", "failures", "q cover %"]]
    for name, p in report["policies"].items():
        pl = p["placements"]
        fails = ", ".join(f"{k} {v}" for k, v in p["failures"].items()) or "-"
        rows.append([
            name, str(p["completed"]), _fmt(p["mean_latency_s"], 1e3),
            _fmt(p["p50_latency_s"], 1e3), _fmt(p["p95_latency_s"], 1e3),
            _fmt(p["p99_latency_s"], 1e3), _fmt(p["deadline_miss_ratio"], 100, 2),
            _fmt(p["energy_j_per_task"], 1, 3),
            f"{pl['local']}/{pl['neighbour']}/{pl['cloud']}", fails,
            # share of completed tasks within the latency quantile they were judged on
            _fmt(p.get("prediction_coverage"), 100, 1),
        ])
    return rows


def comparison_lines(report: dict[str, Any]) -> list[str]:
    """The cost policy's standing in words, with the acceptance ratios."""
    cmp = report.get("comparison")
    if not cmp:
        return []
    lines = []
    if cmp["miss_ratio_minus_best_baseline"] is not None:
        lines.append(f"cost miss ratio - best baseline's ({cmp['best_baseline_by_miss']}): "
                     f"{cmp['miss_ratio_minus_best_baseline']:+.4f}  "
                     f"(target <= +{MISS_TOLERANCE})")
    if cmp["latency_ratio_vs_fastest_comparable"] is not None:
        lines.append(
            f"cost mean latency / fastest comparable baseline "
            f"({cmp['fastest_comparable_baseline']}): "
            f"{cmp['latency_ratio_vs_fastest_comparable']:.3f}  (target <= {LATENCY_TOLERANCE})")
    if cmp["latency_ratio_vs_oracle"] is not None:
        lines.append(f"cost mean latency / oracle: {cmp['latency_ratio_vs_oracle']:.3f}  "
                     f"(target <= {ORACLE_TOLERANCE})")
    if cmp["energy_ratio_vs_greedy_latency"] is not None:
        lines.append(f"cost energy per task / greedy_latency: "
                     f"{cmp['energy_ratio_vs_greedy_latency']:.3f}")
    return lines
