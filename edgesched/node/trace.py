"""The trace of one finished task: what was known, what was decided, what happened.

One `TaskTrace` per accepted task, built by the pipeline as the task runs (the dispatcher adds
the candidates, the choice and every attempt) and handed, once the task has its terminal
reply, to every registered `TraceSink` (`on_task_finished(trace, line)`) together with its
record line (`record_line`), encoded once for all of them: the recorder
(adapters/recorder.py, `record.path`) writes the line to disk, the recent-task store keeps it.

A trace is plain data (dataclasses without `__slots__`: orjson encodes one from its
`__dict__` in 1.4 us, a slotted one in 3.6, and every finished task is encoded on the event
loop): `to_dict()` is its JSON-lines form (the record file format of docs/replay.md),
`record_line()` the same encoded, and `TaskTrace.from_dict()` reads it back (the replay's
parser); all are versioned by `TRACE_VERSION`.

The `record.explore` wrapper around the configured policy, whose choice probabilities the
trace records, is core/exploration.py `ExploringPolicy`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import orjson

from edgesched.core.costmodel import CostParams, evaluate_candidate
from edgesched.core.estimators import EstimatorBank
from edgesched.core.model import (
    Candidate,
    CandidateEval,
    Decision,
    ExecEstimate,
    LinkEstimate,
    Liveness,
    Placement,
    TaskSpec,
)

TRACE_VERSION = 1
_PARAMS = CostParams()  # the cost model's defaults: latency is all hindsight asks
KIND = "task"  # the `kind` of a task line in a record file ("telemetry" lines are the other)


def _num(x: float | None, digits: int = 6) -> float | None:
    """A finite float rounded for the record; None for missing or non-finite values."""
    if x is None or not math.isfinite(x):
        return None
    return round(float(x), digits)


@dataclass(kw_only=True)
class CandidateTrace:
    """One candidate of the decision: the inputs the cost model read (the view's numbers and
    the estimators' answers at decision time) and its verdict."""

    node_id: str
    placement: str
    # inputs
    liveness: str = "online"
    age_s: float = 0.0
    slots: int = 1
    running: int = 0
    queued: int = 0
    est_wait_s: float = 0.0
    wait_std_s: float = 0.0
    exec_mean_s: float = 0.0
    exec_std_s: float = 0.0
    rtt_s: float | None = None  # None for the local candidate (no link)
    rtt_std_s: float | None = None
    bandwidth_bps: float | None = None
    bandwidth_std_bps: float | None = None
    battery: float | None = None
    # prediction and verdict
    latency_mean_s: float | None = None
    latency_q_s: float | None = None
    energy_j: float | None = None
    score: float | None = None  # None when infeasible
    feasible: bool = False
    reason: str | None = None  # why it was not feasible

    @classmethod
    def of(cls, cand: Candidate, ev: CandidateEval | None) -> CandidateTrace:
        link = cand.link
        out = cls(
            node_id=cand.node_id, placement=cand.placement.value,
            liveness=cand.liveness.value, age_s=_num(cand.age_s) or 0.0, slots=cand.slots,
            running=cand.running, queued=cand.queued, est_wait_s=_num(cand.est_wait_s) or 0.0,
            wait_std_s=_num(cand.wait_std_s) or 0.0, exec_mean_s=_num(cand.exec.mean_s) or 0.0,
            exec_std_s=_num(cand.exec.std_s) or 0.0, battery=cand.battery,
        )
        if link is not None:
            out.rtt_s, out.rtt_std_s = _num(link.rtt_s), _num(link.rtt_std_s)
            out.bandwidth_bps = _num(link.bandwidth_bps, 1)
            out.bandwidth_std_bps = _num(link.bandwidth_std_bps, 1)
        if ev is not None:
            out.latency_mean_s, out.latency_q_s = _num(ev.latency_mean_s), _num(ev.latency_q_s)
            out.energy_j, out.score = _num(ev.energy_j), _num(ev.score)
            out.feasible, out.reason = ev.feasible, ev.reason.value if ev.reason else None
        return out

    def to_candidate(self, *, exec_now: ExecEstimate | None = None,
                     link_now: LinkEstimate | None = None) -> Candidate:
        """The core candidate these inputs describe (for re-predicting it later), with
        `exec_now` and `link_now` in place of the recorded execution time and link when
        given."""
        link = link_now
        if link is None and self.rtt_s is not None and self.bandwidth_bps:
            link = LinkEstimate(rtt_s=self.rtt_s, rtt_std_s=self.rtt_std_s or 0.0,
                                bandwidth_bps=self.bandwidth_bps,
                                bandwidth_std_bps=self.bandwidth_std_bps or 0.0)
        return Candidate(
            node_id=self.node_id, placement=Placement(self.placement),
            liveness=Liveness(self.liveness), age_s=self.age_s, slots=self.slots,
            running=self.running, queued=self.queued, est_wait_s=self.est_wait_s,
            wait_std_s=self.wait_std_s, battery=self.battery, link=link,
            exec=exec_now or ExecEstimate(mean_s=self.exec_mean_s, std_s=self.exec_std_s))


@dataclass(kw_only=True)
class AttemptTrace:
    """One attempt on one target, as measured by this node.

    `duration_s` is the whole attempt as this node saw it (sent -> answer); `wait_s` and
    `exec_s` are the target's queueing and execution as it reported them (the cloud reports
    one figure, its own latency, given here as `exec_s`); `exchange_s` is what is left: the
    network time of a remote attempt (upload + download + RTT), 0 for a local one."""

    node_id: str
    placement: str
    outcome: str
    started_s: float  # since the task arrived
    duration_s: float
    wait_s: float = 0.0
    exec_s: float = 0.0
    exchange_s: float = 0.0
    executed_by: str | None = None
    error: str | None = None


@dataclass(kw_only=True)
class TaskTrace:
    """Everything about one finished task (see the module docstring)."""

    id: str
    type: str
    origin: str  # the node the task was submitted to (this node)
    role: str = "edge"
    policy: str | None = None
    arrived_unix_s: float = 0.0  # wall clock
    arrived_mono_s: float = 0.0  # this node's monotonic clock (offsets between tasks)
    work: float = 0.0  # the estimators' size (bytes or the type's work units)
    exact_s: float | None = None  # the execution time when the input says it (e.g. sleep)
    input_bytes: int = 0
    output_bytes: int = 0  # the configured size the decision assumed
    deadline_s: float | None = None
    priority: int = 0
    device_id: str | None = None
    decided_s: float | None = None  # when the decision was made, since arrival
    candidates: list[CandidateTrace] = field(default_factory=list)
    chosen: str | None = None
    chosen_score: float | None = None
    propensity: float | None = None  # probability the chosen target had of being chosen
    explored: bool = False  # the choice was an ε-exploration (record.explore)
    attempts: list[AttemptTrace] = field(default_factory=list)
    status: str | None = None  # the terminal reply: ok, failed, rejected, expired
    error: str | None = None
    placement: str | None = None
    executed_by: str | None = None
    latency_s: float | None = None
    deadline_missed: bool = False
    energy_j: float | None = None  # predicted energy of the placement that succeeded
    regret_s: float | None = None  # latency - best latency re-predicted at completion

    # -- building (by the dispatcher and the pipeline) -----------------------------------------

    def add_decision(self, candidates: Sequence[Candidate], decision: Decision,
                     decided_at: float, propensity: float = 1.0,
                     explored: bool = False) -> None:
        evals = {e.node_id: e for e in decision.evaluations}
        self.candidates = [CandidateTrace.of(c, evals.get(c.node_id)) for c in candidates]
        self.policy = decision.policy
        self.decided_s = _num(decided_at - self.arrived_mono_s)
        chosen = decision.chosen
        self.chosen = chosen.node_id if chosen else None
        self.chosen_score = _num(chosen.score) if chosen else None
        self.propensity = _num(propensity)
        self.explored = explored

    def add_attempt(self, *, node_id: str, placement: Placement, outcome: str, started: float,
                    duration_s: float, wait_s: float = 0.0, exec_s: float = 0.0,
                    executed_by: str | None = None, error: str | None = None) -> None:
        remote = placement is not Placement.LOCAL
        exchange = max(0.0, duration_s - wait_s - exec_s) if remote and outcome == "ok" else 0.0
        self.attempts.append(AttemptTrace(
            node_id=node_id, placement=placement.value, outcome=outcome,
            started_s=_num(started - self.arrived_mono_s) or 0.0,
            duration_s=_num(duration_s) or 0.0, wait_s=_num(wait_s) or 0.0,
            exec_s=_num(exec_s) or 0.0, exchange_s=_num(exchange) or 0.0,
            executed_by=executed_by, error=None if error is None else error[:200]))

    # -- the record form -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The record form: a task line of a record file (docs/replay.md) as a dict. The
        recorder writes the same line straight from the trace (adapters/recorder.py)."""
        doc: dict[str, Any] = {"kind": KIND, "v": TRACE_VERSION, **_fields(self)}
        doc["candidates"] = [_fields(c) for c in self.candidates]
        doc["attempts"] = [_fields(a) for a in self.attempts]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TaskTrace:
        """A trace read back from its record form; ValueError/TypeError/KeyError if `doc` is
        not one (the replay reports the file and line and goes on)."""
        if doc.get("kind") != KIND or doc.get("v") != TRACE_VERSION:
            raise ValueError(f"not a task trace of version {TRACE_VERSION}")
        names = _names(cls)
        known = {k: v for k, v in doc.items() if k in names}
        known["candidates"] = [CandidateTrace(**c) for c in doc.get("candidates") or []]
        known["attempts"] = [AttemptTrace(**a) for a in doc.get("attempts") or []]
        trace = cls(**known)
        if not isinstance(trace.id, str) or not isinstance(trace.type, str):
            raise TypeError("id and type must be strings")
        for name in ("arrived_unix_s", "arrived_mono_s", "work"):
            if not isinstance(getattr(trace, name), int | float):
                raise TypeError(f"{name} must be a number")
        return trace


def _names(cls: type) -> tuple[str, ...]:
    """A dataclass's field names, in order."""
    return tuple(f.name for f in fields(cls))


def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields by name (not copied deeper)."""
    return {name: getattr(obj, name) for name in _names(type(obj))}


# A task line is the trace's fields after these two (orjson writes a dataclass's fields, in
# order; the line's `kind` and version go first).
_LINE_HEAD = orjson.dumps({"kind": KIND, "v": TRACE_VERSION})[:-1] + b","


def record_line(trace: TaskTrace) -> bytes:
    """A finished task's JSON line: its record form (`TaskTrace.to_dict`) encoded, newline
    included.

    TypeError if it cannot be (a non-UTF-8 string, an integer past 64 bits); a non-finite
    float, which JSON cannot hold, is written as null. The line is a bytes object of its own
    length (orjson's own is an allocation of at least 4 KB), and lines are kept: the
    recent-task store counts them at their length."""
    return _LINE_HEAD + orjson.dumps(trace, option=orjson.OPT_APPEND_NEWLINE)[1:]


class TraceSink(Protocol):
    """Receives every finished task's trace and its record line (`record_line`, None if it
    could not be encoded), on the event loop: must return quickly (buffer, never block) and
    must not raise."""

    def on_task_finished(self, trace: TaskTrace, line: bytes | None) -> None: ...


def new_trace(*, task_id: str, task_type: str, origin: str, role: str, received_at: float,
              work: float, exact_s: float | None, input_bytes: int, output_bytes: int,
              deadline_s: float | None, priority: int, device_id: str | None) -> TaskTrace:
    """The trace of a task just accepted (`received_at` on the monotonic clock)."""
    wall = time.time() - (time.monotonic() - received_at)
    return TaskTrace(id=task_id, type=task_type, origin=origin, role=role,
                     arrived_unix_s=round(wall, 6), arrived_mono_s=round(received_at, 6),
                     work=float(work), exact_s=exact_s, input_bytes=int(input_bytes),
                     output_bytes=int(output_bytes), deadline_s=deadline_s, priority=priority,
                     device_id=device_id)


# -- live regret ---------------------------------------------------------------------------------

def hindsight_best_s(trace: TaskTrace, spec: TaskSpec, bank: EstimatorBank,
                     now: float) -> float | None:
    """The lowest latency any candidate of the decision is predicted to have, re-predicted with
    the estimators as they are `now` (after the task's own outcome was learned): the view's
    numbers are the ones the decision saw, the execution times and links are today's."""
    best = math.inf
    for recorded in trace.candidates:
        if recorded.reason in ("offload_policy", "unsupported_type", "excluded", "offline"):
            continue  # never a possible target for this task
        if spec.exact_s is not None:
            exec_now = ExecEstimate(mean_s=spec.exact_s, std_s=0.0)
        else:
            exec_now = bank.exec_estimate(spec.task_type, recorded.node_id, spec.work, now)
        # a local candidate has no link (none was recorded)
        local = recorded.placement == Placement.LOCAL.value
        cand = recorded.to_candidate(
            exec_now=exec_now, link_now=None if local else bank.link(recorded.node_id, now))
        best = min(best, evaluate_candidate(spec, cand, _PARAMS, None).latency_mean_s)
    return None if not math.isfinite(best) else best
