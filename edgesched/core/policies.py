"""Placement policies behind one small protocol: the cost policy and the baselines, by name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # a node's main process runs without numpy (~15 MB) unless a policy draws
    import numpy as np

from edgesched.core.costmodel import (
    ALL_CONSTRAINTS,
    BASELINE_CONSTRAINTS,
    CostParams,
    evaluate_many,
)
from edgesched.core.model import (
    Candidate,
    CandidateEval,
    Decision,
    Placement,
    RejectReason,
    TaskSpec,
)

POLICY_NAMES: tuple[str, ...] = (
    "cost",
    "local",
    "cloud",
    "random",
    "round_robin",
    "least_loaded",
    "greedy_latency",
)


class Policy(Protocol):
    """Decides where one task runs, given its pre-built candidates and the current time."""

    name: str

    def decide(self, task: TaskSpec, candidates: Sequence[Candidate], now: float) -> Decision:
        """Chosen target, ranked fallbacks and every candidate's evaluation (never raises for
        "nothing feasible": that is a Decision with `chosen=None`)."""
        ...


def evaluate_all(
    task: TaskSpec,
    candidates: Sequence[Candidate],
    params: CostParams,
    now: float,
    enforce: frozenset[RejectReason] = ALL_CONSTRAINTS,
) -> list[CandidateEval]:
    """Evaluate every candidate against the time left to the task's deadline at `now`."""
    return evaluate_many(task, candidates, params, task.remaining_s(now), enforce)


def make_decision(
    name: str, evals: Sequence[CandidateEval], ranked: Sequence[int], best_effort: bool = False
) -> Decision:
    """A Decision whose preference order is `ranked` (indices into `evals`, feasible only)."""
    return _ranked_decision(name, [evals[i] for i in ranked], evals, best_effort)


def _ranked_decision(
    name: str, ranked: Sequence[CandidateEval], evals: Sequence[CandidateEval],
    best_effort: bool = False,
) -> Decision:
    """A Decision whose preference order is `ranked` (feasible evaluations, best first)."""
    return Decision(policy=name, chosen=ranked[0] if ranked else None,
                    fallbacks=tuple(ranked[1:]), evaluations=tuple(evals),
                    best_effort=best_effort)


class CostPolicy:
    """The production policy: every hard constraint, then the lowest weighted cost."""

    def __init__(self, params: CostParams, name: str = "cost") -> None:
        self.name = name
        self.params = params

    def decide(self, task: TaskSpec, candidates: Sequence[Candidate], now: float) -> Decision:
        evals = evaluate_all(task, candidates, self.params, now)
        # The feasible ones by score (the sort is stable: ties keep candidate order).
        ranked = sorted((e for e in evals if e.feasible), key=lambda e: e.score)
        if not ranked and self.params.deadline_best_effort:
            late = [e for e in evals if e.reason is RejectReason.DEADLINE]
            if late:
                late.sort(key=lambda e: e.latency_q_s)
                return _ranked_decision(self.name, late, evals, best_effort=True)
        return _ranked_decision(self.name, ranked, evals)


SortKey = Callable[[tuple[Candidate, CandidateEval]], tuple[float, ...]]


class KeyedBaseline:
    """A baseline ranking feasible candidates by a fixed key (ties: predicted latency).

    Baselines ignore the weights, the deadline and the battery floor, but still respect the
    task type's offload policy, liveness, staleness, capacity and type support.
    """

    def __init__(self, name: str, params: CostParams, key: SortKey) -> None:
        self.name = name
        self.params = params
        self._key = key

    def decide(self, task: TaskSpec, candidates: Sequence[Candidate], now: float) -> Decision:
        evals = evaluate_all(task, candidates, self.params, now, BASELINE_CONSTRAINTS)
        # (candidate, evaluation) pairs of the feasible ones, by key: the sort is stable, so
        # equal keys keep candidate order and the pairs themselves are never compared.
        pairs = [p for p in zip(candidates, evals, strict=True) if p[1].feasible]
        pairs.sort(key=self._key)
        return _ranked_decision(self.name, [p[1] for p in pairs], evals)


