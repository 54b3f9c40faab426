"""Runs policies over a scenario and assembles the report (the Python API of the simulator)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edgesched.core.costmodel import CostParams
from edgesched.core.fallback import FallbackParams
from edgesched.errors import UsageError
from edgesched.sim.brains import DaemonBrain, OracleBrain
from edgesched.sim.engine import Engine, Outcome, SimNode
from edgesched.sim.policies import ALL_POLICY_NAMES, OraclePolicy, make_sim_policy
from edgesched.sim.report import build_report, policy_summary
from edgesched.sim.scenario import Scenario, load_scenario
from edgesched.sim.workload import TaskStream, draw_stream

__all__ = ["ALL_POLICY_NAMES", "load_scenario", "run_policy", "run_scenario"]


def cost_params(scenario: Scenario) -> CostParams:
    """The cost policy's parameters: the scenario's `policy:` block over the config defaults."""
    return scenario.policy_params


def _brain_factory(scenario: Scenario, policy: str, seed: int
                   ) -> Callable[[Engine, SimNode], DaemonBrain]:
    params = cost_params(scenario)
    fallback = FallbackParams()

    def make(engine: Engine, node: SimNode) -> DaemonBrain:
        if policy == "oracle":
            return OracleBrain(engine, node, OraclePolicy(), params, fallback)
        rng = np.random.default_rng([seed, node.index, 0x5EED])
        return DaemonBrain(engine, node, make_sim_policy(policy, params, rng), params, fallback)

    return make


def run_policy(scenario: Scenario, policy: str, stream: TaskStream, seed: int,
               progress: Callable[[int], None] | None = None) -> tuple[Outcome, Engine]:
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


def run_scenario(
    scenario: Scenario | str | Mapping[str, Any],
    policies: Sequence[str] | None = None,
    seed: int | None = None,
    *,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run each policy on the same task stream; the CONTRACTS §5 report as a plain dict.

    `on_progress(policy, tasks_done, tasks_total)` is called now and then during each run.
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    names = check_policies(policies)
    seed = scenario.seed if seed is None else seed
    stream = draw_stream(scenario, seed)
    summaries: dict[str, dict[str, Any]] = {}
    for name in names:
        progress = None
        if on_progress is not None:
            def progress(done: int, _name: str = name) -> None:
                on_progress(_name, done, len(stream))
        outcome, engine = run_policy(scenario, name, stream, seed, progress)
        energy = sum(n.energy_j for n in engine.nodes)
        summaries[name] = policy_summary(outcome, len(stream), energy)
    return build_report(scenario, seed, len(stream), summaries)
