"""`edgesched simulate` end to end through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgesched.cli import main

SMALL = """
version: 1
name: small
duration_s: 30
seed: 2
nodes:
  - {id: a, slots: 2}
  - {id: b, slots: 2, speed: 2.0}
task_types:
  - {name: t, work: {dist: exponential, mean: 0.1}, input_bytes: 20000, output_bytes: 100,
     deadline_s: 0.5}
arrivals:
  - {node: a, type: t, process: poisson, rate_per_s: 12}
"""

CONTRACT_KEYS = {"completed", "mean_latency_s", "p50_latency_s", "p95_latency_s",
                 "p99_latency_s", "deadline_miss_ratio", "energy_j_per_task", "placements",
                 "failures"}


def test_simulate_writes_the_contract_json_and_a_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "small.yaml"
    scenario.write_text(SMALL)
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    code = main(["simulate", str(scenario), "--policy", "cost", "--policy", "oracle",
                 "--policy", "ecs_hybrid", "--seed", "4", "--json", str(out),
                 "--plot", str(png)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["scenario"] == "small" and report["seed"] == 4 and report["tasks"] > 200
    assert list(report["policies"]) == ["cost", "oracle", "ecs_hybrid"]
    for pol in report["policies"].values():
        assert set(pol) >= CONTRACT_KEYS
        assert set(pol["placements"]) == {"local", "neighbour", "cloud"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "ecs_hybrid" in printed and "cost mean latency / oracle" in printed


def test_invalid_scenario_exits_78_with_dotted_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(SMALL.replace("slots: 2, speed: 2.0", "slots: 0, speed: fast"))
    assert main(["simulate", str(scenario)]) == 78
    err = capsys.readouterr().err.splitlines()
    assert "nodes.1.slots: must be >= 1" in err
    assert "nodes.1.speed: must be a number, got str" in err
    assert not any("Traceback" in line for line in err)


def test_unknown_policy_is_a_usage_error(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "small.yaml"
    scenario.write_text(SMALL)
    assert main(["simulate", str(scenario), "--policy", "magic"]) == 2
    assert "unknown policy 'magic'" in capsys.readouterr().err
