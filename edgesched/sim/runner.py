"""Runs policies over a scenario and assembles the report (the Python API of the simulator)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np

from edgesched.core.costmodel import CostParams
from edgesched.core.fallback import FallbackParams
from edgesched.errors import UsageError
from edgesched.sim.brains import DaemonBrain, OracleBrain
from edgesched.sim.engine import Engine, RunRecord
from edgesched.sim.policies import (
    ALL_POLICY_NAMES,
    EcsBrain,
    EcsThresholdPolicy,
    OraclePolicy,
    make_sim_policy,
)
from edgesched.sim.report import build_report, policy_summary
from edgesched.sim.scenario import Scenario, load_scenario
from edgesched.sim.workload import TaskStream, draw_stream
from edgesched.sim.world import SimNode, World

__all__ = ["ALL_POLICY_NAMES", "load_scenario", "run_policy", "run_scenario"]


def cost_params(scenario: Scenario) -> CostParams:
    """The cost policy's parameters: the scenario's `policy:` block over the config defaults."""
    return scenario.policy_params


def _brain_factory(scenario: Scenario, policy: str, seed: int
                   ) -> Callable[[SimNode, World], DaemonBrain]:
    params = cost_params(scenario)
    fallback = FallbackParams()

    def make(node: SimNode, world: World) -> DaemonBrain:
        if policy == "oracle":
            return OracleBrain(node, world, OraclePolicy(), params, fallback)
        if policy.startswith("ecs_"):  # EdgeCloudSim's rules read its probes (sim/policies.py)
            return EcsBrain(node, world, EcsThresholdPolicy(policy, params), params, fallback)
        rng = np.random.default_rng([seed, node.index, 0x5EED])
        return DaemonBrain(node, world, make_sim_policy(policy, params, rng), params, fallback)

    return make


def run_policy(scenario: Scenario, policy: str, stream: TaskStream, seed: int,
               progress: Callable[[int], None] | None = None) -> tuple[RunRecord, Engine]:
    """One run of one policy over a task stream; returns the outcome and the finished engine."""
    engine = Engine(scenario, stream, _brain_factory(scenario, policy, seed), progress)
    return engine.run(), engine


def check_policies(policies: Sequence[str] | None) -> list[str]:
    """The policies to run (all of them by default); UsageError for unknown names."""
    if not policies:
        return list(ALL_POLICY_NAMES)
    unknown = [p for p in policies if p not in ALL_POLICY_NAMES]
    if unknown:
        raise UsageError(f"unknown policy {', '.join(map(repr, unknown))}; valid names: "
                         f"{', '.join(ALL_POLICY_NAMES)}")
    return list(dict.fromkeys(policies))


def _summary(scenario: Scenario, name: str, stream: TaskStream, seed: int,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    outcome, engine = run_policy(scenario, name, stream, seed, progress)
    summary = policy_summary(outcome, len(stream), sum(n.energy_j for n in engine.nodes))
    # Extensions: where the energy went, and what is left in each battery at the end.
    summary["energy_j_by_node"] = {n.id: round(n.energy_j, 3) for n in engine.nodes}
    batteries = {n.id: n.battery_level(engine.now) for n in engine.nodes}
    summary["battery_at_end"] = {k: round(v, 4) for k, v in batteries.items() if v is not None}
    return summary


def _summary_in_worker(args: tuple[Scenario, str, int]) -> dict[str, Any]:
    scenario, name, seed = args  # the stream is redrawn: same seed, same stream
    return _summary(scenario, name, draw_stream(scenario, seed), seed)


def run_scenario(
    scenario: Scenario | str | Mapping[str, Any],
    policies: Sequence[str] | None = None,
    seed: int | None = None,
    *,
    on_progress: Callable[[str, int, int], None] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Run each policy on the same task stream; the contract §5 report as a plain dict.

    `on_progress(policy, tasks_done, tasks_total)` is called now and then during each run
    (with `workers > 1`, once per policy when it finishes). `workers > 1` runs policies in
    that many processes; the results are identical, only the wall time changes.
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    names = check_policies(policies)
    seed = scenario.seed if seed is None else seed
    stream = draw_stream(scenario, seed)
    total = len(stream)
    summaries: dict[str, dict[str, Any]] = {}
    if workers > 1 and len(names) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(names))) as pool:
            futures = {pool.submit(_summary_in_worker, (scenario, n, seed)): n for n in names}
            for fut in as_completed(futures):
                summaries[futures[fut]] = fut.result()
                if on_progress is not None:
                    on_progress(futures[fut], total, total)
        summaries = {n: summaries[n] for n in names}
    else:
        for name in names:
            progress = None
            if on_progress is not None:
                def progress(done: int, _name: str = name) -> None:
                    on_progress(_name, done, total)
            summaries[name] = _summary(scenario, name, stream, seed, progress)
    return build_report(scenario, seed, total, summaries)
