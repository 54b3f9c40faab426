"""Which changed keys a SIGHUP applies, and that a restart-only policy key is kept as it runs."""

from __future__ import annotations

from typing import Any

from edgesched.config import Settings
from edgesched.node.reload import Reloader


def settings(**policy: Any) -> Settings:
    return Settings(node_id="gw-1", policy=policy)


def test_max_candidates_needs_a_restart_while_the_weights_reload() -> None:
    applied: list[Any] = []
    running = settings()
    reloader = Reloader(running, apply_policy=applied.append,
                        apply_task_types=lambda types: None,
                        apply_logging=lambda log_settings: None)
    result = reloader.reload(lambda: settings(max_candidates=9, energy_weight=0.5))
    assert [c.key for c in result.applied] == ["policy.energy_weight"]
    assert [c.key for c in result.needs_restart] == ["policy.max_candidates"]
    # the policy handed to the pipeline keeps the running shortlist size
    assert applied and applied[-1].energy_weight == 0.5
    assert applied[-1].max_candidates == running.policy.max_candidates
