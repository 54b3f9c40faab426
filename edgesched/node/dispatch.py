"""Decide and dispatch one task: cost policy, then local / neighbour / cloud with fallback.

The whole life of an accepted task after intake: build candidates from the view snapshot and
the estimators, let the policy rank them, try targets in order (core/fallback.py decides what
is next and how long to wait), and turn the first success or the final failure into a Reply.
Every completion feeds the estimators and the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgesched.adapters.cloud import CloudClient
from edgesched.adapters.executor import LocalExecutor
from edgesched.adapters.metrics import Metrics
from edgesched.core.admission import admit
from edgesched.core.calibration import CalibrationParams, QuantileCalibrator
from edgesched.core.candidates import CLOUD_ID, CloudTarget, build_candidates, exec_estimate
from edgesched.core.estimators import EstimatorBank
from edgesched.core.fallback import FallbackParams, NextAttempt, Terminal, next_attempt
from edgesched.core.feedback import InFlight, Refusals, learn_from_reply
from edgesched.core.model import (
    Candidate,
    CandidateEval,
    ClusterSnapshot,
    Decision,
    ExecEstimate,
    Liveness,
    NodeState,
    OffloadPolicy,
    Outcome,
    Placement,
    PowerModel,
    TaskSpec,
)
from edgesched.core.policies import Policy
from edgesched.errors import (
    DeadlineExpiredError,
    HandlerError,
    HttpError,
    HttpTimeoutError,
    InvalidTaskError,
    MqttError,
    QueueFullError,
    TaskTimeoutError,
)
from edgesched.node import protocol as p
from edgesched.node.offload import OffloadClient
from edgesched.node.trace import TaskTrace
from edgesched.tasks.registry import TaskType

log = logging.getLogger("edgesched.dispatch")

MAX_ERROR_CHARS = 600


@dataclass(frozen=True, kw_only=True, slots=True)
class AttemptResult:
    """How one attempt on one target ended (`outcome`) and what it returned."""

    outcome: Outcome
    value: Any = p.MISSING
    error: str | None = None
    executed_by: str | None = None
    wait_s: float = 0.0
    exec_s: float = 0.0
    reject_code: p.RejectCode | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """An accepted task: the request, its configured type and validated input."""

    request: p.SubmitRequest
    task_type: TaskType
    value: Any
    received_at: float  # monotonic
    deadline_s: float | None
    work: float
    exact_s: float | None

    @property
    def deadline_at(self) -> float | None:
        return None if self.deadline_s is None else self.received_at + self.deadline_s


@dataclass
class DecisionRecord:
    """One decision as /v1/status shows it (bounded list of the most recent)."""

    task_id: str
    task_type: str
    policy: str
    decided_at: float
    evaluations: list[dict[str, Any]]
    chosen: str | None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None
    predicted_s: float | None = None
    actual_s: float | None = None

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "id": self.task_id, "type": self.task_type, "policy": self.policy,
            "age_s": round(now - self.decided_at, 3), "chosen": self.chosen,
            "candidates": self.evaluations, "attempts": self.attempts, "status": self.status,
            "predicted_s": self.predicted_s, "actual_s": self.actual_s,
        }


def _round_eval(ev: CandidateEval) -> dict[str, Any]:
    doc = ev.as_dict()
    for key in ("latency_mean_s", "latency_q_s", "energy_j", "score"):
        value = doc.get(key)
        if isinstance(value, float):
            doc[key] = round(value, 6) if math.isfinite(value) else None
    return doc


class SnapshotSource(Protocol):
    """This node and its decision neighbours now (`node/service.py` `snapshot_source`). Given
    the task being decided, a shortlist that is due to be chosen again ranks the neighbours
    by that task's execution time there too (core/shortlist.py)."""

    def __call__(self, task: TaskSpec | None = None) -> ClusterSnapshot: ...


