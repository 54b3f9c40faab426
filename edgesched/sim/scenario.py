"""Simulator scenarios: the YAML format of contract §5, validated into frozen dataclasses."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from edgesched.config import PolicySettings
from edgesched.core.costmodel import CostParams
from edgesched.core.model import OffloadPolicy, PowerModel
from edgesched.errors import ScenarioError


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1.0e7` (no exponent sign) as a string; scenarios mean a number."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)

NODE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CLOUD_ID = "cloud"
DIST_KINDS = ("fixed", "exponential", "lognormal", "uniform")
PROCESSES = ("poisson", "bursty")
# Network models per kind of link (docs/simulator.md, "EdgeCloudSim's network models").
WAN_MODELS = ("shared", "ecs_empirical")
MAN_MODELS = ("shared", "ecs_mm1")
WLAN_MODELS = ("none", "ecs_empirical")
EXECUTORS = ("slots", "ecs_vms")

# ---------------------------------------------------------------------------------------------
# Distributions


@dataclass(frozen=True, kw_only=True, slots=True)
class Dist:
    """A non-negative random quantity: fixed, exponential, lognormal (mean, cv) or uniform."""

    kind: str
    value: float = 0.0  # fixed
    mean: float = 0.0  # exponential, lognormal
    cv: float = 0.0  # lognormal
    low: float = 0.0  # uniform
    high: float = 0.0

    @property
    def expected(self) -> float:
        if self.kind == "fixed":
            return self.value
        if self.kind == "uniform":
            return (self.low + self.high) / 2.0
        return self.mean

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, self.value, dtype=float)
        if self.kind == "exponential":
            return rng.exponential(self.mean, n) if self.mean > 0 else np.zeros(n)
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high, n)
        if self.cv == 0 or self.mean == 0:
            return np.full(n, self.mean, dtype=float)
        sigma2 = math.log1p(self.cv * self.cv)  # lognormal with the given mean and cv
        mu = math.log(self.mean) - sigma2 / 2.0
        return rng.lognormal(mu, math.sqrt(sigma2), n)


# ---------------------------------------------------------------------------------------------
# Scenario parts


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkSpec:
    rtt_s: float
    bandwidth_bps: float
    # A device (modem, LTE router) reporting this uplink's bandwidth and RTT every so often,
    # as device telemetry (`uplink_bps`, `rtt_s`); None = no such device.
    monitor_every_s: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CloudSpec:
    rtt_s: float = 0.08
    bandwidth_bps: float = 2.0e7
    speed: float = 8.0
    slots: int = 64
    cost_per_task: float = 0.0
    enabled: bool = True
    # the nodes' cloud.probe_interval_s: quiet time before a degraded uplink is probed
    # (core/probing.py); 0 = never
    probe_interval_s: float = 10.0


@dataclass(frozen=True, kw_only=True, slots=True)
class Outage:
    at_s: float
    for_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class BatterySpec:
    capacity_j: float
    initial: float = 1.0


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeSpec:
    id: str
    speed: float = 1.0
    slots: int = 1
    queue_size: int = 256
    power: PowerModel = field(default_factory=PowerModel)
    battery: BatterySpec | None = None
    uplink: LinkSpec | None = None
    down: tuple[Outage, ...] = ()
    vms: int | None = None  # EdgeCloudSim VMs on this server (ecs_* utilisation); None = slots
    executor: str = "slots"  # or "ecs_vms": `vms` time-shared VMs of slots/vms cores (vms.py)


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskTypeSpec:
    name: str
    work: Dist
    input_bytes: Dist
    output_bytes: Dist
    deadline_s: float | None = None
    offload: OffloadPolicy = OffloadPolicy.ANYWHERE
    prior_s: float | None = None  # the operator's configured exec_prior_s; default work mean
    # The daemon knows each task's execution time from its input (e.g. `sleep`): its work at
    # speed 1 is the exact estimate (a replayed recording's `exact_s`).
    exact: bool = False
    # EdgeCloudSim's nominal `vm_utilization_on_edge` of one such task, in % of a VM (read by
    # the ecs_* rules' utilisation probe); None = a whole VM's share of one slot.
    vm_utilization_pct: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ArrivalSpec:
    node: str
    type: str
    process: str
    rate_per_s: float
    burst_rate_per_s: float = 0.0
    burst_every_s: float = 0.0
    burst_for_s: float = 0.0
    burst_offset_s: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class DeviceApp:
    """One EdgeCloudSim application: `share` % of the devices run it; each generates tasks
    of `type` every `interarrival_s` on average (Poisson) while active, `active_s` on then
    `idle_s` off (EdgeCloudSim's IdleActiveLoadGenerator)."""

    type: str
    share: float
    interarrival_s: float
    active_s: float
    idle_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class DevicesSpec:
    """Mobile devices as EdgeCloudSim's sample_app2 models them (the `devices:` block): each
    picks one app, is attached to one edge node at a time and moves (nomadic mobility: it
    stays an exponential time of mean `dwell_s[node]` at a node, then moves to another node
    drawn uniformly). Its tasks are submitted to the node it is attached to."""

    count: int
    apps: tuple[DeviceApp, ...]
    start_s: float = 0.0  # no device generates tasks before (EdgeCloudSim: 10 s)
    dwell_s: tuple[tuple[str, float], ...] = ()  # () = devices never move


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkEvent:
    at_s: float
    node: str
    to: str  # "cloud" or a node id
    rtt_s: float | None
    bandwidth_bps: float | None


@dataclass(frozen=True, kw_only=True, slots=True)
class Scenario:
    """A validated scenario; build it with `load_scenario`."""

    name: str
    duration_s: float
    seed: int
    cloud: CloudSpec
    links: LinkSpec
    nodes: tuple[NodeSpec, ...]
    task_types: tuple[TaskTypeSpec, ...]
    arrivals: tuple[ArrivalSpec, ...]
    events: tuple[LinkEvent, ...] = ()
    policy_params: CostParams = field(default_factory=CostParams)
    telemetry_interval_s: float = 1.0
    description: str = ""
    devices: DevicesSpec | None = None
    wan_model: str = "shared"  # links.wan.model
    man_model: str = "shared"  # links.man.model
    wlan_model: str = "none"  # links.wlan.model

    def node(self, node_id: str) -> NodeSpec:
        return next(n for n in self.nodes if n.id == node_id)

    def task_type(self, name: str) -> TaskTypeSpec:
        return next(t for t in self.task_types if t.name == name)


# ---------------------------------------------------------------------------------------------
# Validation: every problem is collected as (dotted.key, message), then raised at once.


class _Checker:
    """Collects problems while reading a plain mapping; each getter returns a safe value."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, key: str, message: str) -> None:
        self.problems.append((key, message))

    def mapping(self, data: Any, key: str, allowed: Sequence[str]) -> Mapping[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            self.fail(key, "must be a mapping")
            return {}
        for extra in data:
            if extra not in allowed:
                self.fail(_join(key, str(extra)), "unknown key")
        return data

    def number(
        self,
        data: Mapping[str, Any],
        key: str,
        name: str,
        default: float | None = None,
        *,
        minimum: float | None = None,
        positive: bool = False,
        maximum: float | None = None,
        required: bool = False,
    ) -> float:
        dotted = _join(key, name)
        value = data.get(name)
        if value is None:
            if required or default is None:
                self.fail(dotted, "is required")
                return 1.0
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(dotted, f"must be a number, got {type(value).__name__}")
            return default if default is not None else 1.0
        number = float(value)
        if not math.isfinite(number):
            self.fail(dotted, "must be finite")
        elif positive and number <= 0:
            self.fail(dotted, "must be > 0")
        elif minimum is not None and number < minimum:
            self.fail(dotted, f"must be >= {minimum:g}")
        elif maximum is not None and number > maximum:
            self.fail(dotted, f"must be <= {maximum:g}")
        else:
            return number
        return default if default is not None else 1.0

    def integer(
        self, data: Mapping[str, Any], key: str, name: str, default: int, *, minimum: int
    ) -> int:
        dotted = _join(key, name)
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(dotted, "must be an integer")
            return default
        if value < minimum:
            self.fail(dotted, f"must be >= {minimum}")
            return default
        return value

    def identifier(self, data: Mapping[str, Any], key: str, name: str) -> str:
        dotted = _join(key, name)
        value = data.get(name)
        if not isinstance(value, str) or not NODE_ID_RE.match(value):
            self.fail(dotted, "is required and must match [A-Za-z0-9_-]{1,64}")
            return f"?{key}"
        return value

    def items(self, data: Any, key: str, *, required: bool = False) -> list[tuple[str, Any]]:
        if data is None:
            if required:
                self.fail(key, "is required (a non-empty list)")
            return []
        if not isinstance(data, list):
            self.fail(key, "must be a list")
            return []
        if required and not data:
            self.fail(key, "must not be empty")
        return [(f"{key}.{i}", item) for i, item in enumerate(data)]


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _dist(c: _Checker, raw: Any, key: str) -> Dist:
    if raw is None:
        c.fail(key, "is required (a number or {dist: ...})")
        return Dist(kind="fixed", value=0.0)
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        if not (math.isfinite(float(raw)) and raw >= 0):
            c.fail(key, "must be a finite number >= 0")
            return Dist(kind="fixed", value=0.0)
        return Dist(kind="fixed", value=float(raw))
    data = c.mapping(raw, key, ("dist", "value", "mean", "cv", "low", "high"))
    kind = data.get("dist")
    if kind not in DIST_KINDS:
        c.fail(_join(key, "dist"), f"must be one of {', '.join(DIST_KINDS)}")
        return Dist(kind="fixed", value=0.0)
    needed = {"fixed": ("value",), "exponential": ("mean",), "lognormal": ("mean", "cv"),
              "uniform": ("low", "high")}[kind]
    for extra in set(data) - {"dist", *needed}:
        c.fail(_join(key, extra), f"does not apply to dist {kind}")
    values = {name: c.number(data, key, name, minimum=0.0, required=True) for name in needed}
    if kind == "uniform" and values["high"] < values["low"]:
        c.fail(_join(key, "high"), "must be >= low")
    return Dist(kind=kind, **values)


def _link(c: _Checker, raw: Any, key: str, default: LinkSpec | None, *,
          monitor: bool = False) -> LinkSpec:
    keys = ("rtt_s", "bandwidth_bps", "monitor_every_s") if monitor else ("rtt_s",
                                                                        "bandwidth_bps")
    data = c.mapping(raw, key, keys)
    d = default or LinkSpec(rtt_s=0.004, bandwidth_bps=1e8)
    every = data.get("monitor_every_s")
    return LinkSpec(
        rtt_s=c.number(data, key, "rtt_s", d.rtt_s, minimum=0.0),
        bandwidth_bps=c.number(data, key, "bandwidth_bps", d.bandwidth_bps, positive=True),
        monitor_every_s=None if every is None
        else c.number(data, key, "monitor_every_s", positive=True),
    )


def _cloud(c: _Checker, raw: Any) -> CloudSpec:
    if raw is False:
        return CloudSpec(enabled=False)
    data = c.mapping(raw, "cloud", ("rtt_s", "bandwidth_bps", "speed", "slots", "cost_per_task",
                                    "probe_interval_s"))
    d = CloudSpec()
    return CloudSpec(
        rtt_s=c.number(data, "cloud", "rtt_s", d.rtt_s, minimum=0.0),
        bandwidth_bps=c.number(data, "cloud", "bandwidth_bps", d.bandwidth_bps, positive=True),
        speed=c.number(data, "cloud", "speed", d.speed, positive=True),
        slots=c.integer(data, "cloud", "slots", d.slots, minimum=1),
        cost_per_task=c.number(data, "cloud", "cost_per_task", 0.0, minimum=0.0),
        probe_interval_s=c.number(data, "cloud", "probe_interval_s", d.probe_interval_s,
                                  minimum=0.0, maximum=60.0),  # as cloud.probe_interval_s
    )


def _power(c: _Checker, raw: Any, key: str) -> PowerModel:
    data = c.mapping(raw, key, ("idle_w", "busy_w", "tx_w", "rx_w"))
    d = PowerModel()
    values = {n: c.number(data, key, n, getattr(d, n), minimum=0.0)
              for n in ("idle_w", "busy_w", "tx_w", "rx_w")}
    if values["busy_w"] < values["idle_w"]:
        c.fail(_join(key, "busy_w"), "must be >= idle_w")
    return PowerModel(**values)


def _node(c: _Checker, raw: Any, key: str) -> NodeSpec:
    data = c.mapping(raw, key, ("id", "speed", "slots", "queue_size", "power", "battery",
                                "uplink", "down", "vms", "executor"))
    battery = None
    if data.get("battery") is not None:
        bkey = _join(key, "battery")
        b = c.mapping(data["battery"], bkey, ("capacity_j", "initial"))
        battery = BatterySpec(
            capacity_j=c.number(b, bkey, "capacity_j", positive=True, required=True),
            initial=c.number(b, bkey, "initial", 1.0, minimum=0.0, maximum=1.0),
        )
    outages = []
    for okey, item in c.items(data.get("down"), _join(key, "down")):
        o = c.mapping(item, okey, ("at_s", "for_s"))
        outages.append(Outage(at_s=c.number(o, okey, "at_s", minimum=0.0, required=True),
                              for_s=c.number(o, okey, "for_s", positive=True, required=True)))
    node_id = c.identifier(data, key, "id")
    if node_id == CLOUD_ID:
        c.fail(_join(key, "id"), f"{CLOUD_ID!r} is reserved for the cloud tier")
    uplink = data.get("uplink")
    return NodeSpec(
        id=node_id,
        speed=c.number(data, key, "speed", 1.0, positive=True),
        slots=c.integer(data, key, "slots", 1, minimum=1),
        queue_size=c.integer(data, key, "queue_size", 256, minimum=0),
        power=_power(c, data.get("power"), _join(key, "power")),
        battery=battery,
        uplink=None if uplink is None else _link(c, uplink, _join(key, "uplink"), None,
                                                 monitor=True),
        down=tuple(sorted(outages, key=lambda o: o.at_s)),
        vms=c.integer(data, key, "vms", 1, minimum=1) if "vms" in data else None,
        executor=_executor(c, data, key),
    )


def _executor(c: _Checker, data: Mapping[str, Any], key: str) -> str:
    executor = data.get("executor", "slots")
    if executor not in EXECUTORS:
        c.fail(_join(key, "executor"), f"must be one of {', '.join(EXECUTORS)}")
        return "slots"
    if executor == "ecs_vms":
        vms, slots = data.get("vms"), data.get("slots", 1)
        if not isinstance(vms, int) or not isinstance(slots, int) or vms < 1 or slots % vms:
            c.fail(_join(key, "vms"), "executor ecs_vms needs vms dividing slots (cores per VM)")
    return str(executor)


def _task_type(c: _Checker, raw: Any, key: str) -> TaskTypeSpec:
    data = c.mapping(raw, key, ("name", "work", "input_bytes", "output_bytes", "deadline_s",
                                "offload", "prior_s", "vm_utilization_pct", "exact"))
    offload = data.get("offload", "anywhere")
    if offload not in {p.value for p in OffloadPolicy}:
        c.fail(_join(key, "offload"), "must be one of local, neighbours, anywhere")
        offload = "anywhere"
    deadline = data.get("deadline_s")
    prior = data.get("prior_s")
    if not isinstance(data.get("exact", False), bool):
        c.fail(_join(key, "exact"), "must be true or false")
    return TaskTypeSpec(
        name=c.identifier(data, key, "name"),
        work=_dist(c, data.get("work"), _join(key, "work")),
        input_bytes=_dist(c, data.get("input_bytes", 0), _join(key, "input_bytes")),
        output_bytes=_dist(c, data.get("output_bytes", 0), _join(key, "output_bytes")),
        deadline_s=None if deadline is None
        else c.number(data, key, "deadline_s", positive=True),
        offload=OffloadPolicy(offload),
        prior_s=None if prior is None else c.number(data, key, "prior_s", minimum=0.0),
        exact=data.get("exact") is True,
        vm_utilization_pct=None if "vm_utilization_pct" not in data
        else c.number(data, key, "vm_utilization_pct", positive=True, maximum=100.0),
    )


def _arrival(c: _Checker, raw: Any, key: str, nodes: set[str], types: set[str]) -> ArrivalSpec:
    data = c.mapping(raw, key, ("node", "type", "process", "rate_per_s", "burst_rate_per_s",
                                "burst_every_s", "burst_for_s", "burst_offset_s"))
    node, ttype = data.get("node"), data.get("type")
    if node not in nodes:
        c.fail(_join(key, "node"), f"unknown node {node!r}; one of {', '.join(sorted(nodes))}")
    if ttype not in types:
        c.fail(_join(key, "type"), f"unknown task type {ttype!r}")
    process = data.get("process", "poisson")
    if process not in PROCESSES:
        c.fail(_join(key, "process"), f"must be one of {', '.join(PROCESSES)}")
        process = "poisson"
    bursty = process == "bursty"
    spec = ArrivalSpec(
        node=str(node), type=str(ttype), process=process,
        rate_per_s=c.number(data, key, "rate_per_s", minimum=0.0, required=True),
        burst_rate_per_s=c.number(data, key, "burst_rate_per_s", 0.0, minimum=0.0,
                                  required=bursty),
        burst_every_s=c.number(data, key, "burst_every_s", 0.0, minimum=0.0, required=bursty),
        burst_for_s=c.number(data, key, "burst_for_s", 0.0, minimum=0.0, required=bursty),
        burst_offset_s=c.number(data, key, "burst_offset_s", 0.0, minimum=0.0),
    )
    if not bursty:
        for name in ("burst_rate_per_s", "burst_every_s", "burst_for_s", "burst_offset_s"):
            if name in data:
                c.fail(_join(key, name), "applies only to process: bursty")
    elif spec.burst_every_s <= 0 or spec.burst_for_s > spec.burst_every_s:
        c.fail(_join(key, "burst_for_s"), "needs 0 < burst_for_s <= burst_every_s")
    return spec


def _event(c: _Checker, raw: Any, key: str, nodes: set[str]) -> LinkEvent | None:
    data = c.mapping(raw, key, ("at_s", "link"))
    at = c.number(data, key, "at_s", minimum=0.0, required=True)
    lkey = _join(key, "link")
    if "link" not in data:
        c.fail(lkey, "is required (the only event kind is a link change)")
        return None
    link = c.mapping(data["link"], lkey, ("node", "to", "rtt_s", "bandwidth_bps"))
    node, to = link.get("node"), link.get("to", CLOUD_ID)
    if node not in nodes:
        c.fail(_join(lkey, "node"), f"unknown node {node!r}")
    if to != CLOUD_ID and (to not in nodes or to == node):
        c.fail(_join(lkey, "to"), "must be 'cloud' or another node's id")
    if "rtt_s" not in link and "bandwidth_bps" not in link:
        c.fail(lkey, "needs rtt_s and/or bandwidth_bps")
    rtt = c.number(link, lkey, "rtt_s", minimum=0.0) if "rtt_s" in link else None
    bw = c.number(link, lkey, "bandwidth_bps", positive=True) if "bandwidth_bps" in link else None
    return LinkEvent(at_s=at, node=str(node), to=str(to), rtt_s=rtt, bandwidth_bps=bw)


def _policy(c: _Checker, raw: Any) -> CostParams:
    """The `policy:` block: the same keys, defaults and checks as the config's policy section."""
    if raw is None:
        return PolicySettings().to_params()
    if not isinstance(raw, Mapping):
        c.fail("policy", "must be a mapping")
        return PolicySettings().to_params()
    try:
        return PolicySettings(**raw).to_params()
    except ValidationError as exc:
        for err in exc.errors(include_input=False, include_url=False):
            key = ".".join(["policy", *(str(part) for part in err["loc"])])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            c.fail(key, msg.removeprefix("Value error, "))
    except ValueError as exc:  # the core's own parameter checks
        c.fail("policy", str(exc))
    return PolicySettings().to_params()


TOP_KEYS = ("version", "name", "description", "duration_s", "seed", "cloud", "links", "nodes",
            "task_types", "arrivals", "events", "policy", "telemetry", "devices")
LINK_MODEL_KEYS = {"wan": WAN_MODELS, "man": MAN_MODELS, "wlan": WLAN_MODELS}


def _link_models(c: _Checker, raw: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Split `links:` into the default edge link's keys and the `wan`/`man`/`wlan` models."""
    if not isinstance(raw, Mapping):
        return raw, {}
    models: dict[str, str] = {}
    for kind, allowed in LINK_MODEL_KEYS.items():
        key = f"links.{kind}"
        block = c.mapping(raw.get(kind), key, ("model",))
        model = block.get("model", allowed[0])
        if model not in allowed:
            c.fail(f"{key}.model", f"must be one of {', '.join(allowed)}")
            model = allowed[0]
        models[kind] = model
    return {k: v for k, v in raw.items() if k not in LINK_MODEL_KEYS}, models


def _devices(c: _Checker, raw: Any, nodes: set[str], types: set[str]) -> DevicesSpec | None:
    if raw is None:
        return None
    data = c.mapping(raw, "devices", ("count", "apps", "start_s", "dwell_s"))
    apps = []
    for key, item in c.items(data.get("apps"), "devices.apps", required=True):
        a = c.mapping(item, key, ("type", "share", "interarrival_s", "active_s", "idle_s"))
        if a.get("type") not in types:
            c.fail(_join(key, "type"), f"unknown task type {a.get('type')!r}")
        apps.append(DeviceApp(
            type=str(a.get("type")),
            share=c.number(a, key, "share", positive=True, maximum=100.0, required=True),
            interarrival_s=c.number(a, key, "interarrival_s", positive=True, required=True),
            active_s=c.number(a, key, "active_s", positive=True, required=True),
            idle_s=c.number(a, key, "idle_s", minimum=0.0, required=True),
        ))
    dwell: list[tuple[str, float]] = []
    raw_dwell = data.get("dwell_s")
    if raw_dwell is not None:
        d = c.mapping(raw_dwell, "devices.dwell_s", sorted(nodes))
        if set(d) != nodes:
            c.fail("devices.dwell_s", "needs a mean dwell time for every node")
        dwell = [(n, c.number(d, "devices.dwell_s", n, positive=True, required=True))
                 for n in sorted(d) if n in nodes]
    return DevicesSpec(
        count=c.integer(data, "devices", "count", 1, minimum=0),
        apps=tuple(apps),
        start_s=c.number(data, "devices", "start_s", 0.0, minimum=0.0),
        dwell_s=tuple(dwell),
    )


def _seed(c: _Checker, data: Mapping[str, Any]) -> int:
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        c.fail("seed", "must be a non-negative integer")
        return 0
    return seed


def _nodes(c: _Checker, data: Mapping[str, Any]) -> tuple[NodeSpec, ...]:
    nodes = tuple(_node(c, raw, key) for key, raw in c.items(data.get("nodes"), "nodes",
                                                                required=True))
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.id in seen:
            c.fail(f"nodes.{i}.id", f"duplicate node id {node.id!r}")
        seen.add(node.id)
    return nodes


def _types(c: _Checker, data: Mapping[str, Any]) -> tuple[TaskTypeSpec, ...]:
    types = tuple(_task_type(c, raw, key)
                  for key, raw in c.items(data.get("task_types"), "task_types", required=True))
    names = [t.name for t in types]
    for i, name in enumerate(names):
        if name in names[:i]:
            c.fail(f"task_types.{i}.name", f"duplicate task type {name!r}")
    return types


def parse_scenario(data: Any, *, name: str = "scenario") -> Scenario:
    """Validate a parsed YAML document; raises ScenarioError listing every problem."""
    c = _Checker()
    if not isinstance(data, Mapping):
        raise ScenarioError([("", "the scenario must be a YAML mapping")])
    c.mapping(data, "", TOP_KEYS)
    if data.get("version") != 1:
        c.fail("version", "must be 1")
    nodes = _nodes(c, data)
    types = _types(c, data)
    node_ids, type_names = {n.id for n in nodes}, {t.name for t in types}
    devices = _devices(c, data.get("devices"), node_ids, type_names)
    arrivals = tuple(_arrival(c, raw, key, node_ids, type_names)
                     for key, raw in c.items(data.get("arrivals"), "arrivals",
                                             required=devices is None))
    links, models = _link_models(c, data.get("links"))
    events = [_event(c, raw, key, node_ids) for key, raw in c.items(data.get("events"), "events")]
    tel = c.mapping(data.get("telemetry"), "telemetry", ("interval_s",))
    scenario = Scenario(
        name=str(data.get("name", name)),
        description=str(data.get("description", "")),
        duration_s=c.number(data, "", "duration_s", positive=True, required=True),
        seed=_seed(c, data),
        cloud=_cloud(c, data.get("cloud")),
        links=_link(c, links, "links", None),
        nodes=nodes,
        task_types=types,
        arrivals=arrivals,
        events=tuple(sorted((e for e in events if e), key=lambda e: e.at_s)),
        policy_params=_policy(c, data.get("policy")),
        telemetry_interval_s=c.number(tel, "telemetry", "interval_s", 1.0, positive=True),
        devices=devices,
        wan_model=models.get("wan", "shared"),
        man_model=models.get("man", "shared"),
        wlan_model=models.get("wlan", "none"),
    )
    if c.problems:
        raise ScenarioError(c.problems)
    return scenario


def load_scenario(source: str | Path | Mapping[str, Any]) -> Scenario:
    """A Scenario from a YAML file path or an already-parsed mapping (ScenarioError if bad)."""
    if isinstance(source, Mapping):
        return parse_scenario(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError([("", f"{path}: cannot read scenario: {exc.strerror}")]) from None
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ScenarioError([("", f"{path}: not valid YAML{where}")]) from None
    return parse_scenario(data, name=path.stem)
