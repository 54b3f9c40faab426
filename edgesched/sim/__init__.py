"""Discrete-event simulator running the same core decision code as the daemon."""

from __future__ import annotations

from edgesched.sim.runner import run_scenario
from edgesched.sim.scenario import Scenario, load_scenario

__all__ = ["Scenario", "load_scenario", "run_scenario"]
