"""The fallback chain: after a target rejects, fails or times out, what to try next (pure)."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

from edgesched.core.model import (
    CandidateEval,
    Decision,
    Outcome,
    Placement,
    RejectReason,
    require_finite,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class FallbackParams:
    """From `offload.*` in the config: attempts per task and how attempt timeouts are set."""

    max_attempts: int = 3
    timeout_margin_s: float = 0.5
    min_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")
        require_finite("timeout_margin_s", self.timeout_margin_s, minimum=0.0)
        require_finite("min_timeout_s", self.min_timeout_s, minimum=0.0)

    def timeout_for(self, target: CandidateEval) -> float:
        """How long to wait for one attempt: the predicted quantile plus a margin, floored."""
        q = target.latency_q_s if math.isfinite(target.latency_q_s) else 0.0
        return max(self.min_timeout_s, q + self.timeout_margin_s)


@dataclass(kw_only=True, slots=True)
class NextAttempt:
    """Try `target` next."""

    target: CandidateEval
    timeout_s: float
    attempt: int  # 1-based number of this attempt
    last_resort: bool = False  # local, although the decision did not rank it


@dataclass(kw_only=True, slots=True)
class Terminal:
    """No attempt left: the task ends with `outcome` (`FAILED` or `EXPIRED`)."""

    outcome: Outcome
    reason: str


def next_attempt(
    decision: Decision,
    *,
    tried: Collection[str],
    elapsed_s: float,
    deadline_s: float | None,
    local_allowed: bool,
    params: FallbackParams,
    skip: Collection[str] = (),
) -> NextAttempt | Terminal:
    """The next target to try for a task, or the terminal outcome.

    `skip`: targets not to try now although ranked (one that refused another task since this
    decision was taken: `feedback.Refusals`); they do not count as attempts.

    The rule, in order:
    1. the deadline has passed (`elapsed_s >= deadline_s`) -> `expired`;
    2. `len(tried) >= max_attempts` -> `failed` ("gave up after N attempts"), except for a
       task without a deadline: it goes to this node as in 4 if it can (a task that may
       wait forever is not thrown away while this node's queue can still take it);
    3. the first of chosen + fallbacks (the decision's ranking) not yet tried;
    4. else this node as the last resort, if the task type may run here (`local_allowed`),
       it was not tried, and it was not refused for lacking the task type — the local
       executor's admission control has the final word;
    5. else `failed`, with the reason (every candidate's rejection, or "all targets failed").
    The attempt timeout is `max(min_timeout_s, latency_q_s + timeout_margin_s)`, cut to the
    time left before the deadline (waiting past it cannot help: the reply would be `expired`).
    """
    remaining = None if deadline_s is None else deadline_s - elapsed_s
    if remaining is not None and remaining <= 0.0:
        return Terminal(outcome=Outcome.EXPIRED, reason=f"deadline of {deadline_s:g}s passed")
    if len(tried) >= params.max_attempts:
        local = _local_last_resort(decision, tried) if (
            deadline_s is None and local_allowed) else None
        if local is None:
            return Terminal(outcome=Outcome.FAILED,
                            reason=f"gave up after {len(tried)} attempts")
        return NextAttempt(target=local, timeout_s=params.timeout_for(local),
                           attempt=len(tried) + 1, last_resort=True)
    passed = {*tried, *skip} if skip else tried
    target, last_resort = _pick(decision, passed, local_allowed)
    if target is None:
        return Terminal(outcome=Outcome.FAILED, reason=_why_none(decision, tried))
    timeout = params.timeout_for(target)
    if remaining is not None and remaining < timeout:
        timeout = remaining
    return NextAttempt(target=target, timeout_s=timeout, attempt=len(tried) + 1,
                       last_resort=last_resort)


def _pick(
    decision: Decision, tried: Collection[str], local_allowed: bool
) -> tuple[CandidateEval | None, bool]:
    chosen = decision.chosen  # decision.ranked(), without building the tuple
    if chosen is not None and chosen.node_id not in tried:
        return chosen, False
    for cand in decision.fallbacks:
        if cand.node_id not in tried:
            return cand, False
    if local_allowed:
        local = _local_last_resort(decision, tried)
        if local is not None:
            return local, True
    return None, False


def _local_last_resort(decision: Decision, tried: Collection[str]) -> CandidateEval | None:
    """This node, when not tried yet and not refused for lacking the task type."""
    for ev in decision.evaluations:
        if (
            ev.placement is Placement.LOCAL
            and ev.node_id not in tried
            and ev.reason is not RejectReason.UNSUPPORTED_TYPE
        ):
            return ev
    return None


def _why_none(decision: Decision, tried: Collection[str]) -> str:
    if tried:
        return f"all targets failed ({', '.join(sorted(tried))})"
    reasons = [
        f"{ev.node_id}: {ev.reason.value}" for ev in decision.evaluations if ev.reason is not None
    ]
    return "no feasible target" + (f" ({'; '.join(reasons)})" if reasons else "")
