"""The simulator checked against queueing and transfer results that are known exactly."""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from edgesched.core.model import PowerModel
from edgesched.sim.links import Link, Transfer
from edgesched.sim.runner import run_scenario


def _single_node(**overrides: Any) -> dict[str, Any]:
    sc: dict[str, Any] = {
        "version": 1, "seed": 3, "duration_s": 6000,
        "cloud": {"rtt_s": 0.05, "bandwidth_bps": 8e6, "speed": 1.0, "slots": 8},
        "nodes": [{"id": "n1", "speed": 1.0, "slots": 1, "queue_size": 100_000}],
        "task_types": [{"name": "job", "work": {"dist": "exponential", "mean": 0.1},
                        "input_bytes": 0, "output_bytes": 0}],
        "arrivals": [{"node": "n1", "type": "job", "process": "poisson", "rate_per_s": 5.0}],
    }
    sc.update(overrides)
    return sc


def test_mm1_mean_sojourn_matches_theory() -> None:
    # M/M/1 with lambda = 5/s, mu = 10/s: mean time in system 1/(mu - lambda) = 0.2 s.
    report = run_scenario(_single_node(), ["local"])
    pol = report["policies"]["local"]
    assert pol["completed"] == report["tasks"] > 25_000
    assert pol["placements"] == {"local": report["tasks"], "neighbour": 0, "cloud": 0}
    assert abs(pol["mean_latency_s"] - 0.2) / 0.2 < 0.05, pol["mean_latency_s"]


def test_pure_transfer_takes_size_over_bandwidth_plus_rtt() -> None:
    # Zero work, rare arrivals (no sharing): latency = 8·in/bw + rtt + 8·out/bw.
    sc = _single_node(
        duration_s=2000,
        task_types=[{"name": "job", "work": 0, "input_bytes": 100_000, "output_bytes": 20_000}],
        arrivals=[{"node": "n1", "type": "job", "process": "poisson", "rate_per_s": 0.05}],
    )
    report = run_scenario(sc, ["cloud"])
    pol = report["policies"]["cloud"]
    expected = 8 * 120_000 / 8e6 + 0.05
    assert pol["placements"]["cloud"] == pol["completed"] == report["tasks"] > 50
    assert abs(pol["p50_latency_s"] - expected) < 1e-6
    assert abs(pol["mean_latency_s"] - expected) / expected < 0.01


class _Clock:
    """What a Link needs from the engine: `now`, the `events` heap of (at, seq, fn, arg)
    that it pushes its completion events onto, `schedule` and the tie-breaking `seq`."""

    def __init__(self) -> None:
        self.now = 0.0
        self.seq = itertools.count()
        self.events: list[tuple[float, int, Any, Any]] = []

    def schedule(self, at: float, fn: Any, arg: Any) -> None:
        heapq.heappush(self.events, (at, next(self.seq), fn, arg))

    def run(self) -> None:
        while self.events:
            at, _, fn, arg = heapq.heappop(self.events)
            self.now = at
            fn(arg)


class _End:
    def __init__(self, is_cloud: bool) -> None:
        self.id, self.is_cloud, self.energy_j = "x", is_cloud, 0.0
        self.power = PowerModel(idle_w=0, busy_w=0, tx_w=2.0, rx_w=1.0)


def test_concurrent_transfers_share_the_bandwidth() -> None:
    clock = _Clock()
    src, dst = _End(False), _End(True)
    link = Link(clock, src, dst, rtt_s=0.0, bandwidth_bps=1e6)
    done: dict[str, float] = {}

    def finished(tr: Transfer) -> None:
        done[tr.payload] = clock.now

    link.start(1e6, finished, "a")  # alone it would take 1 s
    link.start(0.5e6, finished, "b")  # shares: both at 0.5 Mbit/s
    clock.run()
    assert abs(done["b"] - 1.0) < 1e-9  # 0.5 Mbit at half rate
    assert abs(done["a"] - 1.5) < 1e-9  # 0.5 Mbit shared, then 0.5 Mbit alone
    # One radio: tx energy for 1.5 s of busy airtime, not 2.5 s of summed transfers.
    assert abs(src.energy_j - 2.0 * 1.5) < 1e-9 and dst.energy_j == 0.0


def test_a_link_event_slows_transfers_in_flight() -> None:
    clock = _Clock()
    link = Link(clock, _End(False), _End(False), rtt_s=0.0, bandwidth_bps=1e6)
    done: list[float] = []
    link.start(1e6, lambda tr: done.append(clock.now), None)
    clock.schedule(0.5, lambda _: link.set_state(None, 0.25e6), None)
    clock.run()
    assert abs(done[0] - (0.5 + 0.5e6 / 0.25e6)) < 1e-9


def test_a_cancelled_transfer_frees_its_share() -> None:
    clock = _Clock()
    link = Link(clock, _End(False), _End(False), rtt_s=0.0, bandwidth_bps=1e6)
    done: dict[str, float] = {}
    link.start(1e6, lambda tr: done.setdefault("a", clock.now), None)
    doomed = link.start(1e6, lambda tr: done.setdefault("b", clock.now), None)
    clock.schedule(0.5, lambda _: link.cancel(doomed), None)
    clock.run()
    assert "b" not in done
    assert abs(done["a"] - (0.5 + 0.75)) < 1e-9  # 0.25 Mbit shared, then 0.75 Mbit alone


def test_cancelling_a_finished_transfer_changes_nothing() -> None:
    clock = _Clock()
    link = Link(clock, _End(False), _End(False), rtt_s=0.0, bandwidth_bps=1e6)
    tr = link.start(1e5, lambda tr: None, None)
    clock.run()
    link.cancel(tr)
    assert link.active == 0 and link.share_bps() == 1e6