_PLACEMENT_RANK_CLOUD_FIRST = {Placement.CLOUD: 0, Placement.LOCAL: 1, Placement.NEIGHBOUR: 2}


# Sort keys of a (candidate, evaluation) pair.
def _local_first(pair: tuple[Candidate, CandidateEval]) -> tuple[float, ...]:
    c, e = pair
    return (0.0 if c.placement is Placement.LOCAL else 1.0, e.latency_mean_s)


def _cloud_first(pair: tuple[Candidate, CandidateEval]) -> tuple[float, ...]:
    c, e = pair
    return (float(_PLACEMENT_RANK_CLOUD_FIRST[c.placement]), e.latency_mean_s)


def _least_loaded(pair: tuple[Candidate, CandidateEval]) -> tuple[float, ...]:
    c, e = pair
    slots = c.slots
    return ((c.running + c.queued) / (slots if slots > 1 else 1), e.latency_mean_s)


def _greedy_latency(pair: tuple[Candidate, CandidateEval]) -> tuple[float, ...]:
    return (pair[1].latency_mean_s,)


class RandomPolicy:
    """Uniformly random order over the baseline-feasible candidates (seeded generator)."""

    def __init__(self, params: CostParams, rng: np.random.Generator) -> None:
        self.name = "random"
        self.params = params
        self._rng = rng
        self._uniforms: list[float] = []

    def decide(self, task: TaskSpec, candidates: Sequence[Candidate], now: float) -> Decision:
        evals = evaluate_all(task, candidates, self.params, now, BASELINE_CONSTRAINTS)
        ranked = [e for e in evals if e.feasible]
        # Uniforms from the seeded generator, drawn a block at a time (a numpy call per task
        # would cost more than the decision).
        uniforms = self._uniforms
        for i in range(len(ranked) - 1, 0, -1):  # Fisher-Yates
            if not uniforms:
                uniforms = self._uniforms = self._rng.random(_UNIFORM_BLOCK).tolist()
            j = int(uniforms.pop() * (i + 1))
            ranked[i], ranked[j] = ranked[j], ranked[i]
        return _ranked_decision(self.name, ranked, evals)


_UNIFORM_BLOCK = 1024


class RoundRobinPolicy:
    """Rotates over the baseline-feasible candidates, in node-id order, one step per task."""

    def __init__(self, params: CostParams) -> None:
        self.name = "round_robin"
        self.params = params
        self._next = 0

    def decide(self, task: TaskSpec, candidates: Sequence[Candidate], now: float) -> Decision:
        evals = evaluate_all(task, candidates, self.params, now, BASELINE_CONSTRAINTS)
        feasible = sorted((e for e in evals if e.feasible), key=lambda e: e.node_id)
        if feasible:
            start = self._next % len(feasible)
            feasible = feasible[start:] + feasible[:start]
            self._next += 1
        return _ranked_decision(self.name, feasible, evals)


def make_policy(name: str, params: CostParams, rng: np.random.Generator | None = None) -> Policy:
    """The policy called `name` (one of POLICY_NAMES). Raises ValueError for unknown names,
    and for `random` without a generator."""
    if name == "cost":
        return CostPolicy(params)
    if name == "random":
        if rng is None:
            raise ValueError("the random policy needs a seeded generator (rng)")
        return RandomPolicy(params, rng)
    if name == "round_robin":
        return RoundRobinPolicy(params)
    keys: dict[str, SortKey] = {
        "local": _local_first,
        "cloud": _cloud_first,
        "least_loaded": _least_loaded,
        "greedy_latency": _greedy_latency,
    }
    if name in keys:
        return KeyedBaseline(name, params, keys[name])
    raise ValueError(f"unknown policy {name!r}; valid names: {', '.join(POLICY_NAMES)}")
