"""Composition root of `edgesched run`: builds the node's components once, in dependency
order, each with the collaborators it uses, and runs them until stop.

`build_runtime(settings)` returns `Runtime`, the node's object graph: a frozen record of the
components, not a service locator (no component receives it). `components(rt)` is the one
ordered list entered at start and exited in reverse; `run()` connects MQTT, drains, stops.
docs/architecture.md ("How the node is wired") says who constructs what and who owns what.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edgesched import __version__
from edgesched.adapters.http import HttpServer, server_ssl_context
from edgesched.adapters.metrics import Metrics
from edgesched.adapters.mqtt import MqttClient, MqttOptions, OutboundMessage
from edgesched.adapters.recorder import Recorder, telemetry_source
from edgesched.adapters.signing import MessageSecurity, load_security
from edgesched.adapters.spool import Spool
from edgesched.adapters.stallguard import StallGuard, stall_guard_for
from edgesched.adapters.systemd import Notifier
from edgesched.config import (
    MqttSettings,
    ProcessEnvironment,
    Settings,
    config_path_from_env,
    load_settings,
    mask_url,
    read_process_environment,
)
from edgesched.core.candidates import CLOUD_ID, exec_means
from edgesched.core.estimators import EstimatorBank
from edgesched.core.model import ClusterSnapshot, PowerModel, TaskSpec
from edgesched.core.shortlist import Shortlist
from edgesched.core.view import ClusterView, NodeAnnouncement, ViewParams
from edgesched.errors import ConfigError, KeyFileError
from edgesched.logs import setup_logging
from edgesched.node.dispatch import SnapshotSource
from edgesched.node.pipeline import DrainingExecutor, TaskPipeline, make_bank
from edgesched.node.reload import Reloader
from edgesched.node.tasklog import TaskLog, valid_task_id
from edgesched.node.telemetry import Identity, LinkReadingFeeder, Load, TelemetryStage, Topics
from edgesched.node.trace import TraceSink

log = logging.getLogger("edgesched.service")

MAX_STATUS_DEVICES = 1000  # /v1/status lists the most recently seen ones; the total is given
MAX_SPEEDS = 4096  # neighbours whose announced speed is remembered
FIRST_CONNECT_WAIT_S = 2.0  # an edge node's HTTP API waits this long for the first connect


def next_incarnation(state_dir: Path | None, *, wall_ms: int) -> int:
    """A number larger than any earlier run's: persisted in `state_dir` when set.

    It is `max(stored + 1, wall_ms)`, so it keeps growing across restarts whether the state
    directory is lost (wall time still grows) or the clock steps back (the counter does).
    """
    if state_dir is None:
        return wall_ms
    path = state_dir / "incarnation"
    try:
        stored = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        stored = 0
    value = max(stored + 1, wall_ms)
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{value}\n", encoding="ascii")
    os.replace(tmp, path)
    return value


@dataclass(frozen=True, kw_only=True)
class NodeStatus:
    """The built-in part of `/v1/status` and the MQTT health check, read from parts that
    exist before the HTTP server is built (it is handed `doc` and `mqtt_health`)."""

    identity: Identity
    mqtt_settings: MqttSettings
    mqtt: MqttClient
    view: ClusterView
    telemetry: TelemetryStage
    load: Callable[[], Load]
    started_at: float = field(default_factory=time.monotonic)

    def doc(self) -> dict[str, Any]:
        """The built-in part of `/v1/status` (docs/contract.md)."""
        now = time.monotonic()
        load = self.load()
        devices = self.view.devices(now)
        local = self.telemetry.local_state(now)
        m = self.mqtt_settings
        return {
            "node_id": self.identity.node_id,
            "role": self.identity.role,
            "incarnation": self.identity.incarnation,
            "version": __version__,
            "uptime_s": round(now - self.started_at, 3),
            "mqtt": {
                "connected": self.mqtt.connected,
                "broker": mask_url(f"mqtt://{m.host}:{m.port}").removeprefix("mqtt://"),
                "disconnected_for_s": round(self.mqtt.disconnected_for(now), 3),
            },
            "local": {
                "cpu_util": local.cpu_util,
                "battery": local.battery,
                "power_w": local.power_w,
            },
            "neighbours": [
                {
                    "node_id": n.node_id, "status": n.liveness.value,
                    "last_seen_s": round(n.age(now), 3), "incarnation": n.incarnation,
                    "role": n.role, "slots": n.slots, "running": n.running,
                    "queued": n.queued, "est_wait_s": n.est_wait_s, "cpu_util": n.cpu_util,
                    "battery": n.battery, "power_w": n.power_w,
                    "task_types": sorted(n.task_types),
                }
                for n in self.view.neighbours(now)
            ],
            "devices": [
                {"device_id": d.device_id, "last_seen_s": round(d.age(now), 3),
                 "values": dict(d.values), "ts": d.ts}
                for d in devices[:MAX_STATUS_DEVICES]
            ],
            "devices_total": len(devices),
            "tasks": {"running": load.running, "queued": load.queued, "slots": load.slots,
                      "est_wait_s": load.est_wait_s},
        }

    def mqtt_health(self) -> str | None:
        """Unhealthy when an edge node has been off the broker for too long."""
        limit = max(30.0, 3.0 * self.mqtt_settings.keepalive_s)
        gone = self.mqtt.disconnected_for()
        if gone > limit:
            return f"MQTT broker disconnected for {gone:.0f}s (limit {limit:.0f}s)"
        return None


@dataclass(frozen=True, kw_only=True)
class Runtime:
    """The node's object graph as `build_runtime` built it; never changed afterwards.

    No component receives this record: each got its collaborators at construction. It exists
    so `components()` can list them in order and `run()` (and tests, through `run`'s
    `runtime_hook`) can reach them.
    """

    settings: Settings
    process_env: ProcessEnvironment
    metrics: Metrics
    identity: Identity
    topics: Topics
    view: ClusterView  # written by the telemetry stage only
    mqtt: MqttClient
    executor: DrainingExecutor  # run (entered, drained, exited) by the pipeline
    bank: EstimatorBank  # the pipeline learns into it; telemetry feeds speeds and uplink
    uplink_feeder: LinkReadingFeeder | None  # devices.uplink_device -> the cloud link
    telemetry: TelemetryStage
    pipeline: TaskPipeline
    task_log: TaskLog  # recent finished tasks (a trace sink), for GET /v1/tasks/{id}
    status: NodeStatus
    http: HttpServer
    notifier: Notifier
    stall_guard: StallGuard
    recorder: Recorder | None = None  # record.path set: finished tasks to disk (a trace sink)


def mqtt_options(settings: Settings) -> MqttOptions:
    m = settings.mqtt
    return MqttOptions(
        host=m.host, port=m.port, client_id=m.client_id or f"edgesched-{settings.node_id}",
        protocol=m.protocol, username=m.username,
        password=m.password.get_secret_value() if m.password is not None else None,
        keepalive_s=m.keepalive_s, max_payload_bytes=m.max_payload_bytes,
        incoming_queue=m.incoming_queue, reconnect_initial_s=m.reconnect_initial_s,
        reconnect_max_s=m.reconnect_max_s,
        tls_ca_file=str(m.tls.ca_file) if m.tls.ca_file else None,
        tls_cert_file=str(m.tls.cert_file) if m.tls.cert_file else None,
        tls_key_file=str(m.tls.key_file) if m.tls.key_file else None,
        tls_check_hostname=m.tls.check_hostname,
        session_expiry_s=m.session_expiry_s,
    )


def message_security(settings: Settings) -> MessageSecurity | None:
    """This node's signer and verifier when `security.key_file` is set (docs/security.md)."""
    sec = settings.security
    key, trust = sec.key_path, sec.trust_path
    if key is None or trust is None:
        return None
    try:
        return load_security(settings.node_id, key, trust, max_skew_s=sec.max_clock_skew_s)
    except KeyFileError as exc:
        raise ConfigError([("security", str(exc))]) from None


