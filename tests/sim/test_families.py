"""Generated scenario families (sim/generate.py) and the simulator's honesty.

- The generator: valid scenarios, the same ones for the same arguments, every family.
- A small fixed set of generated scenarios (seeds nothing was tuned on) holds issue 20's
  claims; benchmarks/bench_families.py runs 54 of them.
- Honesty: a daemon-model brain (every policy but the oracle) runs with guards on everything
  that is not its own: other nodes show only what their state documents announce (id,
  incarnation, slots, speed), the scenario only what an operator configures (no arrivals, no
  outages to come, no events); any other read fails the run.
"""

from __future__ import annotations

from typing import Any

import pytest

from edgesched.sim.engine import Engine
from edgesched.sim.generate import (
    FAMILIES,
    generate,
    generate_one,
    run_family,
    summarise,
    to_yaml,
)
from edgesched.sim.runner import _brain_factory
from edgesched.sim.scenario import load_scenario
from edgesched.sim.workload import draw_stream

SMALL_SET_SEED = 4242  # not a seed any tuning ran on


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_draws_valid_reproducible_scenarios(family: str) -> None:
    docs = generate(family, 3, 7)
    for doc in docs:
        scenario = load_scenario(doc)
        assert 2 <= len(scenario.nodes) <= 30
        assert scenario.arrivals
    assert [to_yaml(d) for d in docs] == [to_yaml(d) for d in generate(family, 3, 7)]
    assert to_yaml(docs[0]) != to_yaml(generate(family, 1, 8)[0])


def test_families_draw_what_they_say() -> None:
    assert any(n.get("down") for n in generate_one("outage", 3)["nodes"])
    assert any(n.get("battery") for n in generate_one("battery", 3)["nodes"])
    assert generate_one("wan_collapse", 3)["events"]
    assert all(t["work"]["cv"] >= 1.0 for t in generate_one("heavy_tail", 3)["task_types"])
    assert len(generate_one("contention", 3)["nodes"]) >= 8
    with pytest.raises(ValueError, match="unknown family"):
        generate_one("nope", 1)


def test_a_small_fixed_set_holds_issue_20s_claims() -> None:
    """One scenario per family, shortened (~30 s each of cost, four baselines, oracle)."""
    docs = []
    for family in FAMILIES:
        doc = generate_one(family, SMALL_SET_SEED)
        doc["duration_s"] = 30.0
        for ev in doc.get("events", []):
            ev["at_s"] = min(ev["at_s"], 25.0) * 0.5
        for node in doc["nodes"]:
            for down in node.get("down", []):
                down["at_s"], down["for_s"] = 8.0, 8.0
        docs.append(doc)
    rows = run_family(docs, ["cost", "local", "least_loaded", "greedy_latency", "oracle"])
    summary = summarise(rows)
    print(summary)
    # measured (seed 4242, 30 s each): cost within +0.005 of the best baseline's miss ratio
    # on all six, cost/oracle 1.01-1.19 (median 1.11), coverage 0.921-0.953
    assert summary["miss_within_best_baseline_share"] == 1.0, rows
    assert summary["cost_over_oracle_median"] <= 1.15, rows
    for row in rows:
        assert row["cost_over_oracle"] <= 1.25, row
        if row["completed"] >= 500:
            assert 0.90 <= row["coverage"] <= 0.98, row


# ---- honesty ----------------------------------------------------------------------------

ANNOUNCED = frozenset({"id", "incarnation", "slots", "speed"})  # a state document's fields
OPERATOR_CONFIG = frozenset({"task_types", "telemetry_interval_s", "cloud", "links", "nodes",
                             "node"})
NODE_SPEC_CONFIG = frozenset({"id", "uplink", "speed", "slots"})


class HiddenStateError(AssertionError):
    pass


class _Guard:
    """Passes through the attributes in `allowed`; any other read is hidden state."""

    def __init__(self, target: Any, allowed: frozenset[str], what: str,
                 wrap: dict[str, Any] | None = None) -> None:
        object.__setattr__(self, "_t", target)
        object.__setattr__(self, "_allowed", allowed)
        object.__setattr__(self, "_what", what)
        object.__setattr__(self, "_wrap", wrap or {})

    def __getattr__(self, name: str) -> Any:
        if name not in self._allowed:
            raise HiddenStateError(f"a daemon brain read {self._what}.{name}")
        value = getattr(self._t, name)
        wrap = self._wrap.get(name)
        return wrap(value) if wrap is not None else value


def _guard_node(node: Any) -> _Guard:
    return _Guard(node, ANNOUNCED, f"node {node.id}")


