"""Prometheus metrics of one node, registered on an injected CollectorRegistry.

Names follow the Prometheus naming guide (base units, `_total` counters); every label set is
bounded and pre-initialised to zero so dashboards see a series before the first event.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgesched import __version__
from edgesched.core.model import Liveness, RejectReason

if TYPE_CHECKING:
    from edgesched.adapters.procstat import ProcessUsage
    from edgesched.core.model import Decision
    from edgesched.core.view import ClusterView

PLACEMENTS = ("local", "neighbour", "cloud")
STATUSES = ("ok", "failed", "rejected", "expired")
NEIGHBOUR_STATUSES = ("online", "suspect", "offline")
TELEMETRY_KINDS = ("node", "state", "device")
TELEMETRY_REJECT_REASONS = (
    "oversize", "malformed", "schema", "not_finite", "out_of_range", "unknown_device_limit",
    "queue_full", "bad_id", "neighbour_limit",
)
TASK_REJECT_REASONS = (
    "malformed", "schema", "oversize", "unknown_type", "queue_full", "deadline", "no_target",
    "shutting_down", "duplicate_in_flight", "reply_topic", "overloaded",
)
CANDIDATE_REJECT_REASONS = tuple(reason.value for reason in RejectReason)
DROP_REASONS = ("incoming_queue_full", "outgoing_queue_full", "oversize", "superseded",
                "duplicate")
MESSAGE_REJECT_REASONS = (
    "unsigned", "malformed", "unknown_signer", "bad_signature", "wrong_signer", "replay", "stale",
)
# A task refused before any placement was tried (bad input, queue full) completes as "none".
COMPLETION_PLACEMENTS = (*PLACEMENTS, "none")
REPLY_DROP_REASONS = ("no_route", "publish_failed", "shutdown")
OFFLOAD_IGNORE_REASONS = ("late", "malformed")
HTTP_AUTH_PATHS = ("/v1/status", "/v1/tasks", "/metrics", "other")
CLOUD_FAILURE_REASONS = ("unauthorized", "timeout", "unreachable", "http_status", "bad_reply")
# Work this node does for another node, by who asked: an edge neighbour over MQTT offload
# (`neighbour`), or an edge node through the cloud tier's HTTP intake (`edge`).
ORIGIN_KINDS = ("neighbour", "edge")
# The `type` label of task metrics: configured task types (at most MAX_TYPE_LABELS of them, in
# name order), everything else (unknown or unparseable submissions, types past the cap) `other`.
OTHER_TYPE = "other"
MAX_TYPE_LABELS = 32
# what the durable spool could not keep: over spool.max_bytes, past spool.reply_ttl_s, a
# write failed (disk full, I/O error)
SPOOL_SHED_REASONS = ("full", "ttl", "write_error")

# Decisions take microseconds; tasks take milliseconds to minutes.
DECISION_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)
TASK_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)
# How late a periodic timer fires: ~0 on a healthy loop, seconds when something blocks it.
LOOP_LAG_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
REGRET_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
ERROR_BUCKETS = (-10.0, -1.0, -0.25, -0.1, -0.025, -0.01, 0.0, 0.01, 0.025, 0.1, 0.25, 1.0, 10.0)

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """All metrics of one node; one instance per registry.

    `node_id` and `role` (the runtime passes both) make `edgesched_node_info`, the series a
    dashboard joins on to name a node; `task_types` bounds the `type` label of task metrics.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, node_id: str | None = None,
                 role: str | None = None, task_types: Collection[str] = ()) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.task_types = frozenset(sorted(task_types)[:MAX_TYPE_LABELS])
        self.build_info = Gauge(
            "edgesched_build_info", "Build information (always 1).", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)
        self.node_info = Gauge(
            "edgesched_node_info",
            "This node's identity (always 1): join on `instance` to name a node's series.",
            ["node_id", "role", "version"], registry=r,
        )
        if node_id is not None:
            self.node_info.labels(node_id=node_id, role=role or "", version=__version__).set(1)
        self.tasks_submitted = Counter(
            "edgesched_tasks_submitted",
            "Tasks clients submitted to this node (MQTT and HTTP); work done for other nodes "
            "is edgesched_remote_tasks_total.", registry=r,
        )
        self.remote_tasks = Counter(
            "edgesched_remote_tasks",
            "Tasks this node answered for another node, by who asked (neighbour: an edge's "
            "offload over MQTT; edge: the cloud tier's HTTP intake) and the reply's status "
            "(ok and failed ran here; rejected and expired did not).",
            ["origin_kind", "status"], registry=r,
        )
        self.decisions = Counter(
            "edgesched_decisions", "Placement decisions made, by chosen placement.",
            ["placement"], registry=r,
        )
        self.tasks_completed = Counter(
            "edgesched_tasks_completed",
            "Submitted tasks with a terminal reply, by placement, status and task type.",
            ["placement", "status", "type"], registry=r,
        )
        self.task_latency = Histogram(
            "edgesched_task_latency_seconds",
            "Submit-to-reply latency of submitted tasks answered ok, by placement and type.",
            ["placement", "type"], buckets=TASK_BUCKETS, registry=r,
        )
        self.decision_duration = Histogram(
            "edgesched_decision_duration_seconds", "Time the policy took to decide one task.",
            buckets=DECISION_BUCKETS, registry=r,
        )
        self.prediction_error = Histogram(
            "edgesched_latency_prediction_error_seconds",
            "Actual minus predicted task latency.", buckets=ERROR_BUCKETS, registry=r,
        )
        self.prediction_coverage = Gauge(
            "edgesched_prediction_coverage_ratio",
            "Share of this node's recent attempts (last 200 per placement) that finished within "
            "the latency quantile they were judged on (goal: policy.latency_quantile).",
            ["placement"], registry=r,
        )
        self.energy = Counter(
            "edgesched_energy_joules", "Estimated energy this node spent on tasks, by placement.",
            ["placement"], registry=r,
        )
        self.deadline_misses = Counter(
            "edgesched_deadline_misses", "Tasks that finished after their deadline or expired.",
            registry=r,
        )
        self.neighbours = Gauge(
            "edgesched_neighbours", "Known neighbour nodes by liveness status.", ["status"],
            registry=r,
        )
        self.telemetry_interval = Gauge(
            "edgesched_telemetry_interval_seconds",
            "The telemetry interval in use (telemetry.interval_s, stretched by "
            "telemetry.max_fanout_rate).", registry=r,
        )
        self.telemetry_messages = Counter(
            "edgesched_telemetry_messages", "Telemetry messages accepted, by kind.", ["kind"],
            registry=r,
        )
        self.telemetry_samples = Counter(
            "edgesched_telemetry_samples", "Device telemetry samples accepted (SenML records).",
            registry=r,
        )
        self.telemetry_rejected = Counter(
            "edgesched_telemetry_rejected", "Telemetry messages rejected, by reason.",
            ["reason"], registry=r,
        )
        self.tasks_rejected = Counter(
            "edgesched_tasks_rejected", "Submissions rejected before running, by reason.",
            ["reason"], registry=r,
        )
        self.messages_dropped = Counter(
            "edgesched_mqtt_messages_dropped", "MQTT messages dropped by a full queue.",
            ["reason"], registry=r,
        )
        self.messages_rejected = Counter(
            "edgesched_messages_rejected",
            "Node-to-node messages refused by signature checks (security.*), by reason.",
            ["reason"], registry=r,
        )
        self.mqtt_connected = Gauge(
            "edgesched_mqtt_connected", "1 while connected to the MQTT broker.", registry=r
        )
        self.mqtt_reconnects = Counter(
            "edgesched_mqtt_reconnects", "Reconnections to the MQTT broker after a loss.",
            registry=r,
        )
        self.tasks_running = Gauge(
            "edgesched_tasks_running", "Tasks executing on this node now.", registry=r
        )
        self.tasks_queued = Gauge(
            "edgesched_tasks_queued", "Tasks waiting for an execution slot here.", registry=r
        )
        self.event_loop_lag = Histogram(
            "edgesched_event_loop_lag_seconds",
            "How much later than scheduled the event loop ran the stall guard's heartbeat.",
            buckets=LOOP_LAG_BUCKETS, registry=r,
        )
        self.candidates_rejected = Counter(
            "edgesched_candidates_rejected",
            "Candidates a decision ruled out, by placement and reason: why a task did not go "
            "there.", ["placement", "reason"], registry=r,
        )
        self.neighbour_telemetry_max_age = Gauge(
            "edgesched_neighbour_telemetry_max_age_seconds",
            "Age of the oldest telemetry among neighbours not offline (0 without neighbours); "
            "compare with policy.stale_after_s.", registry=r,
        )
        self.devices = Gauge(
            "edgesched_devices", "Devices whose telemetry this node tracks now.", registry=r
        )
        self.replies_dropped = Counter(
            "edgesched_replies_dropped", "Task replies that could not be sent, by reason.",
            ["reason"], registry=r,
        )
        self.offload_replies_ignored = Counter(
            "edgesched_offload_replies_ignored",
            "Neighbour offload replies ignored: late (the attempt was given up) or malformed.",
            ["reason"], registry=r,
        )
        self.http_unauthorized = Counter(
            "edgesched_http_unauthorized",
            "HTTP requests refused with 401 (missing or wrong bearer token), by route.",
            ["path"], registry=r,
        )
        self.task_lookups = Counter(
            "edgesched_task_lookups",
            "GET /v1/tasks/{id} answers, by result (found; unknown: not kept here; bad_id: "
            "refused, the id breaks the intake's rule).", ["result"], registry=r,
        )
        self.expired_on_arrival = Counter(
            "edgesched_tasks_expired_on_arrival",
            "Handed-over tasks (neighbour offload, cloud tier) answered expired without running: "
            "their deadline had passed when this node got to them (it was frozen, or the "
            "request queued at the broker).", ["via"], registry=r,
        )
        self.cancels = Counter(
            "edgesched_cancels",
            "Cancels of abandoned offload attempts: sent by the origin (result sent|failed), "
            "received by the target (result dropped: not started, dropped; running: too "
            "late; unknown: no such attempt, or already answered).",
            ["direction", "result"], registry=r,
        )
        self.cloud_requests_failed = Counter(
            "edgesched_cloud_requests_failed",
            "Cloud attempts that failed before a task reply came back, by reason.",
            ["reason"], registry=r,
        )
        self.cloud_probes = Counter(
            "edgesched_cloud_probes",
            "Probes of a degraded uplink to the cloud tier (docs/cost-model.md), by what they "
            "found: healthy (recovered), degraded (still), failed (no answer).",
            ["outcome"], registry=r,
        )
        self.spool_shed = Counter(
            "edgesched_spool_shed",
            "Tasks or replies the durable spool did not keep (they run or go out unspooled, "
            "or, for ttl, are given up), by reason.", ["reason"], registry=r,
        )
        self.spool_tasks = Gauge(
            "edgesched_spool_tasks", "Accepted MQTT tasks recorded in the spool, unfinished.",
            registry=r,
        )
        self.spool_replies = Gauge(
            "edgesched_spool_replies",
            "Terminal replies recorded in the spool, not yet acknowledged by the broker.",
            registry=r,
        )
        # recording and live regret (issue 17: node/trace.py, adapters/recorder.py)
        self.decisions_recorded = Counter(
            "edgesched_decisions_recorded",
            "Finished tasks written to the record (record.path), with their decision.",
            registry=r,
        )
        self.record_dropped = Counter(
            "edgesched_record_dropped",
            "Record lines not written, by reason (buffer_full: the writer fell behind; "
            "write_error: the disk refused them, or a line could not be encoded).", ["reason"],
            registry=r,
        )
        for reason in ("buffer_full", "write_error"):
            self.record_dropped.labels(reason=reason)
        self.regret = Histogram(
            "edgesched_regret_seconds",
            "Per completed task: its latency minus the lowest latency any of its candidates "
            "is predicted to have with the estimators as they are at completion (>= 0).",
            buckets=REGRET_BUCKETS, registry=r,
        )
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
        ProcessCollector(registry=r)
        self._preinitialise()

    def _preinitialise(self) -> None:
        def each(metric: Counter | Gauge | Histogram, label: str, values: Iterable[str]) -> None:
            for value in values:
                metric.labels(**{label: value})

        types = (*sorted(self.task_types), OTHER_TYPE)
        each(self.decisions, "placement", PLACEMENTS)
        for placement in PLACEMENTS:
            for task_type in types:
                self.task_latency.labels(placement=placement, type=task_type)
        each(self.energy, "placement", PLACEMENTS)
        each(self.neighbours, "status", NEIGHBOUR_STATUSES)
        each(self.telemetry_messages, "kind", TELEMETRY_KINDS)
        each(self.telemetry_rejected, "reason", TELEMETRY_REJECT_REASONS)
        each(self.tasks_rejected, "reason", TASK_REJECT_REASONS)
        each(self.messages_dropped, "reason", DROP_REASONS)
        each(self.messages_rejected, "reason", MESSAGE_REJECT_REASONS)
        each(self.replies_dropped, "reason", REPLY_DROP_REASONS)
        each(self.offload_replies_ignored, "reason", OFFLOAD_IGNORE_REASONS)
        each(self.http_unauthorized, "path", HTTP_AUTH_PATHS)
        each(self.task_lookups, "result", ("found", "unknown", "bad_id"))
        each(self.cloud_requests_failed, "reason", CLOUD_FAILURE_REASONS)
        each(self.cloud_probes, "outcome", ("healthy", "degraded", "failed"))
        each(self.expired_on_arrival, "via", ("offload", "http"))
        for kind in ORIGIN_KINDS:
            for status in STATUSES:
                self.remote_tasks.labels(origin_kind=kind, status=status)
        for result in ("sent", "failed"):
            self.cancels.labels(direction="sent", result=result)
        for result in ("dropped", "running", "unknown"):
            self.cancels.labels(direction="received", result=result)
        each(self.spool_shed, "reason", SPOOL_SHED_REASONS)
        for placement in COMPLETION_PLACEMENTS:
            for status in STATUSES:
                for task_type in types:
                    self.tasks_completed.labels(placement=placement, status=status,
                                                type=task_type)
        for placement in PLACEMENTS:
            for reason in CANDIDATE_REJECT_REASONS:
                self.candidates_rejected.labels(placement=placement, reason=reason)
        self.mqtt_connected.set(0)

    def type_label(self, task_type: str | None) -> str:
        """The bounded `type` label value of a task type: itself when configured, else
        `other`."""
        return task_type if task_type in self.task_types else OTHER_TYPE

    def completed(self, placement: str, status: str, task_type: str | None) -> None:
        """Count one submitted task's terminal reply."""
        self.tasks_completed.labels(placement=placement, status=status,
                                    type=self.type_label(task_type)).inc()

    def count_rejected_candidates(self, decision: Decision) -> None:
        """Count every candidate `decision` ruled out, by its placement and reason."""
        for evaluation in decision.evaluations:
            if not evaluation.feasible and evaluation.reason is not None:
                self.candidates_rejected.labels(
                    placement=evaluation.placement.value, reason=evaluation.reason.value
                ).inc()

    def bind_cluster_view(self, view: ClusterView, clock: Callable[[], float]) -> None:
        """Gauges computed from the cluster view at scrape time (scrapes run in the loop)."""

        def max_age() -> float:
            now = clock()
            ages = [n.age(now) for n in view.neighbours(now) if n.liveness is not Liveness.OFFLINE]
            return max(ages, default=0.0)

        self.neighbour_telemetry_max_age.set_function(max_age)
        self.devices.set_function(lambda: view.device_count)

    def bind_pool(self, usage: Callable[[], ProcessUsage]) -> None:
        """The process pool's workers: how many, their summed RSS and CPU seconds, read from
        /proc at each scrape (`process_*` covers the main process only)."""
        self.registry.register(_PoolCollector(usage))

    def exposition(self) -> bytes:
        """The text exposition format served on /metrics."""
        return generate_latest(self.registry)


class _PoolCollector:
    """`edgesched_pool_*`: one /proc read of the workers per scrape, for all three series."""

    def __init__(self, usage: Callable[[], ProcessUsage]) -> None:
        self._usage = usage

    def describe(self) -> list[Metric]:
        return []  # no samples at registration (the pool may not exist yet)

    def collect(self) -> Iterable[Metric]:
        usage = self._usage()
        yield GaugeMetricFamily(
            "edgesched_pool_workers", "Live worker processes of the process pool (it starts "
            "with the first cpu-bound task).", value=usage.processes)
        yield GaugeMetricFamily(
            "edgesched_pool_resident_memory_bytes",
            "Resident memory of the pool's workers, summed (RSS: shared pages counted in each).",
            value=usage.rss_bytes)
        yield CounterMetricFamily(
            "edgesched_pool_cpu_seconds", "User and system CPU time of the pool's workers, "
            "those since replaced included.", value=usage.cpu_seconds)