def open_spool(settings: Settings, metrics: Metrics) -> Spool | None:
    """The durable spool in `state_dir` (ConfigError, exit 78, when it is corrupt or cannot
    be written); None, logged once, without `state_dir`."""
    if settings.state_dir is None:
        log.info("no state_dir: no durable spool (accepted tasks and unsent replies do not "
                 "survive a crash or restart)")
        return None
    sp = settings.spool
    spool = Spool.open(settings.state_dir, max_bytes=sp.max_bytes, reply_ttl_s=sp.reply_ttl_s,
                       metrics=metrics)
    log.info("durable spool %s: %d unfinished task(s), %d unsent reply(ies)", spool.path,
             spool.task_count, spool.reply_count)
    return spool


def build_runtime(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    process_env: ProcessEnvironment | None = None,
) -> Runtime:
    """Construct (not start) every component of the node once, in dependency order, each
    with the collaborators it uses; nothing is plugged in afterwards."""
    metrics = Metrics(registry, node_id=settings.node_id, role=settings.role,
                      task_types=settings.enabled_task_types())
    env = process_env if process_env is not None else read_process_environment()
    identity = Identity(
        node_id=settings.node_id, role=settings.role,
        incarnation=next_incarnation(settings.state_dir, wall_ms=int(time.time() * 1000)),
        task_types=tuple(sorted(settings.enabled_task_types())),
        speed=settings.executor.speed,
    )
    topics = Topics(settings.mqtt.topic_prefix)
    view = _cluster_view(settings, metrics)
    metrics.bind_cluster_view(view, time.monotonic)  # telemetry age, device count at scrape
    mqtt = MqttClient(mqtt_options(settings), metrics, security=message_security(settings))
    # Built before the telemetry stage (which publishes its load) and the pipeline (which
    # runs it); the bank before the stage, whose state documents and device readings feed it.
    executor = DrainingExecutor(settings.executor)
    bank = make_bank(settings)
    uplink = settings.devices.uplink_device
    # the modem/uplink monitor's readings are this node's link to the cloud
    uplink_feeder = LinkReadingFeeder(bank, {uplink: CLOUD_ID}) if uplink else None
    telemetry = _telemetry_stage(settings, identity=identity, topics=topics, view=view,
                                 metrics=metrics, mqtt=mqtt, load=executor.load,
                                 on_device=uplink_feeder, on_announcement=speed_feeder(bank),
                                 on_rtt=bank.observe_rtt)
    # The Will is the stage's state document with status offline (docs/contract.md). The
    # one wiring step after construction: the stage publishes over the client, so the
    # client cannot be built with the stage's document; it is set before anything starts.
    state_topic = topics.node_state(identity.node_id)
    mqtt.set_will(
        OutboundMessage(topic=state_topic, payload=telemetry.state_doc(online=False),
                        signed=True),
        goodbye=lambda: OutboundMessage(topic=state_topic,
                                        payload=telemetry.state_doc(online=False), signed=True),
    )
    task_log = TaskLog(max_bytes=settings.http.recent_tasks_bytes)
    if settings.record.path is not None and settings.role != "edge":
        log.warning("record.path is ignored on a cloud node: edge nodes record their tasks")
    recorder = None if settings.record.path is None or settings.role != "edge" else Recorder(
        settings.record, node_id=settings.node_id, metrics=metrics,
        snapshot=telemetry_source(
            node_id=settings.node_id, speed=settings.executor.speed,
            cloud=bool(settings.cloud.url), neighbours=view.neighbours, load=executor.load,
            link=bank.link, speeds=lambda: bank.speeds,
            static={"policy": settings.policy.model_dump(mode="json"),
                    "telemetry_interval_s": settings.telemetry.interval_s,
                    "explore": settings.record.explore}))
    pipeline = TaskPipeline(settings=settings, mqtt=mqtt, metrics=metrics, executor=executor,
                            bank=bank, snapshot=snapshot_source(
                                view, telemetry, bank, settings.policy.max_candidates),
                            neighbours=view.neighbours, neighbour_state=view.state,
                            spool=open_spool(settings, metrics),
                            sinks=trace_sinks(task_log, recorder))
    status = NodeStatus(identity=identity, mqtt_settings=settings.mqtt, mqtt=mqtt, view=view,
                        telemetry=telemetry, load=executor.load)
    h = settings.http
    tls = h.tls
    http = HttpServer(
        host=h.host, port=h.port, metrics=metrics, status=status.doc,
        routes=pipeline.routes(), status_providers={"scheduler": pipeline.status,
                                                    "recent_tasks": task_log.stats},
        task_lookup=task_log.get, valid_task_id=valid_task_id,
        health_checks={"mqtt": status.mqtt_health} if settings.role == "edge" else None,
        max_body_bytes=h.max_body_bytes,
        token=h.token.get_secret_value() if h.token is not None else None,
        metrics_auth=h.metrics_auth,
        ssl_context=server_ssl_context(tls.cert_file, tls.key_file, tls.client_ca_file)
        if tls.cert_file is not None and tls.key_file is not None else None,
    )
    return Runtime(
        settings=settings, process_env=env, metrics=metrics, identity=identity, topics=topics,
        view=view, mqtt=mqtt, executor=executor, bank=bank, uplink_feeder=uplink_feeder,
        telemetry=telemetry, pipeline=pipeline, task_log=task_log, status=status, http=http,
        notifier=Notifier(env),
        # exits the process when the loop stalls and systemd's watchdog is not in charge
        stall_guard=stall_guard_for(settings, metrics=metrics, env=env),
        recorder=recorder,
    )


