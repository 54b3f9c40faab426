"""EdgeCloudSim's sample_app2 side by side: the three shipped equivalents, in full.

    .venv/bin/python benchmarks/bench_edgecloudsim.py            # ecs_* and cost, all three
    .venv/bin/python benchmarks/bench_edgecloudsim.py --devices 200 --policy ecs_network

Runs configs/scenarios/edgecloudsim_app2_{200,600,1000}.yaml (30, 30 and 15 simulated
minutes, as EdgeCloudSim was run) and prints, per device count and rule, EdgeCloudSim's own
figures (its outputs, quoted from issue 21) beside ours, with the issue's acceptance checks:
cloud share within 5 points, mean latency within 30 % of EdgeCloudSim's mean service time,
and EdgeCloudSim's ordering HYBRID <= UTILIZATION < NETWORK at 200 and 600 devices. `cost`
(no EdgeCloudSim counterpart) is run to check it loses no deadline-free task. Each policy runs
in its own process (`--jobs`, default the CPU count). Exit 1 if a check fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgesched.sim.runner import run_scenario  # noqa: E402

# EdgeCloudSim's outputs (sample_app2, shipped configuration; issue 21):
# (failed %, mean service time s, cloud share %) per device count and rule.
EDGECLOUDSIM: dict[int, dict[str, tuple[float, float, float]]] = {
    200: {"ecs_network": (0.52, 1.289, 98.7), "ecs_utilization": (0.55, 1.076, 0.0),
          "ecs_hybrid": (0.45, 1.053, 0.0)},
    600: {"ecs_network": (0.66, 1.513, 68.1), "ecs_utilization": (0.56, 1.259, 0.0),
          "ecs_hybrid": (0.61, 1.266, 0.0)},
    1000: {"ecs_network": (0.68, 1.520, 51.7), "ecs_utilization": (0.69, 1.556, 0.0),
           "ecs_hybrid": (0.69, 1.456, 0.0)},
}
RULES = ("ecs_network", "ecs_utilization", "ecs_hybrid")
SHARE_POINTS = 5.0
LATENCY_RATIO = 0.30


def scenario_path(devices: int) -> Path:
    return ROOT / "configs" / "scenarios" / f"edgecloudsim_app2_{devices}.yaml"


def cloud_share_pct(summary: dict[str, Any]) -> float:
    placed = summary["placements"]
    total = sum(placed.values())
    return 100.0 * placed["cloud"] / total if total else 0.0


def _run(args: tuple[int, str]) -> tuple[int, str, dict[str, Any], int, float]:
    devices, policy = args
    started = time.perf_counter()
    report = run_scenario(str(scenario_path(devices)), [policy])
    return devices, policy, report["policies"][policy], report["tasks"], (
        time.perf_counter() - started)


def checks(results: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    """The issue's claims that do not hold (empty when all hold)."""
    bad = []
    for devices, per in results.items():
        for rule in RULES:
            if rule not in per:
                continue
            _, ecs_mean, ecs_share = EDGECLOUDSIM[devices][rule]
            ours = per[rule]
            share = cloud_share_pct(ours)
            if abs(share - ecs_share) > SHARE_POINTS:
                bad.append(f"{devices} {rule}: cloud share {share:.1f}% vs {ecs_share}%")
            mean = ours["mean_latency_s"]
            if mean is None or abs(mean / ecs_mean - 1.0) > LATENCY_RATIO:
                bad.append(f"{devices} {rule}: mean {mean} s vs {ecs_mean} s")
        if devices in (200, 600) and all(r in per for r in RULES):
            net, util, hyb = (per[r]["mean_latency_s"] for r in RULES)
            if not hyb <= util < net:
                bad.append(f"{devices}: ordering hybrid {hyb} <= utilization {util} < "
                           f"network {net} does not hold")
        if "cost" in per and per["cost"]["failures"]:
            bad.append(f"{devices} cost lost deadline-free tasks: {per['cost']['failures']}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, action="append", choices=sorted(EDGECLOUDSIM))
    ap.add_argument("--policy", action="append", dest="policies")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    device_counts = args.devices or sorted(EDGECLOUDSIM)
    policies = args.policies or [*RULES, "cost"]
    work = [(d, p) for d in device_counts for p in policies]
    results: dict[int, dict[str, dict[str, Any]]] = {d: {} for d in device_counts}
    tasks: dict[int, int] = {}
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(work)))) as pool:
        for devices, policy, summary, n, secs in pool.map(_run, work):
            results[devices][policy] = summary
            tasks[devices] = n
            print(f"  ran {devices} devices {policy} ({n} tasks) in {secs:.0f}s",
                  file=sys.stderr)
    print("| devices | policy | EdgeCloudSim failed % · mean service s · cloud share "
          "| edgesched miss % · mean s · cloud share | mean / EdgeCloudSim's |")
    print("|---|---|---|---|---|")
    for devices in device_counts:
        for policy in policies:
            s = results[devices][policy]
            ours = (f"{100 * s['deadline_miss_ratio']:.2f} · {s['mean_latency_s']:.3f} · "
                    f"{cloud_share_pct(s):.1f}%")
            theirs, ratio = "(no counterpart)", ""
            if policy in EDGECLOUDSIM[devices]:
                failed, mean, share = EDGECLOUDSIM[devices][policy]
                theirs = f"{failed:.2f} · {mean:.3f} · {share:.1f}%"
                ratio = f"{s['mean_latency_s'] / mean:.2f}"
            print(f"| {devices} | {policy} | {theirs} | {ours} | {ratio} |")
    print(f"\ntasks: {tasks}; wall time {time.perf_counter() - started:.0f}s "
          f"({args.jobs} processes)")
    bad = checks(results)
    for line in bad:
        print(f"CHECK FAILED: {line}")
    if not bad:
        print("all checks hold: cloud share within 5 points, mean within 30 %, ordering at "
              "200 and 600 devices, cost loses no deadline-free task")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
