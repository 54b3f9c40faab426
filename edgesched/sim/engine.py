"""The discrete-event engine: nodes with slots and FIFO queues, shared links, outages, energy.

One run = one policy over one task stream. Each edge node behaves like an edgesched daemon:
it decides where its own submissions run (through a `Brain`, which calls the same core code
the daemon calls), dispatches them, times out attempts, falls back, and learns from what it
observes. Neighbours execute what they are sent and reply; the cloud is a big, remote node.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from edgesched.core.fallback import Terminal
from edgesched.core.model import Outcome, Placement, PowerModel
from edgesched.core.probing import PROBE_CHECK_S, PROBE_EXCHANGES, PROBE_PINGS
from edgesched.core.view import NodeTelemetry
from edgesched.sim.brains import admit_here, task_spec
from edgesched.sim.links import (
    ECS_WAN_KBPS,
    ECS_WLAN_KBPS,
    ECS_WLAN_SPEEDUP,
    ClientCount,
    EmpiricalLink,
    Link,
    ManLink,
    ManQueue,
    Transfer,
    ecs_man_mean_bits,
)
from edgesched.sim.scenario import CLOUD_ID, Scenario
from edgesched.sim.vms import TimeSharedVm, pick_vm
from edgesched.sim.workload import TaskStream
from edgesched.sim.world import SimJob, SimNode, SimTask, World, exec_time

__all__ = ["Engine", "RunRecord", "SimJob", "SimNode", "SimTask", "World"]

WILL_DELAY_S = 15.0  # the broker publishes a dead node's Will after 1.5 x keepalive (10 s)


@dataclass(kw_only=True, slots=True)
class RunRecord:
    """Per-task results collected by a run, turned into the report by `report.py`."""

    latency: list[float] = field(default_factory=list)
    completed_in_time: int = 0
    placements: dict[str, int] = field(
        default_factory=lambda: {"local": 0, "neighbour": 0, "cloud": 0})
    failures: dict[str, int] = field(default_factory=dict)
    prediction_error: list[float] = field(default_factory=list)
    # per completed task: within the latency quantile its attempt was judged on
    covered: list[bool] = field(default_factory=list)

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


class _Probe:
    """An uplink probe under way: its payload, round trips, and the exchanges' times."""

    __slots__ = ("began", "incarnation", "nbytes", "node", "rtts", "seconds")

    def __init__(self, node: SimNode, incarnation: int, nbytes: int) -> None:
        self.node, self.incarnation, self.nbytes = node, incarnation, nbytes
        self.rtts: list[float] = []
        self.seconds: list[float] = []
        self.began = 0.0