def trace_sinks(task_log: TaskLog, recorder: Recorder | None) -> tuple[TraceSink, ...]:
    """Who gets each finished task's trace: the recent-task store unless it is off
    (`http.recent_tasks_bytes: 0`), the recorder when recording. With neither, the pipeline
    encodes no trace at all."""
    store: tuple[TraceSink, ...] = (task_log,) if task_log.max_bytes > 0 else ()
    return store + ((recorder,) if recorder is not None else ())


def _cluster_view(settings: Settings, metrics: Metrics) -> ClusterView:
    t = settings.telemetry
    refused = metrics.telemetry_rejected.labels(reason="neighbour_limit")
    return ClusterView(local_id=settings.node_id, params=ViewParams(
        interval_s=t.interval_s, suspect_after_intervals=t.suspect_after_intervals,
        offline_after_intervals=t.offline_after_intervals, max_devices=t.max_devices,
        device_ttl_s=t.device_ttl_s, max_nodes=t.max_neighbours,
    ), on_refused=lambda _node_id: refused.inc())


def _telemetry_stage(
    s: Settings,
    *,
    identity: Identity,
    topics: Topics,
    view: ClusterView,
    metrics: Metrics,
    mqtt: MqttClient,
    load: Callable[[], Load],
    on_device: Callable[[str, Mapping[str, float], float], None] | None,
    on_announcement: Callable[[str, NodeAnnouncement], None],
    on_rtt: Callable[[str, float, float], object] | None = None,
) -> TelemetryStage:
    p = s.power
    return TelemetryStage(
        identity=identity, topics=topics, view=view, metrics=metrics, mqtt=mqtt,
        interval_s=s.telemetry.interval_s, max_payload_bytes=s.telemetry.max_payload_bytes,
        mappings=s.devices.mappings, load=load,
        power=PowerModel(idle_w=p.idle_w, busy_w=p.busy_w, tx_w=p.tx_w, rx_w=p.rx_w),
        battery_device=p.battery_device, on_device=on_device,
        max_fanout_rate=s.telemetry.max_fanout_rate,
        on_announcement=on_announcement, on_rtt=on_rtt,
        observe=s.role == "edge", max_clock_skew_s=s.security.max_clock_skew_s,
    )