def _guard_spec(spec: Any) -> _Guard:
    return _Guard(spec, NODE_SPEC_CONFIG, f"scenario node {spec.id}")


def _guard_world(world: Any) -> _Guard:
    scenario = _Guard(world.scenario, OPERATOR_CONFIG, "scenario", {
        "nodes": lambda nodes: [_guard_spec(n) for n in nodes],
        "node": lambda fn: lambda node_id: _guard_spec(fn(node_id)),
    })
    return _Guard(world, frozenset({"scenario", "cloud", "nodes", "prior_exec"}), "world", {
        "scenario": lambda _s: scenario,
        "cloud": lambda cloud: None if cloud is None else _Guard(cloud, frozenset({"speed"}),
                                                                  "cloud"),
        "nodes": lambda nodes: [_guard_node(n) for n in nodes],
    })


def _guarded_factory(scenario: Any, policy: str, seed: int) -> Any:
    make = _brain_factory(scenario, policy, seed)

    def factory(node: Any, world: Any) -> Any:
        brain = make(node, _guard_world(world))
        own = node

        def guard_other(fn: Any) -> Any:
            def call(other: Any, *args: Any, **kwargs: Any) -> Any:
                return fn(other if other is own else _guard_node(other), *args, **kwargs)
            return call

        def guard_observed(fn: Any) -> Any:
            def call(task: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
                return fn(task, target if target is own else _guard_node(target), *args,
                          **kwargs)
            return call

        brain.announce = guard_other(brain.announce)
        brain.telemetry = guard_other(brain.telemetry)
        brain.observed = guard_observed(brain.observed)
        return brain

    return factory


@pytest.mark.parametrize("policy", ["cost", "greedy_latency", "least_loaded", "random"])
def test_daemon_brains_read_no_state_the_daemon_cannot_see(policy: str) -> None:
    doc = generate_one("outage", 11)
    doc["duration_s"] = 20.0
    for node in doc["nodes"]:
        for down in node.get("down", []):
            down["at_s"], down["for_s"] = 5.0, 5.0
    scenario = load_scenario(doc)
    stream = draw_stream(scenario, scenario.seed)
    record = Engine(scenario, stream, _guarded_factory(scenario, policy, 1)).run()
    assert record.latency  # it ran, and never read what it must not


def test_the_guard_catches_a_peek() -> None:
    doc = generate_one("mixed", 11)
    scenario = load_scenario(doc)
    world_like = type("W", (), {"scenario": scenario, "cloud": None, "nodes": [],
                                "prior_exec": lambda self, i: 0.1})()
    guarded = _guard_world(world_like)
    with pytest.raises(HiddenStateError, match=r"scenario\.arrivals"):
        _ = guarded.scenario.arrivals
    with pytest.raises(HiddenStateError, match="down"):
        _ = guarded.scenario.nodes[0].down


def test_simulate_generate_writes_runs_and_summarises(
        tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from edgesched.cli import main

    out, report = tmp_path / "gen", tmp_path / "r.json"
    assert main(["simulate", "--generate", "mixed", "--count", "2", "--seed", "3", "--out",
                 str(out), "--no-run"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["mixed-3-0.yaml", "mixed-3-1.yaml"]
    assert load_scenario(out / written[0]).name == "mixed-3-0"
    assert main(["simulate", "--generate", "mixed", "--count", "1", "--seed", "3",
                 "--policy", "cost", "--policy", "local", "--policy", "oracle",
                 "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "cost/oracle mean latency: median" in text and "mixed-3-0" in text
    doc = json.loads(report.read_text())
    assert doc["summary"]["scenarios"] == 1 and doc["rows"][0]["best_baseline"] == "local"
    assert main(["simulate", "--generate", "nope"]) == 2
    assert "unknown family 'nope'" in capsys.readouterr().err
    assert main(["simulate"]) == 2


def test_a_collapsed_uplink_is_noticed_from_the_attempts_it_times_out() -> None:
    """wan_collapse-4242-5: a cloud-favoured workload whose uplink degrades for a third of the
    run. Measured before `InFlight.gave_up`: cost missed 3.3 % of deadlines (every deadline
    task of the worst-hit nodes went to the cloud and timed out, for the whole collapse), the
    local baseline 0.27 %. Now cost stays within the acceptance tolerance of it."""
    rows = run_family([generate_one("wan_collapse", SMALL_SET_SEED, 5)], ["cost", "local"])
    row = rows[0]
    assert row["best_baseline"] == "local"
    assert row["cost_miss"] <= row["best_baseline_miss"] + 0.01, row
    assert row["cost_over_best_baseline"] < 0.8, row  # and still well faster than local
