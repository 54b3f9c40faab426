"""ε-greedy exploration around a placement policy (`record.explore`, docs/replay.md).

With probability ε the chosen target is drawn uniformly from the feasible candidates instead
of the policy's choice, so every choice has a known probability (its *propensity*, recorded
with the task's trace) and off-policy estimates over a recording are possible. The daemon
wraps its configured policy in it when `record.explore` > 0; `edgesched replay` wraps the
recorded policy in it with the recorded ε, to reproduce what was observed. It keeps the
policy's name: a recording says which policy ran, the trace says when a choice explored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgesched.core.model import Candidate, Decision, TaskSpec
from edgesched.core.policies import Policy

if TYPE_CHECKING:
    import numpy as np


class ExploringPolicy:
    """ε-greedy around `inner`: with probability `epsilon` the chosen target is drawn uniformly
    from the feasible candidates (the rest of the inner ranking stays the fallback order).

    After each `decide`, `last_propensity` is the probability the chosen target had of being
    chosen, `(1 - ε)·[it is the inner choice] + ε / n_feasible`, and `last_explored` says
    whether the draw overrode the inner choice."""

    def __init__(self, inner: Policy, epsilon: float, rng: np.random.Generator) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        self.inner = inner
        self.name = inner.name
        self.epsilon = epsilon
        self.rng = rng
        self.last_propensity = 1.0
        self.last_explored = False

    def decide(self, task: TaskSpec, candidates: Sequence[Candidate], now: float) -> Decision:
        decision = self.inner.decide(task, candidates, now)
        self.last_explored = False
        self.last_propensity = 1.0
        feasible = [e for e in decision.evaluations if e.feasible]
        if decision.chosen is None or not decision.chosen.feasible or not feasible:
            return decision  # nothing to explore among (or a best-effort last resort)
        n, eps = len(feasible), self.epsilon
        explore = eps > 0.0 and self.rng.random() < eps
        pick = feasible[int(self.rng.integers(n))] if explore else decision.chosen
        same = pick.node_id == decision.chosen.node_id
        self.last_propensity = (1.0 - eps) * same + eps / n
        if same:
            return decision
        self.last_explored = True
        rest = tuple(e for e in decision.ranked() if e.node_id != pick.node_id)
        return Decision(policy=decision.policy, chosen=pick, fallbacks=rest,
                        evaluations=decision.evaluations, best_effort=decision.best_effort)