def snapshot_source(view: ClusterView, telemetry: TelemetryStage, bank: EstimatorBank,
                    max_candidates: int) -> SnapshotSource:
    """A consistent `ClusterSnapshot` for each decision: this node now, and the view's
    neighbours, at most `max_candidates` of them (core/shortlist.py), chosen for the task
    being decided when one is given."""
    shortlist = Shortlist(view, max_candidates=max_candidates,
                          rtt_of=lambda node_id, now: bank.link(node_id, now).rtt_s)

    def snapshot(task: TaskSpec | None = None) -> ClusterSnapshot:
        now = time.monotonic()
        exec_of = None if task is None else exec_means(task, bank, now)
        return ClusterSnapshot(now=now, local=telemetry.local_state(now),
                               neighbours=shortlist.neighbours(now, exec_of))

    return snapshot


def speed_feeder(bank: EstimatorBank) -> Callable[[str, NodeAnnouncement], None]:
    """A neighbour's announced speed scales its execution priors until its own times are
    measured, so a faster neighbour is tried before any task has run there."""

    def feed(node_id: str, doc: NodeAnnouncement) -> None:
        speeds = bank.speeds
        # bounded like the view's node table: ids beyond it are not remembered
        if doc.speed is not None and (node_id in speeds or len(speeds) < MAX_SPEEDS):
            bank.set_speed(node_id, doc.speed)

    return feed


