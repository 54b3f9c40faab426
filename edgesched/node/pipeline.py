"""The task pipeline component: intake -> decide -> dispatch -> reply -> feedback.

Built by the composition root (service.build_runtime) from its settings and the
collaborators it uses: the MQTT client, the metrics, the local executor and the estimator bank
(both built before it: the telemetry stage reads the executor's load, and neighbours' speeds and
uplink readings feed the bank), a snapshot function and the view's neighbour list. It runs the
executor it is given (enters, drains and exits it), owns the cloud client, the intake, the
offload client/server, the dispatcher and every in-flight task (as tasks of its TaskGroup),
and guarantees one terminal reply per accepted task; a repeated task id gets the first outcome.
It knows nothing of the composition root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edgesched.adapters.cloud import CloudClient
from edgesched.adapters.executor import LocalExecutor
from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import MqttClient
from edgesched.adapters.spool import Spool
from edgesched.core.candidates import CLOUD_ID
from edgesched.core.estimators import EstimatorBank, ExecParams, ExecPrior
from edgesched.core.exploration import ExploringPolicy
from edgesched.core.model import LinkEstimate, NodeState, Placement, PowerModel
from edgesched.core.policies import make_policy
from edgesched.core.probing import ProbeParams
from edgesched.errors import InvalidTaskError
from edgesched.logs import TASK_ID
from edgesched.node import protocol as p
from edgesched.node.dispatch import Dispatcher, Job, SnapshotSource
from edgesched.node.intake import Intake
from edgesched.node.offload import OffloadClient, OffloadServer
from edgesched.node.telemetry import Load
from edgesched.node.trace import (
    TaskTrace,
    TraceSink,
    hindsight_best_s,
    new_trace,
    record_line,
)
from edgesched.node.uplinkprobe import UplinkProber
from edgesched.tasks.registry import TaskRegistry

if TYPE_CHECKING:
    import numpy as np

    from edgesched.config import PolicySettings, Settings, TaskTypeSettings

log = logging.getLogger("edgesched.pipeline")

MAX_OUTCOMES = 10_000  # remembered replies for idempotent ids (and intake.result_cache_bytes)
RESULT_CACHE_BYTES = 16 << 20  # the default of intake.result_cache_bytes
ENTRY_OVERHEAD_BYTES = 200  # a remembered reply's key, dict slot and bytes header
FLUSH_S = 1.0  # after the grace: how long the last replies may take to go out
SHUTTING_DOWN = "node shutting down"
# spawned tasks that do work (cut when the grace is over); every other spawned task sends a
# reply and is left to finish until the flush is over
WORK_TASKS = frozenset({"edgesched.pipeline.task"})
STATUS_DECISIONS = 20


# Before anything is measured: edge neighbours share a LAN, the cloud is across a WAN.
NEIGHBOUR_LINK_PRIOR = LinkEstimate(rtt_s=0.005, rtt_std_s=0.003, bandwidth_bps=1e8,
                                    bandwidth_std_bps=2e7)


def cloud_link_prior(rtt_s: float = 0.05, bandwidth_bps: float = 2e7) -> LinkEstimate:
    """The cloud link's prior: the uplink's nominal figures (`cloud.rtt_s`,
    `cloud.bandwidth_bps`), give or take 40 % and 25 %."""
    return LinkEstimate(rtt_s=rtt_s, rtt_std_s=0.4 * rtt_s, bandwidth_bps=bandwidth_bps,
                        bandwidth_std_bps=0.25 * bandwidth_bps)


CLOUD_LINK_PRIOR = cloud_link_prior()

# A node shares its CPU with whatever else runs on the box: execution times drift with that
# load, so the daemon remembers ~10 samples (the core's default, ~50, lags a drifting host).
EXEC_PARAMS = ExecParams(forgetting=0.9)


def make_bank(settings: Settings) -> EstimatorBank:
    """Estimators seeded with the configured priors (exec at speed 1, scaled by this node's
    and the cloud tier's configured speeds until measurements replace them)."""
    priors = {name: ExecPrior(mean_s=spec.exec_prior_s, s_per_mb=spec.exec_prior_s_per_mb)
              for name, spec in settings.task_types.items()}
    speeds = {settings.node_id: settings.executor.speed, CLOUD_ID: settings.cloud.speed}
    return EstimatorBank(exec_priors=priors, speeds=speeds,
                         link_priors={CLOUD_ID: cloud_link_prior(settings.cloud.rtt_s,
                                                                 settings.cloud.bandwidth_bps)},
                         default_link_prior=NEIGHBOUR_LINK_PRIOR, exec_params=EXEC_PARAMS)


class TaskBook:
    """Idempotency: in-flight tasks by key, and a byte-bounded LRU of finished replies.

    A key is `(route, task_id)` (see intake.route_key): a repeat on the same reply route gets
    the first outcome, another route's task with the same id is a task of its own. Finished
    replies are kept *encoded* (their size in memory is their size on the wire), least
    recently used first out once they pass `max_bytes`; a reply larger than `max_bytes` on
    its own is not remembered at all, nor is anything finished with `remember=False`.
    """

    def __init__(self, max_bytes: int = RESULT_CACHE_BYTES,
                 max_outcomes: int = MAX_OUTCOMES) -> None:
        self.inflight: dict[Hashable, asyncio.Future[p.Reply]] = {}
        self.outcomes: OrderedDict[Hashable, bytes] = OrderedDict()
        self.max_bytes = max_bytes
        self.max_outcomes = max_outcomes
        self.cached_bytes = 0

    def existing(self, key: Hashable) -> asyncio.Future[p.Reply] | None:
        """The future of a task already seen (done when it finished), else None."""
        if key in self.inflight:
            return self.inflight[key]
        data = self.outcomes.get(key)
        if data is None:
            return None
        self.outcomes.move_to_end(key)
        done: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        done.set_result(decode_reply(data))
        return done

    def begin(self, key: Hashable) -> asyncio.Future[p.Reply]:
        future: asyncio.Future[p.Reply] = asyncio.get_running_loop().create_future()
        self.inflight[key] = future
        return future

    def finish(self, key: Hashable, reply: p.Reply, *, remember: bool = True) -> None:
        future = self.inflight.pop(key, None)
        if remember:
            self._remember(key, reply.encode())
        if future is not None and not future.done():
            future.set_result(reply)

    @staticmethod
    def _cost(data: bytes) -> int:
        return len(data) + ENTRY_OVERHEAD_BYTES

    def _remember(self, key: Hashable, data: bytes) -> None:
        old = self.outcomes.pop(key, None)
        if old is not None:
            self.cached_bytes -= self._cost(old)
        cost = self._cost(data)
        if cost > self.max_bytes:
            return  # larger than the whole cache: never remembered
        self.outcomes[key] = data
        self.cached_bytes += cost
        while self.cached_bytes > self.max_bytes or len(self.outcomes) > self.max_outcomes:
            _, dropped = self.outcomes.popitem(last=False)
            self.cached_bytes -= self._cost(dropped)


def decode_reply(data: bytes) -> p.Reply:
    """A remembered reply back from its encoding (Reply.to_dict, read the other way)."""
    doc = json.loads(data)
    placement = doc.get("placement")
    return p.Reply(
        id=doc["id"], status=p.Status(doc["status"]), result=doc.get("result", p.MISSING),
        result_b64=doc.get("result_b64"), error=doc.get("error"),
        placement=None if placement is None else Placement(placement),
        executed_by=doc.get("executed_by"), latency_s=doc.get("latency_s", 0.0),
        attempts=doc.get("attempts", 0), correlation_id=doc.get("correlation_id"),
    )


def _numpy_rng() -> np.random.Generator:
    import numpy as np  # here: only the random and exploring policies need it

    return np.random.default_rng()


class DrainingExecutor(LocalExecutor):
    """The local executor, plus what a drain needs: `drain()` answers every task waiting for
    a slot at once (its task is cancelled: the pipeline replies `failed`, node shutting down)
    and no task starts from then on; running tasks go on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False
        self.cut = False  # set when the drain cut running tasks: a worker may still be busy
        self._waiting: set[asyncio.Task[Any]] = set()

    def load(self) -> Load:
        """This node's load as its telemetry publishes it (running, queued, slots, wait)."""
        return Load(running=self.running, queued=self.queued, slots=self.slots,
                    est_wait_s=self.estimated_wait())

    def waiting(self, task: asyncio.Task[Any]) -> bool:
        """True while `task` waits for a slot (queued: its work has not started)."""
        return task in self._waiting

    def drain(self) -> int:
        """Stop starting tasks; cancel the ones queued for a slot; returns how many."""
        self.draining = True
        queued = [t for t in self._waiting if not t.done()]
        for task in queued:
            task.cancel()
        return len(queued)

    async def __aexit__(self, *exc: object) -> None:
        pool = self._pool
        if self.cut and pool is not None:
            # What still runs in a worker process was answered `failed` when the grace ended
            # (cancelling its asyncio task does not stop the process): waiting the pool's
            # shutdown grace for it would only push the exit past shutdown.grace_s + 2 s.
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.kill()
        await super().__aexit__(*exc)

    async def _acquire(self, ticket: Any) -> None:
        task = asyncio.current_task()
        if self.draining and task is not None:
            task.cancel()  # a task reaching the queue during the drain: never started
            await asyncio.sleep(0)
        if task is not None:
            self._waiting.add(task)
        try:
            await super()._acquire(ticket)
        finally:
            self._waiting.discard(task)


class TaskPipeline:
    """Async context manager, entered after the telemetry stage and before the HTTP server,
    which serves its `routes()` and `status()`.

    Stopping is a drain (`drain()`, called by service.run on SIGTERM, else by `__aexit__`):
    intake refuses new work (`rejected`, shutting_down), tasks waiting for a slot are answered
    `failed` ("node shutting down") at once, running ones get up to `shutdown.grace_s` and
    are then answered the same way; the reply-sending tasks are left to publish (or write the
    HTTP response) until `FLUSH_S` later, and only then is anything left cancelled.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        mqtt: MqttClient,
        metrics: Metrics,
        executor: DrainingExecutor,
        bank: EstimatorBank,
        snapshot: SnapshotSource,
        neighbours: Callable[[float], Sequence[NodeState]],
        neighbour_state: Callable[[str, float], NodeState | None],
        spool: Spool | None = None,
        sinks: Sequence[TraceSink] = (),
    ) -> None:
        s = settings
        self.sinks = tuple(sinks)  # given every finished task's trace (node/trace.py)
        self.spool = spool  # the durable spool (state_dir set): MQTT tasks and their replies
        self.settings = s
        self.mqtt = mqtt
        self.metrics = metrics
        self.neighbours = neighbours  # every neighbour (status, the cloud node's id)
        self._state_of = neighbour_state  # one neighbour by id (ClusterView.state)
        self._cloud_id: str | None = None  # the cloud node's id, once seen (`_cloud_state`)
        self._cloud_scanned_at = -math.inf
        self.node_id = s.node_id
        self.edge = s.role == "edge"
        self.registry = TaskRegistry.from_settings(s.task_types)
        self.executor = executor
        self.grace_s = s.shutdown.grace_s
        self.bank = bank
        self.book = TaskBook(max_bytes=s.intake.result_cache_bytes)
        self._once = itertools.count()  # keys of submissions never deduplicated (HTTP)
        self.max_inflight = 4 * (s.executor.slots + s.executor.queue_size) + 64
        self.closing = False
        self._drained = False
        self._stopping = False  # past the drain: whatever is left is cancelled for good
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # every spawned task
        self._work: set[asyncio.Task[None]] = set()  # the ones doing a task's work
        self._handed: set[asyncio.Task[Any]] = set()  # running a neighbour's task locally
        self._late: set[asyncio.Task[None]] = set()  # replies spawned after the TaskGroup
        # the cloud tier's tasks from edge nodes by (id, sent_at), and the ones cancelled
        self._edge_tasks: dict[tuple[str, int | None], asyncio.Task[Any]] = {}
        self._edge_cancelled: OrderedDict[tuple[str, int | None], None] = OrderedDict()
        prefix = s.mqtt.topic_prefix
        max_bytes = min(s.mqtt.max_payload_bytes, s.http.max_body_bytes)
        self.cloud = CloudClient(s.cloud, origin=self.node_id) if self.edge and s.cloud.url \
            else None
        # probes the uplink while it looks degraded, so a recovery is noticed (core/probing.py)
        self.prober = None if self.cloud is None else UplinkProber(
            cloud=self.cloud, bank=bank, metrics=metrics,
            params=ProbeParams(interval_s=s.cloud.probe_interval_s,
                               max_bytes=s.cloud.probe_max_bytes))
        self._probing: asyncio.Task[None] | None = None
        self.offload_client = OffloadClient(
            mqtt=mqtt, prefix=prefix, node_id=self.node_id, metrics=metrics,
            max_payload_bytes=s.mqtt.max_payload_bytes) if self.edge else None
        pw = s.power
        self.dispatcher = Dispatcher(
            node_id=self.node_id, executor=self.executor, bank=self.bank,
            policy=self._policy(s),
            fallback=s.offload.to_params(),
            metrics=metrics, snapshot=snapshot,
            local_power=PowerModel(idle_w=pw.idle_w, busy_w=pw.busy_w, tx_w=pw.tx_w,
                                   rx_w=pw.rx_w),
            cloud=self.cloud, offload=self.offload_client,
            neighbour_state=self._neighbour_state, cloud_state=self._cloud_state,
        )
        self.intake = Intake(
            mqtt=mqtt, metrics=metrics, accept=self.accept, spawn=self.spawn,
            known_types=self.type_names, max_payload_bytes=max_bytes,
            max_input_bytes=s.executor.max_input_bytes, prefix=prefix,
            reply_topics=s.intake.reply_topics, spool=spool, idempotent=self._idempotent,
            cloud_tier=not self.edge, shed_after_s=s.intake.shed_after_s,
            seen=lambda key: key in self.book.inflight or key in self.book.outcomes,
            # a backlog of twice its slots: not one task on a 1-slot node in a slow moment
            busy=lambda: len(self.book.inflight) >= 2 * self.executor.slots,
            load=self.executor.load)
        self.offload_server = OffloadServer(
            mqtt=mqtt, prefix=prefix, node_id=self.node_id, metrics=metrics,
            max_payload_bytes=s.mqtt.max_payload_bytes,
            max_input_bytes=s.executor.max_input_bytes, known_types=self.type_names,
            run=self.run_handed, spawn=self.spawn,
            waiting=self.executor.waiting) if self.edge else None
        self.submit_topic = p.submit_topic(prefix, self.node_id)

    @staticmethod
    def _policy(s: Settings) -> Any:
        """The configured policy; with `record.explore` > 0, wrapped ε-greedy (node/trace.py)."""
        # numpy (~15 MB resident) is imported only by a policy that draws random numbers
        rng = _numpy_rng() if s.policy.name == "random" else None
        policy = make_policy(s.policy.name, s.policy.to_params(), rng)
        if s.record.explore > 0:
            return ExploringPolicy(policy, s.record.explore, _numpy_rng())
        return policy

    def routes(self) -> list[web.RouteDef]:
        """The HTTP routes it serves (given to the HTTP server at its construction)."""
        routes = [web.post("/v1/tasks", self.intake.on_http_submit)]
        if not self.edge:  # the cloud tier: an edge node cancels an attempt it gave up on,
            # and measures its uplink (node/uplinkprobe.py)
            routes += [web.delete("/v1/tasks/{id}", self.on_http_cancel),
                       web.get("/v1/probe", self.on_http_probe),
                       web.post("/v1/probe", self.on_http_probe)]
        return routes

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> TaskPipeline:
        await self.executor.__aenter__()
        if self.cloud is not None:
            await self.cloud.__aenter__()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        m = self.metrics
        m.tasks_running.set_function(lambda: self.executor.running)
        m.tasks_queued.set_function(lambda: self.executor.queued)
        m.bind_pool(self.executor.pool_usage)
        if self.edge:
            assert self.offload_client is not None and self.offload_server is not None
            await self.offload_client.start()
            await self.offload_server.start()
            # with a spool, a submission's PUBACK waits until it is recorded (manual ack)
            await self.mqtt.subscribe(self.submit_topic, self.intake.on_mqtt_submit, qos=1,
                                      manual_ack=self.spool is not None,
                                      overflow=self.intake.on_mqtt_overflow)
        if self.prober is not None:
            self._probing = asyncio.create_task(self._guard(self.prober.run(), "uplink probe"),
                                                name="edgesched.uplink.probe")
        if self.spool is not None:
            self.mqtt.on_connect(self.intake.flush_spooled)  # replies held while away
            await self.intake.resume(self.submit_topic)  # what a crash left unfinished
        log.info("task pipeline ready: types %s, %d slots, policy %s",
                 ", ".join(sorted(self.registry.names())), self.executor.slots,
                 self.settings.policy.name)
        return self

    async def drain(self, grace_s: float | None = None) -> None:
        """Refuse new work, answer queued tasks now, give running ones up to `grace_s`
        (default `shutdown.grace_s`), answer what is left `failed`, then flush the replies
        (bounded by FLUSH_S). Every accepted task has its one terminal reply when it returns
        (sent, or counted in replies_dropped{reason="shutdown"})."""
        if self._drained:
            return
        self._drained = True
        self.closing = True
        self._stop_probing()
        grace = self.grace_s if grace_s is None else grace_s
        loop = asyncio.get_running_loop()
        started = loop.time()
        queued = self.executor.drain()
        work = [t for t in self._work | self._handed if not t.done() and not t.cancelling()]
        log.info("draining: %d queued task(s) answered, %d in flight given up to %gs",
                 queued, len(work), grace)
        if work:
            await asyncio.wait(work, timeout=grace)
        flush_by = loop.time() + FLUSH_S  # one budget for the cut tasks and every reply
        cut = [t for t in self._work | self._handed if not t.done() and not t.cancelling()]
        if cut:
            log.warning("grace period over: %d task(s) still running answered failed",
                        len(cut))
            self.executor.cut = True
            for task in cut:
                task.cancel()  # each answers its task `failed` (node shutting down)
            await asyncio.wait(cut, timeout=FLUSH_S / 2)
        senders = [t for t in self._tasks if not t.done() and t not in self._work]
        if senders:
            _, unsent = await asyncio.wait(senders, timeout=max(0.0, flush_by - loop.time()))
            if unsent:
                self.metrics.replies_dropped.labels(reason="shutdown").inc(len(unsent))
                log.warning("%d reply(ies) not sent within %gs of the grace period: dropped "
                            "(is the broker reachable?)", len(unsent), FLUSH_S)
        log.info("drained in %.2fs", loop.time() - started)

    def _stop_probing(self) -> None:
        if self._probing is not None:
            self._probing.cancel()

    async def __aexit__(self, *exc: object) -> None:
        """The drain (when service.run has not done it), then stop what is left."""
        try:
            await self.drain()
        finally:
            self._stopping = True
            self._stop_probing()
            if self._probing is not None:
                await asyncio.wait([self._probing])
            for task in self._tasks:
                task.cancel()
            tg, self._tg = self._tg, None
            try:
                if tg is not None:
                    await tg.__aexit__(None, None, None)
            finally:
                if self.cloud is not None:
                    await self.cloud.__aexit__(None, None, None)
                await self.executor.__aexit__(None, None, None)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        """Run `coro` in the pipeline's TaskGroup (it must not raise). After the pipeline has
        stopped (a rejection for a message MQTT delivers just before it disconnects) it runs
        on its own, cancelled at exit at the latest."""
        if self._tg is None:
            late = asyncio.ensure_future(self._guard(coro, name))
            self._late.add(late)
            late.add_done_callback(self._late.discard)
            return
        task = self._tg.create_task(self._guard(coro, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if name in WORK_TASKS:
            self._work.add(task)
            task.add_done_callback(self._work.discard)

    async def _guard(self, coro: Awaitable[None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug in one task must never take the pipeline down
            log.exception("%s failed", name)

    def _neighbour_state(self, node_id: str) -> NodeState | None:
        """A neighbour's latest state, shortlisted for decisions or not (the dispatcher
        watches the target of an attempt under way through it; each decision reads the
        cloud node's report through it)."""
        return self._state_of(node_id, time.monotonic())

    def _cloud_state(self) -> NodeState | None:
        """The cloud tier's own load report (the telemetry of the node with role `cloud`),
        when this node hears one: its slots and queue, not an assumed unbounded tier. The
        cloud's id is found by a scan of the view at most every 0.1 s, then remembered."""
        if self._cloud_id is not None:
            state = self._neighbour_state(self._cloud_id)
            if state is not None and state.role == "cloud":
                return state
        now = time.monotonic()
        if now - self._cloud_scanned_at < 0.1:
            return None
        self._cloud_scanned_at = now
        self._cloud_id = next((n.node_id for n in self.neighbours(now) if n.role == "cloud"),
                              None)
        return None if self._cloud_id is None else self._neighbour_state(self._cloud_id)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        d = self.dispatcher
        nodes = [self.node_id] + [n.node_id for n in self.neighbours(now)
                                  if n.role == "edge"]
        if self.cloud is not None:
            nodes.append(CLOUD_ID)
        estimates = {}
        for name in sorted(self.registry.names()):
            work = d.last_work.get(name, 0.0)
            estimates[name] = {"work": work, "exec": {
                node: _est(self.bank.exec_estimate(name, node, work, now)) for node in nodes}}
        links = {n: _link(self.bank.link(n, now)) for n in nodes if n != self.node_id}
        return {
            "policy": self.settings.policy.name, "in_flight": len(self.book.inflight),
            # the weights and parameters in effect (they change on a SIGHUP reload)
            "policy_params": self.settings.policy.model_dump(exclude={"name"}),
            "estimates": estimates, "links": links,
            "uplink_probe": None if self.prober is None else self.prober.status(now),
            "decisions": [r.as_dict(now) for r in list(d.decisions)[-STATUS_DECISIONS:]],
        }

    # -- reload (SIGHUP, node/reload.py) -------------------------------------------------------

    def set_policy(self, policy: PolicySettings) -> None:
        """Decide the next tasks with these policy settings (a reload); decisions under way
        finish with the policy they started with."""
        settings = self.settings.model_copy(update={"policy": policy})
        self.dispatcher.policy = self._policy(settings)  # built first: a failure swaps nothing
        self.settings = settings

    def set_task_types(self, types: Mapping[str, TaskTypeSettings]) -> None:
        """The task types for tasks accepted from now on (a reload): a type kept keeps its
        handler with new per-task settings (deadline, timeout, offload, ...); a type added or
        enabled gets its handler built (ConfigError, nothing changed, when it cannot load);
        a type removed or disabled is refused from now on (its running tasks finish). The
        intake and the offload server read the names through `type_names`."""
        current = {t.name: t for t in self.registry}
        enabled = {name: spec for name, spec in types.items() if spec.enabled}
        added = TaskRegistry.from_settings(
            {name: spec for name, spec in enabled.items() if name not in current})
        kept = {name: dataclasses.replace(current[name], settings=spec)
                for name, spec in enabled.items() if name in current}
        for t in added:  # a new type's prior, until its times are measured
            self.bank.exec_priors.setdefault(t.name, ExecPrior(
                mean_s=t.settings.exec_prior_s, s_per_mb=t.settings.exec_prior_s_per_mb))
        self.registry = TaskRegistry({**kept, **{t.name: t for t in added}})
        self.settings = self.settings.model_copy(update={"task_types": dict(types)})

    def type_names(self) -> frozenset[str]:
        """The task types this node runs now (they change on a reload)."""
        return self.registry.names()

    # -- accepting and running ----------------------------------------------------------------

    def _idempotent(self, name: str) -> bool:
        """May a task of type `name` left unfinished by a crash run again after a restart?"""
        return name in self.registry.names() and self.registry.get(name).settings.idempotent

    def _job(self, req: p.SubmitRequest, received_at: float) -> Job:
        task_type = self.registry.get(req.type)
        try:
            value = self.registry.validate(req.type, req.task_input())
        except InvalidTaskError as exc:
            raise p.SubmissionError(p.RejectCode.SCHEMA, str(exc), task_id=req.id,
                                    reply_to=req.reply_to,
                                    correlation_id=req.correlation_id) from None
        deadline = req.deadline_s if req.deadline_s is not None else (
            task_type.settings.deadline_s)
        return Job(request=req, task_type=task_type, value=value, received_at=received_at,
                   deadline_s=deadline, work=task_type.work(value, req.input_bytes),
                   exact_s=task_type.exact_seconds(value))

    def accept(self, req: p.SubmitRequest, received_at: float, route: bytes | None,
               origin_kind: str | None = None) -> asyncio.Future[p.Reply]:
        """The future terminal reply of `req`: the first one's for a repeated id on the same
        reply `route`; with `route` None (HTTP) every request is a task of its own.
        `origin_kind` "edge": an edge node's task on the cloud tier (counted apart)."""
        key: Hashable = (route, req.id) if route is not None else (None, next(self._once))
        seen = self.book.existing(key) if route is not None else None
        if seen is not None:
            return seen
        refuse = None
        if self.closing or self._tg is None:
            refuse = (p.RejectCode.SHUTTING_DOWN, "this node is shutting down")
        elif len(self.book.inflight) >= self.max_inflight:
            refuse = (p.RejectCode.QUEUE_FULL,
                      f"{len(self.book.inflight)} tasks in flight; try again later")
        if refuse is not None:
            raise p.SubmissionError(refuse[0], refuse[1], task_id=req.id,
                                    reply_to=req.reply_to, correlation_id=req.correlation_id)
        job = self._job(req, received_at)
        future = self.book.begin(key)
        self.spawn(self._run(job, key, origin_kind), "edgesched.pipeline.task")
        return future

    async def _run(self, job: Job, key: Hashable, origin_kind: str | None = None) -> None:
        TASK_ID.set(job.request.id)  # this asyncio task's log lines name the task
        trace = self._new_trace(job)
        try:
            if self.edge:
                reply = await self.dispatcher.place(job, trace)
            else:
                reply = await self._run_for_edge(job, trace)
        except asyncio.CancelledError:
            cut = self._failure(job, self._cut_reason())
            self._finish(job, key, cut, origin_kind)
            self._trace_finished(job, cut, trace)
            raise
        except Exception as exc:
            log.exception("task %s failed inside the pipeline", job.request.id)
            reply = self._failure(job, f"internal error: {exc!r}")
        self._finish(job, key, reply, origin_kind)
        self._trace_finished(job, reply, trace)

    def _new_trace(self, job: Job) -> TaskTrace:
        req = job.request
        return new_trace(
            task_id=req.id, task_type=job.task_type.name, origin=self.node_id,
            role=self.settings.role, received_at=job.received_at, work=job.work,
            exact_s=job.exact_s, input_bytes=req.input_bytes,
            output_bytes=job.task_type.settings.output_bytes, deadline_s=job.deadline_s,
            priority=req.priority, device_id=req.device_id)

    def _trace_finished(self, job: Job, reply: p.Reply, trace: TaskTrace) -> None:
        """The trace hook: complete the task's trace, observe its regret, hand it on."""
        trace.status = reply.status.value
        trace.error = reply.error
        trace.placement = reply.placement.value if reply.placement else None
        trace.executed_by = reply.executed_by
        trace.latency_s = round(reply.latency_s, 6)
        trace.deadline_missed = reply.status is p.Status.EXPIRED or (
            job.deadline_s is not None and reply.latency_s > job.deadline_s)
        if reply.status is p.Status.OK and trace.candidates:
            best = hindsight_best_s(trace, self.dispatcher.spec(job), self.bank,
                                    time.monotonic())
            if best is not None:
                trace.regret_s = round(max(0.0, reply.latency_s - best), 6)
                self.metrics.regret.observe(trace.regret_s)
        if not self.sinks:
            return
        try:  # once, for every sink (the recorder counts and reports a trace it cannot write;
            # the recent-task store keeps a cleaned record of it)
            line: bytes | None = record_line(trace)
        except TypeError as exc:
            log.debug("task %s: its trace cannot be encoded as JSON (%s)", trace.id, exc)
            line = None
        for sink in self.sinks:
            try:
                sink.on_task_finished(trace, line)
            except Exception:  # a sink's bug must not cost the task its reply
                log.exception("trace sink %r failed", sink)

    async def _run_for_edge(self, job: Job, trace: TaskTrace | None = None) -> p.Reply:
        """The cloud tier's path: never start a task whose time is up (an edge node stamps
        `sent_at`: a request read late — this node was frozen — has less time left)."""
        expired = self._expired_on_arrival(job.request, "http")
        if expired is not None:
            return p.Reply(id=job.request.id, status=p.Status.EXPIRED, error=expired,
                           placement=Placement.LOCAL, executed_by=None,
                           latency_s=time.monotonic() - job.received_at, attempts=1)
        late = p.late_s(job.request.sent_at_ms, int(time.time() * 1000))
        if late > 0:
            job = dataclasses.replace(job, received_at=job.received_at - late)
        key = (job.request.id, job.request.sent_at_ms)
        cancelled = p.Reply(id=job.request.id, status=p.Status.EXPIRED, placement=Placement.LOCAL,
                            error=f"cancelled by its origin before {self.node_id} started it",
                            latency_s=time.monotonic() - job.received_at, attempts=1)
        if key in self._edge_cancelled:
            self.metrics.cancels.labels(direction="received", result="dropped").inc()
            return cancelled
        me = asyncio.current_task()
        if me is not None:
            self._edge_tasks[key] = me
        try:
            return await self.dispatcher.local_only(job, trace)
        except asyncio.CancelledError:
            if key not in self._edge_cancelled or self.closing or me is None:
                raise
            me.uncancel()  # the origin's DELETE cancelled it while it waited for a slot
            self.metrics.cancels.labels(direction="received", result="dropped").inc()
            return cancelled
        finally:
            if me is not None and self._edge_tasks.get(key) is me:
                del self._edge_tasks[key]

    async def on_http_probe(self, request: web.Request) -> web.Response:
        """GET/POST /v1/probe (the cloud tier): an edge node measuring its uplink. A POST's
        body is read in full (bounded by http.max_body_bytes, 413 beyond) before the answer,
        so the request's time includes its upload; it is then dropped."""
        if request.method == "POST":
            await request.read()
        return web.Response(status=204)

    async def on_http_cancel(self, request: web.Request) -> web.Response:
        """`DELETE /v1/tasks/{id}[?sent_at=MS]`: drop that task if it has not started.

        Answers 200 `{"id", "result": "dropped"|"running"|"unknown"}`; "unknown" is also
        remembered, so a task that arrives after its cancel is dropped on arrival."""
        task_id = request.match_info["id"]
        raw = request.query.get("sent_at")
        bad_stamp = raw is not None and not (raw.isascii() and raw.isdigit() and len(raw) <= 16)
        if bad_stamp or len(task_id) > p.MAX_ID_CHARS:
            self.metrics.tasks_rejected.labels(reason=p.RejectCode.SCHEMA.value).inc()
            return web.json_response({"error": "schema", "detail": "a cancel is DELETE "
                                      "/v1/tasks/{id}?sent_at=<integer ms>"}, status=400)
        key = (task_id, None if raw is None else int(raw))
        self._edge_cancelled[key] = None
        if len(self._edge_cancelled) > 4096:
            self._edge_cancelled.popitem(last=False)
        task = self._edge_tasks.get(key)
        if task is not None and not task.done() and self.executor.waiting(task):
            task.cancel()  # answered expired ("cancelled"), counted as dropped by the task
            result = "dropped"
        elif task is not None and not task.done():
            result = "running"
            self.metrics.cancels.labels(direction="received", result=result).inc()
        else:
            result = "unknown"  # not here yet (dropped on arrival then), or already answered
        return web.json_response({"id": task_id, "result": result})

    def _cut_reason(self) -> str:
        if self.executor.draining:
            return f"{SHUTTING_DOWN}: {self.node_id} stopped before the task finished"
        return f"{SHUTTING_DOWN}: {self.node_id} stopped"

    def _failure(self, job: Job, error: str) -> p.Reply:
        return p.Reply(id=job.request.id, status=p.Status.FAILED, error=error,
                       latency_s=time.monotonic() - job.received_at)

    def _finish(self, job: Job, key: Hashable, reply: p.Reply,
                origin_kind: str | None = None) -> None:
        m = self.metrics
        if origin_kind is not None:
            # another node's task: completed, timed and judged late where it was submitted
            m.remote_tasks.labels(origin_kind=origin_kind, status=reply.status.value).inc()
        else:
            placement = reply.placement.value if reply.placement else "none"
            task_type = m.type_label(job.task_type.name)
            m.tasks_completed.labels(placement=placement, status=reply.status.value,
                                     type=task_type).inc()
            if reply.status is p.Status.OK and reply.placement is not None:
                m.task_latency.labels(placement=placement, type=task_type).observe(
                    reply.latency_s)
            late = job.deadline_s is not None and reply.latency_s > job.deadline_s
            if reply.status is p.Status.EXPIRED or (reply.status is p.Status.OK and late):
                m.deadline_misses.inc()
        self.book.finish(key, reply, remember=isinstance(key, tuple) and key[0] is not None)

    def _received_at(self, task: p.SubmitRequest) -> float:
        """When `task` counts as received on our monotonic clock: now, moved back by how late
        it reached us past its `sent_at` (so its deadline runs from when it was sent)."""
        return time.monotonic() - p.late_s(task.sent_at_ms, int(time.time() * 1000))

    def _expired_on_arrival(self, task: p.SubmitRequest, via: str) -> str | None:
        """Why a handed-over task's time was up before it started (counted), else None."""
        left = p.time_left(task.deadline_s, task.sent_at_ms, int(time.time() * 1000))
        if left is None or left > 0:
            return None
        self.metrics.expired_on_arrival.labels(via=via).inc()
        log.info("task %s arrived %.1fs after its %gs deadline: expired, not run", task.id,
                 -left, task.deadline_s or 0.0)
        return (f"{self.node_id} got it {-left:.3f}s after its deadline (sent "
                f"{task.deadline_s:g}s before it): not run")

    async def run_handed(self, req: p.OffloadRequest) -> p.OffloadReply:
        """A neighbour's task: run it here (admission first), never offload it again."""
        task = req.task
        TASK_ID.set(task.id)  # in the offload server's task for this request: its log lines
        corr = task.correlation_id or ""

        def answer(status: p.Status, **kw: Any) -> p.OffloadReply:
            return p.OffloadReply(id=task.id, correlation_id=corr, status=status,
                                  executed_by=self.node_id, **kw)

        if self.closing:
            return answer(p.Status.REJECTED, error=f"{self.node_id} is shutting down")
        expired = self._expired_on_arrival(task, "offload")
        if expired is not None:
            return answer(p.Status.EXPIRED, error=expired)
        try:
            job = self._job(task, self._received_at(task))
        except p.SubmissionError as exc:
            return answer(p.Status.REJECTED, error=str(exc))
        me = asyncio.current_task()
        if me is not None:
            self._handed.add(me)
        try:
            result = await self.dispatcher.run_local(job)
        except asyncio.CancelledError:
            if not self.closing or self._stopping or me is None:
                raise
            me.uncancel()  # the drain cut it: the neighbour still gets its one reply
            return answer(p.Status.FAILED, error=self._cut_reason())
        finally:
            self._handed.discard(me)
        self.dispatcher.observe_local(job, result)
        return answer(p.to_status(result.outcome), result=result.value, error=result.error,
                      wait_s=result.wait_s, exec_s=result.exec_s)


def _est(estimate: Any) -> dict[str, float]:
    return {"mean_s": round(estimate.mean_s, 6), "std_s": round(estimate.std_s, 6)}


def _link(link: Any) -> dict[str, float]:
    return {"rtt_s": round(link.rtt_s, 6), "rtt_std_s": round(link.rtt_std_s, 6),
            "bandwidth_bps": round(link.bandwidth_bps, 1)}