class Dispatcher:
    """Places and runs accepted jobs; one per node, shared by intake and the offload server."""

    def __init__(
        self, *, node_id: str, executor: LocalExecutor, bank: EstimatorBank,
        policy: Policy, fallback: FallbackParams, metrics: Metrics,
        snapshot: SnapshotSource, local_power: PowerModel,
        cloud: CloudClient | None = None, offload: OffloadClient | None = None,
        clock: Callable[[], float] = time.monotonic, max_decisions: int = 50,
        neighbour_state: Callable[[str], NodeState | None] | None = None,
        cloud_state: Callable[[], NodeState | None] | None = None,
    ) -> None:
        self.node_id = node_id
        self.executor = executor
        self.bank = bank
        self.policy = policy
        self.fallback = fallback
        self.metrics = metrics
        self.snapshot = snapshot
        self.neighbour_state = neighbour_state or self._snapshot_state
        # The cloud node's own load report (its telemetry), when this node hears one; else
        # the load its latest HTTP reply carried (`_cloud_reply_state`).
        self._cloud_telemetry = cloud_state or (lambda: None)
        # Targets that refused an attempt, held back until they report room (issue 20).
        self.refusals = Refusals()
        # What the latency quantile really covers, per target (and its correction).
        params = getattr(policy, "params", None)
        self.calibrator = QuantileCalibrator(CalibrationParams(
            quantile=getattr(params, "latency_quantile", 0.95)))
        self.local_power = local_power
        self.cloud = cloud
        self.cloud_target = CloudTarget() if cloud is not None else None
        self.offload = offload
        self.clock = clock
        # Remote attempts under way that their targets' load reports may not show yet.
        self.inflight = InFlight()
        self.decisions: deque[DecisionRecord] = deque(maxlen=max_decisions)
        self.last_work: dict[str, float] = {}
        self._cancels: set[asyncio.Task[None]] = set()

    # -- deciding -----------------------------------------------------------------------------

    def spec(self, job: Job) -> TaskSpec:
        settings = job.task_type.settings
        return TaskSpec(
            task_type=job.task_type.name, input_bytes=float(job.request.input_bytes),
            output_bytes=float(settings.output_bytes), work=job.work, exact_s=job.exact_s,
            deadline_s=job.deadline_s, priority=job.request.priority,
            origin_device=job.request.device_id, offload=OffloadPolicy(settings.offload),
            submitted_at=job.received_at,
        )

    def candidates(self, spec: TaskSpec) -> list[Candidate]:
        """The core's candidates for `spec`, each with its one execution-time estimate."""
        snap = self.snapshot(spec)
        cloud_state = self.cloud_state() if self.cloud_target is not None else None
        reported = {n.node_id: n.last_seen for n in snap.neighbours}
        if cloud_state is not None:
            reported[CLOUD_ID] = cloud_state.last_seen
        # every target is listed, the ones the task type's offload policy forbids too: the
        # policy rules them out (reason offload_policy: counted, and shown in the decision)
        return build_candidates(
            spec, snap, self.bank, cloud=self.cloud_target,
            local_power=self.local_power, local_max_queue=self.executor.queue_size,
            inflight=self.inflight.unreported(reported),
            held=self.refusals.held(reported, snap.now), cloud_state=cloud_state,
            late=self.inflight.lateness(snap.now),
            zs=self.calibrator.zs,
        )

    def decide(self, job: Job, trace: TaskTrace | None = None
               ) -> tuple[Decision, dict[str, ExecEstimate]]:
        """The policy's decision, and the execution time it expects on each candidate (mean
        and spread; written into `trace` too: the candidates' inputs, the choice and its
        propensity)."""
        now = self.clock()
        spec = self.spec(job)
        started = time.perf_counter()
        candidates = self.candidates(spec)
        decision = self.policy.decide(spec, candidates, now)
        self.metrics.decision_duration.observe(time.perf_counter() - started)
        if decision.chosen is not None:
            self.metrics.decisions.labels(placement=decision.chosen.placement.value).inc()
        self.metrics.count_rejected_candidates(decision)
        self.last_work[job.task_type.name] = job.work
        if trace is not None:  # record.explore's wrapper says how likely this choice was
            trace.add_decision(candidates, decision, now,
                               propensity=getattr(self.policy, "last_propensity", 1.0),
                               explored=getattr(self.policy, "last_explored", False))
        return decision, {c.node_id: c.exec for c in candidates}

    # -- the whole chain ----------------------------------------------------------------------

    async def place(self, job: Job, trace: TaskTrace | None = None) -> p.Reply:
        """Decide, try targets in order, and return the one terminal reply (and fill `trace`:
        the decision and every attempt's measured timings)."""
        decision, expected = self.decide(job, trace)
        record = DecisionRecord(
            task_id=job.request.id, task_type=job.task_type.name, policy=decision.policy,
            decided_at=self.clock(), evaluations=[_round_eval(e) for e in decision.evaluations],
            chosen=decision.chosen.node_id if decision.chosen else None,
        )
        self.decisions.append(record)
        tried: list[str] = []
        results: list[tuple[CandidateEval, AttemptResult]] = []
        while True:
            step = next_attempt(
                decision, tried=tried, elapsed_s=self.clock() - job.received_at,
                deadline_s=job.deadline_s, local_allowed=True, params=self.fallback,
                skip=self._held_now(),
            )
            if isinstance(step, Terminal):
                return self._give_up(job, step, results, record)
            tried.append(step.target.node_id)
            started = self.clock()
            result = await self._attempt(job, step, expected[step.target.node_id])
            elapsed = self.clock() - started
            results.append((step.target, result))
            self._learn_refusal(step.target, result)
            if trace is not None:
                trace.add_attempt(node_id=step.target.node_id, placement=step.target.placement,
                                  outcome=result.outcome.value, started=started,
                                  duration_s=elapsed, wait_s=result.wait_s,
                                  exec_s=result.exec_s, executed_by=result.executed_by,
                                  error=result.error)
            record.attempts.append({"node_id": step.target.node_id,
                                    "status": result.outcome.value, "error": result.error,
                                    "duration_s": round(elapsed, 6)})
            if result.outcome is Outcome.OK:
                self._feedback(job, step.target, result, elapsed, record)
                if trace is not None:
                    trace.energy_j = round(max(0.0, step.target.energy_j), 6)
                return self._reply(job, p.Status.OK, step.target.placement, result, len(tried))
            if result.outcome in (Outcome.EXPIRED, Outcome.INVALID):  # terminal: no retry helps
                status = p.to_status(result.outcome)
                record.status = status.value
                return self._reply(job, status, step.target.placement, result, len(tried))
            # rejected, failed, timeout: the fallback chain says what is next

    async def local_only(self, job: Job, trace: TaskTrace | None = None) -> p.Reply:
        """Run here and nowhere else (the cloud tier's role): admission, executor, reply."""
        started = self.clock()
        expected = self.own_estimate(job, started)
        result = await self.run_local(job, expected)
        if trace is not None:
            trace.add_attempt(node_id=self.node_id, placement=Placement.LOCAL,
                              outcome=result.outcome.value, started=started,
                              duration_s=self.clock() - started, wait_s=result.wait_s,
                              exec_s=result.exec_s, executed_by=result.executed_by,
                              error=result.error)
        self.observe_local(job, result)
        if result.outcome is Outcome.REJECTED:
            self.metrics.tasks_rejected.labels(
                reason=(result.reject_code or p.RejectCode.NO_TARGET).value).inc()
        status = p.to_status(result.outcome)
        reply = self._reply(job, status, Placement.LOCAL, result, 1)
        if status is p.Status.OK:
            self.metrics.prediction_error.observe(self.clock() - started - expected.mean_s)
        return reply

    def cloud_state(self) -> NodeState | None:
        """The cloud tier's load as last reported: its telemetry when this node hears it,
        else the X-Edgesched-Load header of its latest HTTP reply; None when neither came."""
        state = self._cloud_telemetry()
        if state is not None or self.cloud is None or self.cloud.load is None:
            return state
        running, queued, slots, wait = self.cloud.load
        return NodeState(node_id=CLOUD_ID, role="cloud", last_seen=self.cloud.load_at,
                         slots=slots, running=running, queued=queued, est_wait_s=wait)

    def _held_now(self) -> frozenset[str]:
        """The targets held back now (refused since, no report since): a task decided before
        the refusal came back skips them too."""
        if not len(self.refusals):
            return frozenset()
        snap = self.snapshot()
        reported = {n.node_id: n.last_seen for n in snap.neighbours}
        cloud = self.cloud_state() if self.cloud_target is not None else None
        if cloud is not None:
            reported[CLOUD_ID] = cloud.last_seen
        return self.refusals.held(reported, snap.now)

    def _learn_refusal(self, target: CandidateEval, result: AttemptResult) -> None:
        """A remote target's refusal holds it back until it reports room; a success ends it."""
        if target.placement is Placement.LOCAL:
            return
        if result.outcome is Outcome.REJECTED:
            self.refusals.refused(target.node_id, self.clock())
        elif result.outcome is Outcome.OK:
            self.refusals.accepted(target.node_id)

    def own_estimate(self, job: Job, now: float) -> ExecEstimate:
        """This node's expected execution time of `job` and its spread (for admission and the
        executor)."""
        return exec_estimate(self.spec(job), self.node_id, self.bank, now)

    def observe_local(self, job: Job, result: AttemptResult) -> None:
        """Feed a local execution's time into this node's own estimator."""
        if result.outcome is Outcome.OK and job.exact_s is None:
            self.bank.observe_exec(job.task_type.name, self.node_id, job.work, result.exec_s,
                                   self.clock())

    def _give_up(self, job: Job, step: Terminal,
                 results: list[tuple[CandidateEval, AttemptResult]],
                 record: DecisionRecord) -> p.Reply:
        notes = "; ".join(f"{t.node_id}: {r.outcome.value}" + (f" ({r.error})" if r.error else "")
                          for t, r in results)
        refused = bool(results) and all(r.outcome is Outcome.REJECTED for _, r in results)
        head = "no target could take it" if refused else step.reason
        error = head + (f" [{notes}]" if notes else "")
        if step.outcome is Outcome.EXPIRED:
            status = p.Status.EXPIRED
        elif refused or not results:
            # Nobody ran it: the submission was refused, not failed.
            status = p.Status.REJECTED
            code = results[-1][1].reject_code if results else p.RejectCode.NO_TARGET
            self.metrics.tasks_rejected.labels(
                reason=(code or p.RejectCode.NO_TARGET).value).inc()
        else:
            status = p.Status.FAILED
        record.status = status.value
        last = results[-1] if results else None
        return p.Reply(
            id=job.request.id, status=status, error=error[:MAX_ERROR_CHARS],
            placement=last[0].placement if last else None,
            executed_by=None, latency_s=self.clock() - job.received_at, attempts=len(results),
        )

    def _reply(self, job: Job, status: p.Status, placement: Placement,
               result: AttemptResult, attempts: int) -> p.Reply:
        ok = status is p.Status.OK
        return p.Reply(
            id=job.request.id, status=status, result=result.value if ok else p.MISSING,
            error=None if ok else (result.error or status.value)[:MAX_ERROR_CHARS],
            placement=placement, executed_by=result.executed_by,
            latency_s=self.clock() - job.received_at, attempts=attempts,
        )

    # -- attempts -----------------------------------------------------------------------------

    async def _attempt(self, job: Job, step: NextAttempt,
                       expected: ExecEstimate) -> AttemptResult:
        """One try on `step.target`, expected to execute there in `expected`."""
        target = step.target
        if target.placement is Placement.LOCAL:
            return await self.run_local(job, expected)
        token = self.inflight.sent(target.node_id, self.clock(), target.latency_q_s)
        result: AttemptResult | None = None
        try:
            if target.placement is Placement.NEIGHBOUR:
                result = await self._run_neighbour(job, target, step.timeout_s,
                                                   expected.mean_s)
            else:
                result = await self._run_cloud(job, step.timeout_s)
            return result
        finally:
            outcome = None if result is None else result.outcome
            if outcome is Outcome.TIMEOUT:  # no reply: held as evidence against the target
                self.inflight.gave_up(target.node_id, token, self.clock())
            elif outcome in (Outcome.OK, Outcome.REJECTED):  # the target answered
                self.inflight.settled(target.node_id, token, self.clock())
            else:
                self.inflight.settled(target.node_id, token)

    async def run_local(self, job: Job, expected: ExecEstimate | None = None) -> AttemptResult:
        """Admission control, then the local executor (also serves neighbours' offloads).

        `expected` is the execution time the decision expected here, mean and spread
        (estimated now if None: a neighbour's offload)."""
        ex, now = self.executor, self.clock()
        if expected is None:
            expected = self.own_estimate(job, now)
        deadline_at = job.deadline_at
        verdict = admit(
            slots=ex.slots, running=ex.running, queued=ex.queued, queue_limit=ex.queue_size,
            exec_s=expected.mean_s, wait_s=ex.estimated_wait(now),
            remaining_s=None if deadline_at is None else deadline_at - now,
        )
        if not verdict.accepted:
            code = p.RejectCode(verdict.reason.value) if verdict.reason else None
            return AttemptResult(outcome=Outcome.REJECTED, reject_code=code,
                                 error=f"{code.value if code else 'refused'}: {verdict.detail}")
        try:
            out = await ex.run(job.task_type, job.value, expected_s=expected.mean_s,
                               expected_std_s=expected.std_s, priority=job.request.priority,
                               deadline=deadline_at)
        except QueueFullError as exc:
            return AttemptResult(outcome=Outcome.REJECTED, error=str(exc),
                                 reject_code=p.RejectCode.QUEUE_FULL)
        except DeadlineExpiredError as exc:
            return AttemptResult(outcome=Outcome.EXPIRED, error=str(exc))
        except InvalidTaskError as exc:
            return AttemptResult(outcome=Outcome.INVALID, error=str(exc))
        except (TaskTimeoutError, HandlerError) as exc:
            return AttemptResult(outcome=Outcome.FAILED, error=str(exc),
                                 executed_by=self.node_id)
        return AttemptResult(outcome=Outcome.OK, value=out.value, executed_by=self.node_id,
                             wait_s=out.wait_s, exec_s=out.exec_s)

    def _remaining(self, job: Job) -> float | None:
        at = job.deadline_at
        return None if at is None else max(0.0, at - self.clock())

    async def _run_neighbour(self, job: Job, target: CandidateEval, timeout_s: float,
                             expected: float) -> AttemptResult:
        if self.offload is None:
            return AttemptResult(outcome=Outcome.FAILED, error="offload is not available")
        gone = self._gone_watch(target.node_id)
        try:
            reply = await self.offload.request(
                target.node_id, job.request, deadline_s=self._remaining(job),
                expected_s=expected, timeout_s=timeout_s, gone=gone)
        except MqttError as exc:
            return AttemptResult(outcome=Outcome.FAILED, error=str(exc))
        if reply is None:
            why = (f"{target.node_id} went offline or restarted" if gone()
                   else f"no reply from {target.node_id} in {timeout_s:.3g}s")
            return AttemptResult(outcome=Outcome.TIMEOUT, error=why)
        return _from_remote(reply.status, reply.result, reply.error,
                            reply.executed_by or target.node_id, reply.wait_s, reply.exec_s)

    def _snapshot_state(self, node_id: str) -> NodeState | None:
        return next((n for n in self.snapshot().neighbours if n.node_id == node_id), None)

    def _gone_watch(self, node_id: str) -> Callable[[], bool]:
        """True once the view says `node_id` is offline or runs a new incarnation (the task
        it was running is lost either way)."""

        def state() -> NodeState | None:
            # Not from the decision snapshot: it lists only the shortlisted neighbours.
            return self.neighbour_state(node_id)

        first = state()
        incarnation = first.incarnation if first else None

        def gone() -> bool:
            now = state()
            if now is None:
                return False  # not heard of yet: only the timeout can tell
            return now.liveness is Liveness.OFFLINE or (
                incarnation is not None and now.incarnation != incarnation)

        return gone

    async def _run_cloud(self, job: Job, timeout_s: float) -> AttemptResult:
        assert self.cloud is not None
        sent_at = int(time.time() * 1000)
        body = p.encode(job.request.as_submit(deadline_s=self._remaining(job),
                                              sent_at_ms=sent_at))
        try:
            doc = await self.cloud.submit(body, timeout_s=timeout_s)
            reply = p.parse_reply(doc)
        except HttpTimeoutError as exc:
            self.metrics.cloud_requests_failed.labels(reason=exc.reason).inc()
            self._cancel_cloud(job.request.id, sent_at)  # given up on: let the cloud drop it
            return AttemptResult(outcome=Outcome.TIMEOUT, error=str(exc))
        except HttpError as exc:
            # a refused token (`unauthorized`) fails the attempt: the chain moves on
            self.metrics.cloud_requests_failed.labels(reason=exc.reason).inc()
            return AttemptResult(outcome=Outcome.FAILED, error=str(exc))
        except p.SubmissionError as exc:
            self.metrics.cloud_requests_failed.labels(reason="bad_reply").inc()
            return AttemptResult(outcome=Outcome.FAILED, error=f"bad cloud reply: {exc}")
        return _from_remote(reply.status, reply.result, reply.error,
                            reply.executed_by or CLOUD_ID, 0.0, reply.latency_s)

    def _cancel_cloud(self, task_id: str, sent_at_ms: int) -> None:
        """Best effort, in the background: `DELETE /v1/tasks/{id}` of an abandoned attempt."""
        cloud = self.cloud
        if cloud is None:
            return

        async def send() -> None:
            try:
                await cloud.cancel(task_id, sent_at_ms=sent_at_ms)
            except HttpError as exc:
                self.metrics.cancels.labels(direction="sent", result="failed").inc()
                log.debug("cloud cancel of %s not delivered: %s", task_id, exc)
                return
            self.metrics.cancels.labels(direction="sent", result="sent").inc()

        task = asyncio.get_running_loop().create_task(send(), name="edgesched.cloud.cancel")
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    # -- feedback -----------------------------------------------------------------------------

    def _feedback(self, job: Job, target: CandidateEval, result: AttemptResult,
                  elapsed: float, record: DecisionRecord) -> None:
        local = target.placement is Placement.LOCAL
        nbytes = 0.0 if local else job.request.input_bytes + len(p.encode(result.value))
        learn_from_reply(self.bank, self.spec(job), target.node_id, local=local,
                         round_trip_s=elapsed, wait_s=result.wait_s, exec_s=result.exec_s,
                         nbytes=nbytes, now=self.clock())
        self.metrics.prediction_error.observe(elapsed - target.latency_mean_s)
        placement = target.placement.value
        if self.calibrator.observe(target.node_id, placement, actual_s=elapsed,
                                   mean_s=target.latency_mean_s, std_s=target.latency_std_s,
                                   q_s=target.latency_q_s):
            ratio = self.calibrator.coverage_ratio(placement)
            if ratio is not None:
                self.metrics.prediction_coverage.labels(placement=placement).set(ratio)
        self.metrics.energy.labels(placement=target.placement.value).inc(
            max(0.0, target.energy_j))
        record.status, record.predicted_s = "ok", round(target.latency_mean_s, 6)
        record.actual_s = round(elapsed, 6)


def _from_remote(status: p.Status, value: Any, error: str | None, by: str, wait_s: float,
                 exec_s: float) -> AttemptResult:
    outcome = p.to_outcome(status)
    return AttemptResult(
        outcome=outcome, value=value if outcome is Outcome.OK else p.MISSING,
        error=None if status is p.Status.OK else f"{by}: {error or status.value}",
        executed_by=by, wait_s=wait_s, exec_s=exec_s,
        reject_code=None,
    )