def components(rt: Runtime) -> list[AbstractAsyncContextManager[Any]]:
    """THE list of the node's components, entered in order and exited in reverse.

    On stop, `run()` first drains the task pipeline (`TaskPipeline.drain()`:
    intake refuses new work, queued tasks are answered, running ones get `shutdown.grace_s`,
    every reply is flushed) while HTTP and MQTT still carry the replies; then the list is
    exited in reverse: HTTP (its handlers have their replies by then), the pipeline, telemetry,
    MQTT (which publishes the offline state and disconnects), the stall guard and the systemd
    notifier.
    MQTT is the exception to "entered in order": `run()` connects it once the components
    before HTTP have entered (and subscribed), and an edge node's HTTP waits up to
    FIRST_CONNECT_WAIT_S for that first connection (see `_connect_mqtt`).
    Add a component by constructing it in `build_runtime` with what it uses, adding it to
    `Runtime`, and listing it here at the right place.
    """
    return [
        rt.notifier,  # watchdog pings from the event loop
        rt.stall_guard,
        rt.mqtt,  # owns the connection; reconnects in the background
        rt.telemetry,  # the single writer of the cluster view
        *([rt.recorder] if rt.recorder is not None else []),  # written to until the drain ends
        rt.pipeline,  # intake -> decide -> dispatch -> reply -> feedback
        rt.http,  # last in, first out: the API goes away before anything it reads
    ]


