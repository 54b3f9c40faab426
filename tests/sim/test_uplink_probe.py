"""The simulator's nodes probe a degraded uplink as the daemon does (core/probing.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from edgesched.errors import ScenarioError
from edgesched.sim.runner import run_policy
from edgesched.sim.scenario import CLOUD_ID, load_scenario
from edgesched.sim.workload import draw_stream

RECOVERY_S = 45.0


def scenario(probe_interval_s: float) -> dict[str, Any]:
    """Two nodes whose heavy work belongs in a fast cloud; n0's uplink degrades (250 ms,
    1 Mbit/s: slow replies that teach the collapse) from 20 s to 45 s, then is as before
    for the remaining 105 s."""
    return {
        "version": 1, "name": "uplink_recovery", "duration_s": 150, "seed": 7,
        "cloud": {"rtt_s": 0.03, "bandwidth_bps": 2e7, "speed": 8, "slots": 64,
                  "probe_interval_s": probe_interval_s},
        "links": {"rtt_s": 0.005, "bandwidth_bps": 1e8},
        "nodes": [{"id": "n0", "speed": 1, "slots": 2}, {"id": "n1", "speed": 1, "slots": 2}],
        "task_types": [{"name": "crunch", "work": {"dist": "lognormal", "mean": 0.2, "cv": 0.3},
                        "input_bytes": {"dist": "uniform", "low": 20000, "high": 60000},
                        "output_bytes": 1000, "deadline_s": 3}],
        "arrivals": [{"node": n, "type": "crunch", "process": "poisson", "rate_per_s": 3}
                     for n in ("n0", "n1")],
        "events": [{"at_s": 20, "link": {"node": "n0", "to": "cloud", "rtt_s": 0.25,
                                         "bandwidth_bps": 1e6}},
                   {"at_s": RECOVERY_S, "link": {"node": "n0", "to": "cloud", "rtt_s": 0.03,
                                                 "bandwidth_bps": 2e7}}],
    }


def run(probe_interval_s: float) -> tuple[float, float]:
    """(cost's mean latency, n0's estimated uplink bandwidth at the end)."""
    sc = load_scenario(scenario(probe_interval_s))
    record, engine = run_policy(sc, "cost", draw_stream(sc, sc.seed), sc.seed)
    n0 = next(n for n in engine.nodes if n.id == "n0")
    return float(np.mean(record.latency)), n0.brain.bank.link(CLOUD_ID, 150.0).bandwidth_bps


def test_a_recovered_uplink_is_used_again_after_a_probe() -> None:
    """Measured: without probes n0 keeps the 1 Mbit/s figure to the end and runs its work
    locally (mean 129 ms); with them a probe finds the recovery some 15-20 s after it (the
    interval had grown while the collapse lasted) and the mean is 93 ms."""
    without_latency, without_bw = run(0.0)
    with_latency, with_bw = run(10.0)
    # without probes the collapse stands: no task goes back to the cloud to re-measure it
    assert without_bw < 1e6
    # with them n0 learns the recovery and sends its work to the cloud again
    assert with_bw > 1e7
    assert with_latency < 0.9 * without_latency


def test_the_probe_interval_is_checked_like_the_configs() -> None:
    with pytest.raises(ScenarioError, match="probe_interval_s"):
        load_scenario(scenario(90.0))