class Engine:
    """Runs one policy over one task stream; `run()` returns the collected RunRecord."""

    def __init__(self, scenario: Scenario, stream: TaskStream,
                 make_brain: Callable[[SimNode, World], Any],
                 progress: Callable[[int], None] | None = None) -> None:
        self.scenario = scenario
        self.stream = stream
        self.now = 0.0
        # The event heap of (time, seq, fn, arg); links push their completions onto it.
        self.events: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self.seq = itertools.count()  # tie-breaker: events at the same time run in order
        self.record = RunRecord()
        self._progress = progress
        self._rows: list[tuple[int, int, float, float, float]] = []
        self._vm_pct: dict[str, tuple[float, ...]] = {}  # executor ecs_vms only
        self.nodes = [self._make_node(i, spec) for i, spec in enumerate(scenario.nodes)]
        self.by_id = {n.id: n for n in self.nodes}
        self.cloud: SimNode | None = None
        if scenario.cloud.enabled:
            c = scenario.cloud
            self.cloud = SimNode(index=len(self.nodes), id=CLOUD_ID, is_cloud=True,
                                 speed=c.speed, slots=c.slots, queue_size=1 << 30,
                                 power=PowerModel(idle_w=0, busy_w=0, tx_w=0, rx_w=0))
            self.by_id[CLOUD_ID] = self.cloud
        self.links: dict[tuple[str, str], Link] = {}
        # links.wlan.model ecs_empirical: each node's (upload, download) WLAN to its devices.
        self.wlan: dict[str, tuple[EmpiricalLink, EmpiricalLink]] = {}
        self._build_links()
        self.world = World(
            scenario=scenario, nodes=tuple(self.nodes), cloud=self.cloud, links=self.links,
            priors=tuple(t.prior_s if t.prior_s is not None else t.work.expected
                         for t in scenario.task_types))
        for node in self.nodes:
            node.brain = make_brain(node, self.world)  # the engine owns its nodes' brains

    # ---- construction -------------------------------------------------------------------
    def _make_node(self, index: int, spec: Any) -> SimNode:
        node = SimNode(
            index=index, id=spec.id, is_cloud=False, speed=spec.speed, slots=spec.slots,
            queue_size=spec.queue_size, power=spec.power,
            battery_capacity_j=spec.battery.capacity_j if spec.battery else None,
            battery_initial=spec.battery.initial if spec.battery else 1.0,
        )
        if spec.executor == "ecs_vms":  # EdgeCloudSim's time-shared VMs (sim/vms.py)
            vms = spec.vms or spec.slots
            node.vms = [TimeSharedVm(self, spec.slots // vms, spec.speed,
                                     partial(self._vm_done, node)) for _ in range(vms)]
            self._vm_pct[node.id] = tuple(  # each task type's nominal % of one VM
                t.vm_utilization_pct if t.vm_utilization_pct is not None
                else 100.0 * vms / spec.slots for t in self.scenario.task_types)
        return node

    def _build_links(self) -> None:
        """Links by the scenario's network models (`links.{wan,man,wlan}.model`); an
        EdgeCloudSim model's link has the same interface as the shared `Link`."""
        sc = self.scenario
        man = None
        if sc.man_model == "ecs_mm1":
            sizes = ecs_man_mean_bits(sc) or (None, None)
            man = (ManQueue(sc.links.bandwidth_bps, sizes[0]),
                   ManQueue(sc.links.bandwidth_bps, sizes[1]))
        for a in self.nodes:
            for b in self.nodes:
                if a is not b:
                    self.links[(a.id, b.id)] = (
                        Link(self, a, b, sc.links.rtt_s, sc.links.bandwidth_bps) if man is None
                        else ManLink(self, a, b, sc.links.rtt_s, *man))  # type: ignore[assignment]
            if sc.wlan_model == "ecs_empirical":
                air = ClientCount()
                self.wlan[a.id] = (
                    EmpiricalLink(self, a, a, 0.0, air, ECS_WLAN_KBPS, ECS_WLAN_SPEEDUP),
                    EmpiricalLink(self, a, a, 0.0, air, ECS_WLAN_KBPS, ECS_WLAN_SPEEDUP))
            if self.cloud is not None:
                up = sc.node(a.id).uplink or sc.cloud
                if sc.wan_model == "ecs_empirical":  # one client count per access point
                    clients = ClientCount()
                    self.links[(a.id, CLOUD_ID)] = EmpiricalLink(  # type: ignore[assignment]
                        self, a, self.cloud, up.rtt_s, clients, ECS_WAN_KBPS)
                    self.links[(CLOUD_ID, a.id)] = EmpiricalLink(  # type: ignore[assignment]
                        self, self.cloud, a, up.rtt_s, clients, ECS_WAN_KBPS)
                    continue
                self.links[(a.id, CLOUD_ID)] = Link(self, a, self.cloud, up.rtt_s,
                                                    up.bandwidth_bps)
                self.links[(CLOUD_ID, a.id)] = Link(self, self.cloud, a, up.rtt_s,
                                                    up.bandwidth_bps)

    def prior_exec(self, ttype: int) -> float:
        """Execution time at speed 1 the operator configured for a type (exec_prior_s)."""
        return self.world.prior_exec(ttype)

    # ---- event heap ---------------------------------------------------------------------
    def schedule(self, at: float, fn: Callable[[Any], None], arg: Any) -> None:
        heapq.heappush(self.events, (at, next(self.seq), fn, arg))

    def run(self) -> RunRecord:
        self._schedule_conditions()
        st = self.stream
        times = st.time.tolist()
        # Plain Python lists: indexing numpy arrays one scalar at a time is slow.
        self._rows = list(zip(st.origin.tolist(), st.ttype.tolist(), st.work.tolist(),
                              st.input_bytes.tolist(), st.output_bytes.tolist(), strict=True))
        heap = self.events
        pop = heapq.heappop
        arrive, progress = self._arrive, self._progress
        # Arrivals in order, each after the events due strictly before it (an event at the
        # same instant runs after the arrival) ...
        for i, t in enumerate(times):
            while heap and heap[0][0] < t:
                at, _, fn, arg = pop(heap)
                self.now = at
                fn(arg)
            self.now = t
            arrive(i)
            if progress is not None and (i + 1) % 4096 == 0:
                progress(i + 1)
        # ... then what is left, up to the horizon (telemetry ticks stop once work is done).
        horizon = self._horizon
        while heap:
            at, _, fn, arg = pop(heap)
            if at > horizon:
                break
            self.now = at
            fn(arg)
        self._finish_leftovers()
        return self.record

    def _schedule_conditions(self) -> None:
        sc = self.scenario
        # Telemetry ticks keep going a while past the last arrival so every task drains.
        self._horizon = sc.duration_s * 4 + 600.0
        interval = sc.telemetry_interval_s
        for node in self.nodes:
            phase = interval * (node.index + 0.5) / max(1, len(self.nodes))
            self.schedule(phase, self._telemetry_tick, node)
            for out in sc.node(node.id).down:
                self.schedule(out.at_s, self._node_down, node)
                self.schedule(out.at_s + out.for_s, self._node_up, node)
        for ev in sc.events:
            self.schedule(ev.at_s, self._link_event, ev)
        if self.cloud is not None:
            for node in self.nodes:
                up = sc.node(node.id).uplink
                if up is not None and up.monitor_every_s:
                    self.schedule(up.monitor_every_s, self._uplink_reading, node)
                if sc.cloud.probe_interval_s > 0 and node.brain.probes_uplink:
                    self.schedule(PROBE_CHECK_S * (node.index + 0.5) / len(self.nodes),
                                  self._probe_check, node)

    def _finish_leftovers(self) -> None:
        for node in self.nodes:
            for task in list(node.pending):
                self._fail(task, "unfinished")

    # ---- conditions ---------------------------------------------------------------------
    def _link_event(self, ev: Any) -> None:
        for key in ((ev.node, ev.to), (ev.to, ev.node)):
            link = self.links.get(key)
            if link is not None:
                link.set_state(ev.rtt_s, ev.bandwidth_bps)

    def _uplink_reading(self, node: SimNode) -> None:
        """The node's modem reports its uplink's current capacity and RTT (device telemetry)."""
        every = self.scenario.node(node.id).uplink.monitor_every_s  # type: ignore[union-attr]
        if self.now < self._horizon and self._live_work():
            self.schedule(self.now + float(every or 1.0), self._uplink_reading, node)
        if node.alive:
            link = self.links[(node.id, CLOUD_ID)]
            node.brain.uplink_reading(link.bandwidth_bps, link.rtt_s, self.now)

    def _probe_check(self, node: SimNode) -> None:
        """The node's daemon asks whether its uplink is due a probe (core/probing.py)."""
        if self.now < self._horizon and (node.pending or self._live_work()):
            self.schedule(self.now + PROBE_CHECK_S, self._probe_check, node)
        size = node.brain.probe_due(self.now) if node.alive else None
        if size is not None:
            self._probe_ping(_Probe(node, node.incarnation, size))

    def _probe_ping(self, probe: _Probe) -> None:
        """The probe's requests go one after the other, as the daemon sends them: the round
        trips carry no payload and take the link's RTT at the time; each exchange is a
        transfer sharing the uplink with the tasks on it, then a round trip."""
        node = probe.node
        if not node.alive or node.incarnation != probe.incarnation:
            return  # lost with the node; a restarted node starts a new prober
        link = self.links[(node.id, CLOUD_ID)]
        if len(probe.rtts) < PROBE_PINGS:
            probe.rtts.append(link.rtt_s)
            self.schedule(self.now + link.rtt_s, self._probe_ping, probe)
            return
        probe.began = self.now
        link.start(8.0 * probe.nbytes, self._probe_sent, probe)

    def _probe_sent(self, tr: Transfer) -> None:
        probe: _Probe = tr.payload
        link = self.links[(probe.node.id, CLOUD_ID)]
        self.schedule(self.now + link.rtt_s, self._probe_answered, probe)

    def _probe_answered(self, probe: _Probe) -> None:
        probe.seconds.append(self.now - probe.began)
        if len(probe.seconds) < PROBE_EXCHANGES:
            self._probe_ping(probe)
            return
        node = probe.node
        if not node.alive or node.incarnation != probe.incarnation:
            return
        node.brain.probed(probe.rtts, probe.nbytes, probe.seconds, self.now)

    def _telemetry_tick(self, node: SimNode) -> None:
        if self.now < self._horizon and (node.pending or self._live_work()):
            self.schedule(self.now + self.scenario.telemetry_interval_s,
                          self._telemetry_tick, node)
        level = node.battery_level(self.now)
        if node.alive and level is not None and level <= 0.0:
            node.dead_battery = True
            self._node_down(node)
            return
        if node.alive:
            tel = self._telemetry_of(node, level)
            for other in self.nodes:
                if other is not node and other.alive:
                    other.brain.telemetry(node, tel, self.now)

    def _telemetry_of(self, node: SimNode, battery: float | None) -> NodeTelemetry:
        """What the node publishes (contract §4.2): its load as it knows it, right now."""
        interval = self.scenario.telemetry_interval_s
        busy = node.busy_s + sum(self.now - job.start for job in node.running)
        util = (busy - node.busy_mark) / (interval * node.slots)
        node.busy_mark = busy
        return NodeTelemetry(
            incarnation=node.incarnation, cpu_util=min(1.0, max(0.0, util)),
            running=len(node.running), queued=len(node.queue), slots=node.slots,
            est_wait_s=node.est_wait_s(self.now), battery=battery,
        )

    def _live_work(self) -> bool:
        return any(n.pending for n in self.nodes) or self._arrivals_left()

    def _arrivals_left(self) -> bool:
        return bool(self.stream.time.shape[0]) and self.now < float(self.stream.time[-1])

    def _node_down(self, node: SimNode) -> None:
        if not node.alive:
            return
        node.alive = False
        node.incarnation += 1  # work in flight to or from the old incarnation is lost
        for job in node.running:
            node.energy_j += node.power.compute_energy_j(self.now - job.start)
        node.running.clear()
        node.wait_cache = None
        node.queue.clear()
        for vm in node.vms or ():
            vm.clear()
        for task in list(node.pending):
            self._fail(task, "origin_down")
        # The broker publishes the Will of the incarnation that died; the node's next start
        # is a new incarnation (`node.incarnation` was bumped above).
        self.schedule(self.now + WILL_DELAY_S, self._will, (node, node.incarnation - 1))

    def _will(self, info: tuple[SimNode, int]) -> None:
        node, incarnation = info
        for other in self.nodes:
            if other.alive and other is not node:
                other.brain.announce(node, online=False, now=self.now, incarnation=incarnation)

    def _node_up(self, node: SimNode) -> None:
        if node.alive or node.dead_battery:
            return
        node.alive = True
        node.brain.restarted(self.now)
        for other in self.nodes:
            if other is not node and other.alive:
                other.brain.announce(node, online=True, now=self.now)
                # ... and it receives the others' retained state documents on subscribing.
                node.brain.announce(other, online=True, now=self.now)

    # ---- task life cycle ----------------------------------------------------------------
    def _arrive(self, i: int) -> None:
        origin_index, ttype, work, in_bytes, out_bytes = self._rows[i]
        origin = self.nodes[origin_index]
        tt = self.scenario.task_types[ttype]
        deadline = None if tt.deadline_s is None else self.now + tt.deadline_s
        task = SimTask(i, self.now, origin, ttype, work, in_bytes, out_bytes, deadline)
        if not origin.alive:
            self._fail(task, "origin_down")
            return
        task.spec = task_spec(self.scenario, task)
        origin.pending.add(task)
        task.decision = origin.brain.decide(task, self.now)
        chosen = task.decision.chosen
        if self.wlan and chosen is not None and chosen.placement is not Placement.CLOUD:
            # EdgeCloudSim's WLAN hop: the device uploads the input to its access point
            # first (a cloud task goes straight onto the WAN).
            self.wlan[origin.id][0].start(task.in_bits, self._wlan_uploaded, task,
                                          lost=self._wlan_lost)
            return
        self._next_attempt(task)

    def _wlan_uploaded(self, tr: Transfer) -> None:
        task = tr.payload
        if not task.done:
            self._next_attempt(task)

    def _wlan_lost(self, tr: Transfer) -> None:
        task = tr.payload[0] if isinstance(tr.payload, tuple) else tr.payload
        self._fail(task, "wlan_failed")  # EdgeCloudSim: failed due to bandwidth (WLAN)

    def _wlan_downloaded(self, tr: Transfer) -> None:
        task, node = tr.payload
        if not task.done:
            self._record(task, node)

    def _next_attempt(self, task: SimTask) -> None:
        """Ask the core's fallback chain what to try next, as the daemon does."""
        step = task.origin.brain.next_attempt(task, self.now)
        if isinstance(step, Terminal):
            self._fail(task, _failure_bucket(step, task))
            return
        target = step.target
        node = self.by_id[target.node_id]
        task.tried.append(node.id)
        task.attempt += 1
        task.token += 1
        task.started = self.now
        task.predicted = target.latency_mean_s
        task.target = target
        task.sent_token = task.origin.brain.dispatched(node.id, self.now, target.latency_q_s)
        if node is task.origin:
            if not self._admit(node, task, task.token):
                task.reason = Outcome.REJECTED
                self._next_attempt(task)
            return
        link = self.links[(task.origin.id, node.id)]
        token = task.token
        tr = link.start(task.in_bits, self._input_sent, (task, token, node,
                                                        task.origin.incarnation, link))
        self.schedule(self.now + step.timeout_s, self._timeout, (task, token, node, tr, link))

    def _input_sent(self, tr: Transfer) -> None:
        task, token, node, origin_inc, link = tr.payload
        now = self.now
        self.schedule(now + link.rtt_s / 2.0, self._input_arrived,
                      (task, token, node, origin_inc))

    def _input_arrived(self, info: tuple[SimTask, int, SimNode, int]) -> None:
        task, token, node, origin_inc = info
        if not node.alive or task.origin.incarnation != origin_inc:
            return  # lost: the origin's attempt timeout will notice
        if not self._admit(node, task, token):
            rtt = self.links[(node.id, task.origin.id)].rtt_s
            self.schedule(self.now + rtt / 2.0, self._rejected, (task, token, node))

    def _rejected(self, info: tuple[SimTask, int, SimNode]) -> None:
        task, token, node = info
        if task.done or token != task.token or not task.origin.alive:
            return
        task.origin.brain.settled(node.id, task.sent_token, self.now)
        task.reason = Outcome.REJECTED
        self._next_attempt(task)

    def _timeout(self, info: tuple[SimTask, int, SimNode, Transfer, Link]) -> None:
        task, token, node, tr, link = info
        if task.done or token != task.token:
            return
        link.cancel(tr)  # stop sending what nobody awaits
        task.origin.brain.gave_up(node.id, task.sent_token, self.now)
        task.reason = Outcome.TIMEOUT
        self._next_attempt(task)

    # ---- execution ----------------------------------------------------------------------
    def _admit(self, node: SimNode, task: SimTask, token: int) -> bool:
        """The target's admission control (the core's), then a slot or the FIFO queue."""
        est, est_std = self._own_estimate(node, task)
        if node.vms is not None:
            return self._admit_to_vm(node, task, token, est)
        if not admit_here(node, task, est, self.now):
            return False
        job = SimJob(task, token, exec_time(task, node))
        job.start = self.now  # queued since; replaced when it starts running
        job.est, job.est_std = est, est_std
        if len(node.running) < node.slots:
            self._start(node, job)
        else:
            node.queue.append(job)
            node.wait_cache = None
        return True

    def _admit_to_vm(self, node: SimNode, task: SimTask, token: int, est: float) -> bool:
        """EdgeCloudSim's admission: the VM the decision bound the task to, or else the
        least-loaded VM with room for the task's nominal utilisation, takes it at once; no
        VM with room = refused (no queue)."""
        pct = self._vm_pct[node.id][task.ttype]
        vms = node.vms or []
        if task.vm is not None and task.vm in vms:
            vm = task.vm  # bound when decided (EdgeCloudSim): no second capacity check
        else:
            vm = pick_vm(vms, pct)
            if vm is None:
                return False
        job = SimJob(task, token, exec_time(task, node))
        job.start = self.now
        job.est = est
        node.running.append(job)
        node.wait_cache = None
        vm.add(job, task.work, pct)
        return True

    def _vm_done(self, node: SimNode, job: SimJob) -> None:
        """A task finished on one of the node's VMs: it took what time sharing gave it."""
        job.exec_s = self.now - job.start
        self._exec_done((node, job, node.incarnation))

    def _own_estimate(self, node: SimNode, task: SimTask) -> tuple[float, float]:
        """The executing node's own estimate of the task's run time there, and its spread
        (the cloud tier learns a mean per type only)."""
        if node.is_cloud:
            return node.own_estimate(task.ttype, self.prior_exec(task.ttype) / node.speed), 0.0
        ex = node.brain.own_exec_estimate(task, self.now)
        return ex.mean_s, ex.std_s

    def _start(self, node: SimNode, job: SimJob) -> None:
        job.wait_s = self.now - job.start
        job.start = self.now
        node.running.append(job)
        node.wait_cache = None
        self.schedule(self.now + job.exec_s, self._exec_done, (node, job, node.incarnation))

    def _exec_done(self, info: tuple[SimNode, SimJob, int]) -> None:
        node, job, inc = info
        if inc != node.incarnation:
            return  # the node went down meanwhile; the job was lost
        node.running.remove(job)
        node.wait_cache = None
        node.busy_s += job.exec_s
        task = job.task
        if node.is_cloud:  # the cloud tier's executor learns its own speed too
            prev = node.exec_mean.get(task.ttype)
            node.exec_mean[task.ttype] = job.exec_s if prev is None else (
                prev + 0.1 * (job.exec_s - prev))
        else:
            node.energy_j += node.power.compute_energy_j(job.exec_s)
            node.brain.executed(task.spec.task_type, task.spec.work, job.exec_s, self.now)
        while node.queue and len(node.running) < node.slots:
            self._start(node, node.queue.popleft())
        wait = job.wait_s
        if node is task.origin:
            self._complete(task, job.token, node, job.exec_s, wait)
            return
        link = self.links[(node.id, task.origin.id)]
        link.start(task.out_bits, self._output_sent, (task, job, node, inc, wait, link))

    def _output_sent(self, tr: Transfer) -> None:
        task, job, node, inc, wait, link = tr.payload
        self.schedule(self.now + link.rtt_s / 2.0, self._output_arrived,
                      (task, job, node, inc, wait, task.origin.incarnation))

    def _output_arrived(self, info: tuple[SimTask, SimJob, SimNode, int, float, int]) -> None:
        task, job, node, inc, wait, origin_inc = info
        if node.incarnation != inc or task.origin.incarnation != origin_inc:
            return  # sender died mid-reply, or the origin restarted: the reply is lost
        self._complete(task, job.token, node, job.exec_s, wait)

    def _complete(self, task: SimTask, token: int, node: SimNode, exec_s: float,
                  wait_s: float) -> None:
        """The reply to the current attempt: `node` queued the task `wait_s` and ran it in
        `exec_s` (what a reply tells a daemon, next to the round trip it timed itself)."""
        if task.done or token != task.token:
            return  # the attempt was abandoned (timed out): the daemon ignores its reply
        task.origin.brain.settled(node.id, task.sent_token, self.now)
        task.origin.brain.observed(task, node, exec_s, wait_s, self.now)
        if self.wlan and not node.is_cloud:
            # The result reaches the device over its access point's WLAN; the attempt is
            # over (a late timeout or reply of it is ignored).
            task.token += 1
            self.wlan[task.origin.id][1].start(task.out_bits, self._wlan_downloaded,
                                               (task, node), lost=self._wlan_lost)
            return
        self._record(task, node)

    def _record(self, task: SimTask, node: SimNode) -> None:
        """The task's result is back where it was submitted: count it."""
        task.done = True
        task.origin.pending.discard(task)
        latency = self.now - task.arrival
        out = self.record
        out.latency.append(latency)
        if task.deadline is None or self.now <= task.deadline + 1e-9:
            out.completed_in_time += 1
        if node.is_cloud:
            placement = Placement.CLOUD
        elif node is task.origin:
            placement = Placement.LOCAL
        else:
            placement = Placement.NEIGHBOUR
        out.placements[placement.value] += 1
        out.prediction_error.append(self.now - task.started - task.predicted)
        if task.target is not None:
            out.covered.append(self.now - task.started <= task.target.latency_q_s)
            task.origin.brain.calibrate(task.target, self.now - task.started)

    def _fail(self, task: SimTask, reason: str) -> None:
        if task.done:
            return
        task.done = True
        task.origin.pending.discard(task)
        self.record.fail(reason)



def _failure_bucket(step: Terminal, task: SimTask) -> str:
    """A short, bounded failure label for the report (the core's reason text is detailed)."""
    if step.outcome is Outcome.EXPIRED:
        return "expired"
    if step.reason.startswith("gave up"):
        return "max_attempts"
    if step.reason.startswith("all targets failed"):  # the last attempt's fate says why
        if task.reason is Outcome.REJECTED:
            return "rejected"
        return "timed_out" if task.reason is Outcome.TIMEOUT else "failed"
    return "no_feasible_target"