async def _connect_mqtt(rt: Runtime, stop: asyncio.Future[Any]) -> bool:
    """Start the MQTT connection (every subscription is registered by now). An edge node
    gives the first connection up to FIRST_CONNECT_WAIT_S before its HTTP API opens, so
    `/healthz` answering normally means the node's subscriptions are in place; with the
    broker away the API opens anyway."""
    await rt.mqtt.__aenter__()
    if rt.settings.role == "edge":
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_CONNECT_WAIT_S):
                await _first(rt.mqtt.wait_connected(), asyncio.shield(stop))
    return True


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until the first of `aws` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(
    settings: Settings,
    shutdown_trigger: Awaitable[None],
    *,
    registry: CollectorRegistry | None = None,
    process_env: ProcessEnvironment | None = None,
    runtime_hook: Callable[[Runtime], None] | None = None,
    reload_settings: Callable[[], Settings] | None = None,
    freeze_startup: bool = False,
) -> int:
    """Run the node until `shutdown_trigger` completes; returns the exit code.

    `runtime_hook(rt)` is called with the built object graph before anything starts (tests
    and embedding programs use it to reach the components; the graph is not to be changed).
    With `reload_settings` (a function reading the config again), SIGHUP reloads what can
    change while running (node/reload.py); without it SIGHUP keeps its default.
    With `freeze_startup` (the daemon's own process, not a program embedding the node), once
    ready every object built so far (modules, settings, the object graph) is moved where the
    garbage collector never walks again (`gc.freeze()`): in a busy node each full collection
    walked them all, ~60,000 objects, a 24-63 ms pause every few seconds at 2,000 tasks/s
    (10-15 ms without them; docs/scaling.md).
    """
    try:
        rt = build_runtime(settings, registry=registry, process_env=process_env)
    except BaseException:
        if inspect.iscoroutine(shutdown_trigger):  # never awaited: no "never awaited" warning
            shutdown_trigger.close()
        raise
    if runtime_hook is not None:
        runtime_hook(rt)
    loop = asyncio.get_running_loop()
    if reload_settings is not None:
        reloader = reloader_for(rt)
        load = reload_settings
        loop.add_signal_handler(signal.SIGHUP, lambda: reloader.reload(load))
    stop = asyncio.ensure_future(shutdown_trigger)
    try:
        async with AsyncExitStack() as stack:
            parts = components(rt)
            connected = False
            for component in parts:
                if component is rt.mqtt:
                    # MQTT exits in its place (after everything that replies over it) but
                    # connects only once every component has subscribed: on a persistent
                    # session the broker delivers what it queued for us right after CONNACK,
                    # and a message that no subscription matches yet would be lost.
                    stack.push_async_exit(component)
                    continue
                if component is rt.http and not connected:
                    connected = await _connect_mqtt(rt, stop)
                await stack.enter_async_context(component)
            if not connected:
                await _connect_mqtt(rt, stop)
            if settings.role == "edge":  # a cloud node never waits for the broker
                await _first(rt.mqtt.wait_connected(), asyncio.shield(stop))
            if not stop.done():
                if freeze_startup:
                    gc.collect()
                    gc.freeze()
                rt.notifier.ready(f"node {rt.identity.node_id} serving on {rt.http.base_url}")
                log.info("node %s (%s, incarnation %d) ready", rt.identity.node_id,
                         rt.identity.role, rt.identity.incarnation)
            await stop
            log.info("shutting down: running tasks get up to %gs (shutdown.grace_s)",
                     settings.shutdown.grace_s)
            rt.notifier.stopping()
            # Drain before any component exits: the replies still need HTTP and MQTT.
            await rt.pipeline.drain(settings.shutdown.grace_s)
    finally:
        stop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stop
        if reload_settings is not None:
            loop.remove_signal_handler(signal.SIGHUP)
    log.info("stopped")
    return 0


def reloader_for(rt: Runtime) -> Reloader:
    """The SIGHUP reload of this runtime: the parts it may swap are the pipeline's policy and
    per-task type settings, and logging (node/reload.py)."""
    node_id = rt.identity.node_id

    def apply_task_types(types: Mapping[str, Any]) -> None:
        rt.pipeline.set_task_types(types)  # refuses (changing nothing) a handler that fails
        rt.telemetry.set_task_types(tuple(sorted(rt.pipeline.type_names())))

    return Reloader(
        rt.settings, apply_policy=rt.pipeline.set_policy, apply_task_types=apply_task_types,
        apply_logging=lambda log_settings: setup_logging(
            log_settings.level, log_settings.format, node_id=node_id))


async def run_command(args: argparse.Namespace, shutdown_trigger: Awaitable[None]) -> int:
    """`edgesched run [--config PATH]`; SIGHUP reads the same file (and environment) again."""
    path = config_path_from_env(getattr(args, "config", None))

    def read() -> Settings:
        settings = load_settings(path)
        # --log-level/--log-format given on the command line outlive a reload
        flags = {"level": getattr(args, "log_level", None),
                 "format": getattr(args, "log_format", None)}
        flags = {k: v for k, v in flags.items() if v}
        if flags:
            settings = settings.model_copy(
                update={"log": settings.log.model_copy(update=flags)})
        return settings

    try:
        settings = read()
    except BaseException:
        if inspect.iscoroutine(shutdown_trigger):
            shutdown_trigger.close()
        raise
    setup_logging(settings.log.level, settings.log.format, node_id=settings.node_id)
    return await run(settings, shutdown_trigger, reload_settings=read, freeze_startup=True)
