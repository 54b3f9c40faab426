"""The dispatcher's fallback chain, in process and in milliseconds.

A real Dispatcher, policy, EstimatorBank and Metrics; fakes only for its I/O collaborators:
the local executor, the neighbour offload client and the cloud client, each scripted per
test, and a clock the fakes move forward as "time spent" (no sleeping). The cluster: this
node `a`, neighbours `b` (idle) and `c` (busy), and the cloud 80 ms away, so the cost policy
ranks them a, b, cloud, c (asserted in `test_the_ranking_these_tests_rely_on`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from edgesched.adapters.executor import ExecOutcome
from edgesched.adapters.metrics import Metrics
from edgesched.config import TaskTypeSettings
from edgesched.core.candidates import CLOUD_ID
from edgesched.core.costmodel import CostParams
from edgesched.core.estimators import EstimatorBank
from edgesched.core.fallback import FallbackParams
from edgesched.core.model import (
    ClusterSnapshot,
    LinkEstimate,
    Liveness,
    NodeState,
    Outcome,
    Placement,
    PowerModel,
    TaskSpec,
)
from edgesched.core.policies import CostPolicy
from edgesched.errors import (
    DeadlineExpiredError,
    HandlerError,
    HttpTimeoutError,
    InvalidTaskError,
    MqttError,
    UnauthorizedError,
)
from edgesched.node import protocol as p
from edgesched.node.dispatch import Dispatcher, Job
from edgesched.tasks.registry import TaskType

T0 = 1000.0
RANKING = ["a", "b", CLOUD_ID, "c"]


class Clock:
    """Monotonic time that only the fakes move (each "takes" the time its work would)."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeExecutor:
    """The local executor's surface the dispatcher uses; `full` fills every slot and queue
    place, `error` makes `run` raise it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.slots, self.queue_size = 1, 2
        self.running = self.queued = 0
        self.error: Exception | None = None
        self.exec_s = 0.02
        self.runs = 0

    def fill(self) -> None:
        self.running, self.queued = self.slots, self.queue_size

    def estimated_wait(self, now: float | None = None) -> float:
        return 0.0

    async def run(self, task_type: TaskType, value: Any, *, expected_s: float,
                  expected_std_s: float, priority: int,
                  deadline: float | None) -> ExecOutcome:
        self.runs += 1
        if self.error is not None:
            raise self.error
        self.clock.advance(self.exec_s)
        return ExecOutcome(value=value, wait_s=0.0, exec_s=self.exec_s)


# What a neighbour does with one request: given the request's timeout and the dispatcher's
# `gone()` watch, return a reply, None (no reply in time) or raise MqttError.
Script = Callable[[float, Callable[[], bool]], p.OffloadReply | None]


@dataclass
class FakeOffload:
    clock: Clock
    scripts: dict[str, Script] = field(default_factory=dict)
    calls: list[tuple[str, float, float | None]] = field(default_factory=list)

    async def request(self, target: str, task: p.SubmitRequest, *, deadline_s: float | None,
                      expected_s: float | None, timeout_s: float,
                      gone: Callable[[], bool] | None = None) -> p.OffloadReply | None:
        self.calls.append((target, timeout_s, deadline_s))
        assert gone is not None
        return self.scripts[target](timeout_s, gone)


@dataclass
class FakeCloud:
    """`mode`: ok | timeout (takes the whole timeout) | unauthorized | failed."""

    clock: Clock
    mode: str = "ok"
    timeouts: list[float] = field(default_factory=list)
    # what CloudClient keeps of the X-Edgesched-Load header: this fake reports no load
    load: tuple[int, int, int, float] | None = None
    load_at: float = -math.inf
    cancelled: list[str] = field(default_factory=list)

    async def cancel(self, task_id: str, *, sent_at_ms: int) -> None:
        self.cancelled.append(task_id)

    async def submit(self, body: bytes, *, timeout_s: float | None = None) -> dict[str, Any]:
        assert timeout_s is not None
        self.timeouts.append(timeout_s)
        task_id = json.loads(body)["id"]  # what the cloud was sent: the same task
        if self.mode == "timeout":
            self.clock.advance(timeout_s)
            raise HttpTimeoutError(f"cloud did not answer within {timeout_s}s")
        if self.mode == "unauthorized":
            raise UnauthorizedError("cloud refused our token (HTTP 401)")
        self.clock.advance(0.1)
        status = "ok" if self.mode == "ok" else "failed"
        return {"v": 1, "id": task_id, "status": status, "result": "from the cloud",
                "error": None if status == "ok" else "handler exploded",
                "placement": "local", "executed_by": CLOUD_ID, "latency_s": 0.05,
                "attempts": 1}


def reply_from(node: str, status: p.Status, **kw: Any) -> Script:
    def script(timeout_s: float, gone: Callable[[], bool]) -> p.OffloadReply:
        return p.OffloadReply(id="t1", correlation_id="x", status=status, executed_by=node,
                              **kw)
    return script


def silent(clock: Clock) -> Script:
    def script(timeout_s: float, gone: Callable[[], bool]) -> None:
        clock.advance(timeout_s)
        return None
    return script


class World:
    """One node `a` with its fakes, the view's neighbours and a real Dispatcher."""

    def __init__(self, *, max_attempts: int = 3) -> None:
        self.clock = Clock()
        self.executor = FakeExecutor(self.clock)
        self.offload = FakeOffload(self.clock)
        self.cloud = FakeCloud(self.clock)
        self.metrics = Metrics()
        self.neighbours = {
            "b": NodeState(node_id="b", last_seen=T0, incarnation=1),
            "c": NodeState(node_id="c", last_seen=T0, incarnation=1, running=1, queued=2),
        }
        bank = EstimatorBank()
        bank.set_link_prior(CLOUD_ID, LinkEstimate(rtt_s=0.08))
        self.dispatcher = Dispatcher(
            node_id="a", executor=self.executor,  # type: ignore[arg-type]
            bank=bank, policy=CostPolicy(CostParams()),
            fallback=FallbackParams(max_attempts=max_attempts), metrics=self.metrics,
            snapshot=self.snapshot, local_power=PowerModel(),
            cloud=self.cloud,  # type: ignore[arg-type]
            offload=self.offload,  # type: ignore[arg-type]
            clock=self.clock,
        )

    def snapshot(self, task: TaskSpec | None = None) -> ClusterSnapshot:
        now = self.clock()
        return ClusterSnapshot(now=now, local=NodeState(node_id="a", last_seen=now),
                               neighbours=tuple(self.neighbours.values()))

    def job(self, *, deadline_s: float | None = None) -> Job:
        settings = TaskTypeSettings(handler="builtin:echo", offload="anywhere",
                                    output_bytes=100)
        request = p.SubmitRequest(id="t1", type="echo", input="hello", input_bytes=100,
                                  deadline_s=deadline_s)
        return Job(request=request,
                   task_type=TaskType(name="echo", settings=settings,
                                      handler=None),  # type: ignore[arg-type]
                   value="hello", received_at=self.clock(), deadline_s=deadline_s, work=100.0,
                   exact_s=None)

    async def place(self, job: Job | None = None) -> p.Reply:
        return await self.dispatcher.place(job if job is not None else self.job())

    def attempts(self) -> list[tuple[str, str]]:
        """(node, outcome) of each attempt of the last task, as /v1/status shows them."""
        record = self.dispatcher.decisions[-1]
        return [(a["node_id"], a["status"]) for a in record.attempts]

    def counter(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def test_the_ranking_these_tests_rely_on() -> None:
    w = World()
    decision, _ = w.dispatcher.decide(w.job())
    assert [e.node_id for e in decision.ranked()] == RANKING


async def test_local_full_neighbour_rejects_cloud_times_out_then_max_attempts() -> None:
    w = World(max_attempts=3)
    w.executor.fill()
    w.offload.scripts["b"] = reply_from("b", p.Status.REJECTED, error="queue_full: busy")
    w.cloud.mode = "timeout"
    reply = await w.place()
    assert w.attempts() == [("a", "rejected"), ("b", "rejected"), (CLOUD_ID, "timeout")]
    assert w.executor.runs == 0  # refused by admission, never run
    # three attempts of three allowed: c, ranked fourth, is never asked
    assert reply.status is p.Status.FAILED and reply.attempts == 3
    assert reply.error is not None and reply.error.startswith("gave up after 3 attempts")
    assert "a: rejected" in reply.error and "cloud: timeout" in reply.error
    assert reply.placement is Placement.CLOUD and reply.executed_by is None
    assert [c[0] for c in w.offload.calls] == ["b"]
    assert w.counter("edgesched_cloud_requests_failed_total", reason="timeout") == 1
    assert w.dispatcher.decisions[-1].status == "failed"
    assert w.dispatcher.inflight.unreported({}) == {}  # every remote attempt settled


async def test_a_fourth_attempt_reaches_the_busy_neighbour_and_succeeds() -> None:
    w = World(max_attempts=4)
    w.executor.fill()
    w.offload.scripts["b"] = reply_from("b", p.Status.REJECTED, error="queue_full")
    w.offload.scripts["c"] = reply_from("c", p.Status.OK, result=42, wait_s=0.01, exec_s=0.02)
    w.cloud.mode = "timeout"
    reply = await w.place()
    assert w.attempts() == [("a", "rejected"), ("b", "rejected"), (CLOUD_ID, "timeout"),
                            ("c", "ok")]
    assert reply.status is p.Status.OK and reply.result == 42 and reply.attempts == 4
    assert reply.placement is Placement.NEIGHBOUR and reply.executed_by == "c"
    assert reply.latency_s == pytest.approx(1.0)  # the cloud's 1 s attempt timeout


async def test_everyone_refusing_is_a_rejection_not_a_failure() -> None:
    w = World(max_attempts=2)
    w.executor.fill()
    w.offload.scripts["b"] = reply_from("b", p.Status.REJECTED, error="queue_full")
    reply = await w.place()
    assert w.attempts() == [("a", "rejected"), ("b", "rejected")]
    assert reply.status is p.Status.REJECTED and reply.attempts == 2
    assert reply.error is not None and reply.error.startswith("no target could take it")
    assert w.counter("edgesched_tasks_rejected_total", reason="no_target") == 1


async def test_a_neighbour_going_offline_mid_attempt_is_abandoned_at_once() -> None:
    w = World()
    w.executor.error = HandlerError("echo crashed")

    def b_dies(timeout_s: float, gone: Callable[[], bool]) -> None:
        assert not gone()
        w.clock.advance(0.05)
        w.neighbours["b"] = NodeState(node_id="b", last_seen=T0, incarnation=1,
                                      liveness=Liveness.OFFLINE)  # its Will arrived
        assert gone()
        return None  # what OffloadClient.request returns once gone() turns true

    w.offload.scripts["b"] = b_dies
    reply = await w.place()
    assert w.attempts() == [("a", "failed"), ("b", "timeout"), (CLOUD_ID, "ok")]
    record = w.dispatcher.decisions[-1]
    assert record.attempts[1]["error"] == "b went offline or restarted"
    assert record.attempts[1]["duration_s"] == pytest.approx(0.05)  # not the whole 1 s
    assert reply.status is p.Status.OK and reply.executed_by == CLOUD_ID
    assert reply.result == "from the cloud" and reply.attempts == 3


async def test_a_neighbour_restarting_mid_attempt_counts_as_gone() -> None:
    w = World()
    w.executor.fill()

    def b_restarts(timeout_s: float, gone: Callable[[], bool]) -> None:
        w.neighbours["b"] = NodeState(node_id="b", last_seen=T0, incarnation=2)
        return None if gone() else pytest.fail("a new incarnation is gone")

    w.offload.scripts["b"] = b_restarts
    await w.place()
    assert w.attempts()[1] == ("b", "timeout")
    assert w.dispatcher.decisions[-1].attempts[1]["error"] == "b went offline or restarted"


async def test_silence_and_transport_errors_move_on() -> None:
    w = World(max_attempts=4)
    w.executor.fill()
    w.offload.scripts["b"] = silent(w.clock)

    def broker_down(timeout_s: float, gone: Callable[[], bool]) -> None:
        raise MqttError("not connected to the broker")

    w.offload.scripts["c"] = broker_down
    w.cloud.mode = "unauthorized"
    reply = await w.place()
    assert w.attempts() == [("a", "rejected"), ("b", "timeout"), (CLOUD_ID, "failed"),
                            ("c", "failed")]
    record = w.dispatcher.decisions[-1]
    assert record.attempts[1]["error"] == "no reply from b in 1s"
    assert reply.status is p.Status.FAILED and reply.attempts == 4
    assert w.counter("edgesched_cloud_requests_failed_total", reason="unauthorized") == 1


async def test_timeouts_in_a_row_weigh_on_the_target_until_it_answers_in_time() -> None:
    """The dispatcher hands a timed-out attempt to `InFlight.gave_up` and an answered one to
    `settled` with the time: after two cloud timeouts in a row the cloud's candidate carries
    the lateness of the last; a transport failure is neither (it says nothing of lateness)."""
    w = World(max_attempts=2)
    w.neighbours.clear()  # this node (full) and the cloud only
    w.executor.fill()
    w.cloud.mode = "timeout"

    def cloud_wait() -> float:
        cands = w.dispatcher.candidates(w.dispatcher.spec(w.job()))
        return next(c.est_wait_s for c in cands if c.node_id == CLOUD_ID)

    plain = cloud_wait()
    await w.place()
    assert w.attempts() == [("a", "rejected"), (CLOUD_ID, "timeout")]
    assert cloud_wait() == pytest.approx(plain)  # one timeout: not evidence yet
    await w.place()
    assert w.attempts() == [("a", "rejected"), (CLOUD_ID, "timeout")]
    late = w.dispatcher.inflight.lateness(w.clock())
    assert late[CLOUD_ID] > 0.5  # the 1 s timeout, well past the ~0.1 s quantile
    assert cloud_wait() == pytest.approx(plain + late[CLOUD_ID])
    w.clock.advance(1.0)  # the first hold runs out: the cloud is tried again, and answers
    w.cloud.mode = "ok"
    reply = await w.place()
    assert reply.executed_by == CLOUD_ID
    assert w.dispatcher.inflight.lateness(w.clock()) == {}
    assert cloud_wait() == pytest.approx(plain, abs=0.05)  # only what the reply taught


async def test_the_deadline_cuts_the_attempt_timeout_and_ends_the_chain_expired() -> None:
    w = World(max_attempts=4)
    w.executor.fill()
    w.offload.scripts["b"] = silent(w.clock)  # waits out its whole timeout
    w.cloud.mode = "timeout"
    reply = await w.place(w.job(deadline_s=1.5))
    # b gets its 1 s attempt timeout (and is told the 1.5 s left); the cloud only the 0.5 s
    # left after that; then the deadline has passed and c, although untried, is not asked
    assert w.offload.calls == [("b", pytest.approx(1.0), pytest.approx(1.5))]
    assert w.cloud.timeouts == [pytest.approx(0.5)]
    assert w.attempts() == [("a", "rejected"), ("b", "timeout"), (CLOUD_ID, "timeout")]
    assert reply.status is p.Status.EXPIRED and reply.attempts == 3
    assert reply.error is not None and reply.error.startswith("deadline of 1.5s passed")
    assert reply.latency_s == pytest.approx(1.5)
    assert w.dispatcher.decisions[-1].status == "expired"


async def test_an_expired_or_invalid_local_run_is_terminal() -> None:
    w = World()
    w.executor.error = DeadlineExpiredError("the deadline passed while queued")
    reply = await w.place(w.job(deadline_s=5.0))
    assert w.attempts() == [("a", "expired")]
    assert reply.status is p.Status.EXPIRED and reply.attempts == 1
    w.executor.error = InvalidTaskError("echo takes a string")
    reply = await w.place()
    assert w.attempts() == [("a", "invalid")]
    assert reply.status is p.Status.REJECTED and reply.error == "echo takes a string"
    assert w.offload.calls == [] and w.cloud.timeouts == []


async def test_a_remote_failure_or_expiry_maps_through_the_one_vocabulary() -> None:
    w = World()
    w.executor.fill()
    w.offload.scripts["b"] = reply_from("b", p.Status.EXPIRED, error="too late")
    reply = await w.place(w.job(deadline_s=30.0))
    assert w.attempts() == [("a", "rejected"), ("b", "expired")]
    assert reply.status is p.Status.EXPIRED and reply.error == "b: too late"
    assert p.to_outcome(p.Status.EXPIRED) is Outcome.EXPIRED
