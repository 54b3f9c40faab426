"""At most `max_candidates` neighbours per decision, so a decision costs the same in a cluster
of 5 nodes or of 200.

Scoring a neighbour as a candidate (its execution estimate, its aged queue, its link, the
cost model) is the per-decision work that grows with the cluster. A shortlist bounds it: the
neighbours with the best cheap *pre-score* (below), chosen again every half telemetry interval
(when decisions are made), and between two choices read at their latest state (a member's
newest report is used at once; only membership waits for the next choice). With no more
neighbours than `max_candidates`, every one of them is a candidate, as before.

The pre-score is a rough latency: the wait the neighbour itself reports (it knows its queue
mix), aged by the time since that report, plus the round trip to it as this node measures it,
plus the execution time there of the task being decided when the list is chosen (`exec_of`:
a fast idle neighbour before a slow idle one), plus a penalty for a suspect one; ties go to
the less loaded and then to an order that differs from one origin to the next (a hash of both
ids): were it the node id, every origin of a big cluster would shortlist the same idle few and
herd onto them. It ranks an idle neighbour at the same site (short measured RTT) before an
idle one behind a bridge, before a busy one; the cost model then compares the shortlisted
ones properly, per task.

Without the execution time every idle neighbour tied, and a heterogeneous cluster's origins
shortlisted idle ones by the hash, as often the slowest as the fastest: on a generated
30-node contention scenario cost's mean latency was 1.38x the oracle's, and 1.02x with it
(docs/scaling.md has the figures on 54 scenarios).
"""

from __future__ import annotations

import heapq
import zlib
from collections.abc import Callable

from edgesched.core.model import Liveness, NodeState
from edgesched.core.view import ClusterView

SUSPECT_PENALTY_S = 1.0  # a suspect neighbour ranks behind any online one with < 1 s of wait


def tie_order(origin: str, node_id: str) -> int:
    """An order of neighbours that differs from one origin to the next (stable across runs)."""
    return zlib.crc32(f"{origin}/{node_id}".encode())


def pre_score(node: NodeState, rtt_s: float, now: float, spread: int = 0,
              exec_s: float = 0.0) -> tuple[float, float, int]:
    """A neighbour's rank for the shortlist: lower is better (see the module docstring);
    `exec_s` is the decided task's execution time there (0 when no task is given), `spread`
    breaks ties (`tie_order`)."""
    if node.liveness is Liveness.OFFLINE:
        return (float("inf"), 0.0, spread)
    wait = max(0.0, node.est_wait_s - max(0.0, now - node.last_seen))
    if node.liveness is Liveness.SUSPECT:
        wait += SUSPECT_PENALTY_S
    load = (node.running + node.queued) / node.slots if node.slots > 0 else float("inf")
    return (wait + rtt_s + exec_s, load, spread)


class Shortlist:
    """The neighbours one node's decisions consider, from its `ClusterView`.

    `rtt_of(node_id, now)` is the round trip this node has measured to a neighbour (its
    estimators' answer). Edge neighbours only: other roles never become neighbour candidates.
    Membership is chosen again every `refresh_s` (default: half the telemetry interval, so
    each choice sees new reports).
    """

    def __init__(self, view: ClusterView, *, max_candidates: int,
                 rtt_of: Callable[[str, float], float],
                 refresh_s: float | None = None) -> None:
        if max_candidates < 1:
            raise ValueError(f"max_candidates must be >= 1, got {max_candidates!r}")
        self.view = view
        self.max_candidates = max_candidates
        self.refresh_s = view.params.interval_s if refresh_s is None else refresh_s
        self._rtt_of = rtt_of
        self._members: tuple[str, ...] = ()
        self._chosen_at = -float("inf")
        self._tie_orders: dict[str, int] = {}  # bounded by the view's table

    def neighbours(self, now: float,
                   exec_of: Callable[[str], float] | None = None) -> tuple[NodeState, ...]:
        """The decision neighbours (as `ClusterView.decision_neighbours`), at most
        `max_candidates` edge nodes of them. Costs O(max_candidates) between refreshes.
        `exec_of(node_id)`: the execution time there of the task being decided, read only
        when the list is chosen again."""
        if self.view.node_count <= self.max_candidates:
            return self.view.decision_neighbours(now)
        if now - self._chosen_at >= self.refresh_s or now < self._chosen_at:
            self._choose(now, exec_of)
        out = []
        for node_id in self._members:
            state = self.view.state(node_id, now)
            if state is not None:
                out.append(state)
        return tuple(out)

    def _spread(self, node: NodeState) -> int:
        order = self._tie_orders.get(node.node_id)
        if order is None:
            if len(self._tie_orders) >= self.view.params.max_nodes:
                self._tie_orders.clear()  # forgotten nodes' entries; rebuilt as needed
            order = self._tie_orders[node.node_id] = tie_order(self.view.local_id, node.node_id)
        return order

    def _choose(self, now: float, exec_of: Callable[[str], float] | None = None) -> None:
        edges = [n for n in self.view.decision_neighbours(now) if n.role == "edge"]

        def rank(n: NodeState) -> tuple[float, float, int]:
            exec_s = 0.0 if exec_of is None else exec_of(n.node_id)
            return pre_score(n, self._rtt_of(n.node_id, now), now, self._spread(n), exec_s)

        best = heapq.nsmallest(self.max_candidates, edges, key=rank)
        self._members = tuple(n.node_id for n in best)
        self._chosen_at = now
