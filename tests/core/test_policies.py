"""The policies by name: cost and the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from edgesched.core.costmodel import CostParams
from edgesched.core.model import ExecEstimate, Liveness, OffloadPolicy, PowerModel
from edgesched.core.policies import POLICY_NAMES, make_policy
from tests.core.builders import cloud, local, neighbour, task

RNG = np.random.default_rng


def pol(name: str, seed: int = 0):
    return make_policy(name, CostParams(), RNG(seed))


def test_all_names_resolve_and_unknown_names_say_what_is_valid() -> None:
    for name in POLICY_NAMES:
        assert pol(name).name == name
    with pytest.raises(ValueError, match="valid names: cost, local, cloud"):
        pol("fastest")


CANDS = [
    local(est_wait_s=0.3, running=2, queued=3),
    neighbour("gw-2", running=1),
    neighbour("gw-3", liveness=Liveness.OFFLINE),
    cloud(),
]


@pytest.mark.parametrize(
    ("name", "chosen"),
    [("cost", "cloud"), ("local", "gw-1"), ("cloud", "cloud"), ("least_loaded", "cloud"),
     ("greedy_latency", "cloud")],
)
def test_each_policy_choice(name: str, chosen: str) -> None:
    d = pol(name).decide(task(), CANDS, 0.0)
    assert d.policy == name and d.chosen is not None and d.chosen.node_id == chosen
    assert "gw-3" not in [e.node_id for e in d.ranked()]  # offline: never, for any policy
    assert len(d.evaluations) == len(CANDS)


def test_baselines_respect_the_offload_policy() -> None:
    t = task(offload=OffloadPolicy.LOCAL)
    for name in POLICY_NAMES:
        d = pol(name).decide(t, CANDS, 0.0)
        assert [e.node_id for e in d.ranked()] == ["gw-1"], name


def test_round_robin_rotates_over_feasible_targets() -> None:
    p = pol("round_robin")
    chosen = [p.decide(task(), CANDS, float(i)).chosen.node_id for i in range(6)]  # type: ignore[union-attr]
    assert chosen == ["cloud", "gw-1", "gw-2"] * 2


def test_random_covers_the_targets_and_is_seeded() -> None:
    seen = {pol("random", 1).decide(task(), CANDS, 0.0).chosen.node_id}  # type: ignore[union-attr]
    p = pol("random", 1)
    seen |= {p.decide(task(), CANDS, 0.0).chosen.node_id for _ in range(50)}  # type: ignore[union-attr]
    assert seen == {"gw-1", "gw-2", "cloud"}


def test_cost_trades_latency_for_energy_only_on_battery() -> None:
    # Local is 30 ms faster but burns 2 J more than shipping the task to a mains neighbour.
    hot = PowerModel(idle_w=0.0, busy_w=10.0, tx_w=0.5, rx_w=0.5)
    def cands(battery: float | None):
        return [local(exec=ExecEstimate(mean_s=0.2), power=hot, battery=battery),
                neighbour("gw-2", exec=ExecEstimate(mean_s=0.2), est_wait_s=0.01,
                          power=PowerModel(), origin_power=hot, origin_battery=battery)]
    assert pol("cost").decide(task(), cands(None), 0.0).chosen.node_id == "gw-1"  # type: ignore[union-attr]
    assert pol("cost").decide(task(), cands(0.8), 0.0).chosen.node_id == "gw-2"  # type: ignore[union-attr]
    assert pol("greedy_latency").decide(task(), cands(0.8), 0.0).chosen.node_id == "gw-1"  # type: ignore[union-attr]


def test_cost_honours_the_deadline_baselines_do_not() -> None:
    t = task(deadline_s=0.35)
    slow_local = [local(est_wait_s=0.5), cloud()]
    assert pol("cost").decide(t, slow_local, 0.0).chosen.node_id == "cloud"  # type: ignore[union-attr]
    assert pol("local").decide(t, slow_local, 0.0).chosen.node_id == "gw-1"  # type: ignore[union-attr]


def test_elapsed_time_counts_against_the_deadline() -> None:
    t = task(deadline_s=1.0, submitted_at=10.0)
    d = pol("cost").decide(t, [local()], 10.0)
    assert d.feasible
    d = pol("cost").decide(t, [local()], 10.9)
    assert not d.feasible and d.evaluations[0].reason is not None


def test_best_effort_tries_the_least_late_when_nothing_meets_the_deadline() -> None:
    t = task(deadline_s=0.1)
    cands = [local(est_wait_s=0.5), cloud(), neighbour("gw-3", liveness=Liveness.OFFLINE)]
    strict = pol("cost").decide(t, cands, 0.0)
    assert strict.chosen is None and not strict.best_effort
    tolerant = make_policy("cost", CostParams(deadline_best_effort=True), RNG(0))
    d = tolerant.decide(t, cands, 0.0)
    assert d.best_effort
    assert [e.node_id for e in d.ranked()] == ["cloud", "gw-1"]  # by latency quantile
    # Never the offline one; and with a feasible target there is no best effort.
    assert not tolerant.decide(task(deadline_s=0.5), cands, 0.0).best_effort
