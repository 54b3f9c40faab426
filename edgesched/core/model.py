"""Data model of the decision core: tasks, candidates, estimates and decisions (pure).

Every record here is built once and never changed. The small, shared values (power models,
estimates, snapshots, parameters) are frozen dataclasses; the records built several times
per task (task specs, node states, candidates, evaluations, decisions) are plain `slots`
dataclasses, because freezing makes every field assignment a call and they are the bulk of
what a decision builds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Placement(StrEnum):
    LOCAL = "local"
    NEIGHBOUR = "neighbour"
    CLOUD = "cloud"


class OffloadPolicy(StrEnum):
    """Where a task type may run."""

    LOCAL = "local"  # never leaves this node
    NEIGHBOURS = "neighbours"  # this node or edge neighbours
    ANYWHERE = "anywhere"  # also the cloud

    def allows(self, placement: Placement) -> bool:
        if self is OffloadPolicy.ANYWHERE:
            return True
        if self is OffloadPolicy.NEIGHBOURS:
            return placement is not Placement.CLOUD
        return placement is Placement.LOCAL


class Liveness(StrEnum):
    ONLINE = "online"
    SUSPECT = "suspect"
    OFFLINE = "offline"


class Outcome(StrEnum):
    """How one attempt, or one task, ended: the one vocabulary of the fallback chain
    (core/fallback.py), the dispatcher, the task pipeline and the simulator.

    A task's reply carries the wire `Status` (node/protocol.py `to_status`): ok -> ok,
    rejected and invalid -> rejected, failed and timeout -> failed, expired -> expired.
    Every wire status is also an outcome of the same name (`Outcome(status.value)`)."""

    OK = "ok"
    REJECTED = "rejected"  # the target refused it (admission): try the next one
    FAILED = "failed"  # the handler failed or the target broke: try the next one
    TIMEOUT = "timeout"  # no answer in time: abandon the attempt, try the next one
    EXPIRED = "expired"  # the task's deadline passed: terminal
    INVALID = "invalid"  # the input is wrong for the handler: terminal (replied `rejected`)


class RejectReason(StrEnum):
    """Why a candidate was not feasible for a task (a value, never an exception)."""

    OFFLOAD_POLICY = "offload_policy"
    OFFLINE = "offline"
    STALE = "stale"
    NO_CAPACITY = "no_capacity"
    DEADLINE = "deadline"
    BATTERY_FLOOR = "battery_floor"
    UNSUPPORTED_TYPE = "unsupported_type"
    EXCLUDED = "excluded"  # already tried for this task (fallback) or offload loop


def require_finite(name: str, value: float, *, minimum: float | None = None) -> None:
    """Reject NaN/inf (and values below `minimum`) at construction time."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class PowerModel:
    """Watts drawn by a node: idle, busy (per fully busy node), transmitting, receiving."""

    idle_w: float = 4.0
    busy_w: float = 8.0
    tx_w: float = 1.5
    rx_w: float = 1.0
    # Optional DVFS model: when kappa > 0, compute energy is kappa·f²·cycles with
    # cycles = f·exec_s (the effective switched capacitance model), instead of busy-idle watts.
    kappa: float = 0.0
    freq_hz: float = 0.0
    # Derived: the marginal watts of computing, κ·f³ with the DVFS model, else busy - idle
    # (never negative). Worked out once here: the cost model needs it for every candidate.
    compute_w: float = field(init=False, repr=False, compare=False, default=0.0)

    def __post_init__(self) -> None:
        for name in ("idle_w", "busy_w", "tx_w", "rx_w", "kappa", "freq_hz"):
            require_finite(name, getattr(self, name), minimum=0.0)
        if self.kappa > 0.0 and self.freq_hz > 0.0:
            watts = self.kappa * self.freq_hz**3
        else:
            watts = max(0.0, self.busy_w - self.idle_w)
        object.__setattr__(self, "compute_w", watts)

    def compute_energy_j(self, exec_s: float) -> float:
        """Marginal energy of running one task for `exec_s` seconds on this node."""
        return self.compute_w * exec_s


@dataclass(kw_only=True, slots=True)
class TaskSpec:
    """What the core needs to know about one task to place it (one per task, validated here,
    not changed once built)."""

    task_type: str
    input_bytes: float
    output_bytes: float
    # The size the execution-time estimators are linear in: the input's byte size unless the
    # task type says otherwise (tasks/builtins.py `work_units`: hash rounds, matmul n³, ...).
    work: float
    # The execution time when the input alone says it (e.g. `sleep`), else None.
    exact_s: float | None = None
    deadline_s: float | None = None  # relative to submission; None = no deadline
    priority: int = 0
    origin_device: str | None = None
    offload: OffloadPolicy = OffloadPolicy.ANYWHERE  # the task type's offload policy
    submitted_at: float | None = None  # `now` at submission; the deadline counts from here

    def __post_init__(self) -> None:
        require_finite("input_bytes", self.input_bytes, minimum=0.0)
        require_finite("output_bytes", self.output_bytes, minimum=0.0)
        require_finite("work", self.work, minimum=0.0)
        if self.exact_s is not None:
            require_finite("exact_s", self.exact_s, minimum=0.0)
        if self.deadline_s is not None:
            require_finite("deadline_s", self.deadline_s, minimum=0.0)
        if self.submitted_at is not None:
            require_finite("submitted_at", self.submitted_at)

    def remaining_s(self, now: float) -> float | None:
        """Time left until the deadline at `now` (None = no deadline)."""
        if self.deadline_s is None:
            return None
        if self.submitted_at is None:
            return self.deadline_s
        return self.deadline_s - max(0.0, now - self.submitted_at)


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkEstimate:
    """Smoothed link state from this node to a target: mean and std of RTT and bandwidth."""

    rtt_s: float
    rtt_std_s: float = 0.0
    bandwidth_bps: float = 1e8
    bandwidth_std_bps: float = 0.0

    def __post_init__(self) -> None:
        require_finite("rtt_s", self.rtt_s, minimum=0.0)
        require_finite("rtt_std_s", self.rtt_std_s, minimum=0.0)
        require_finite("bandwidth_bps", self.bandwidth_bps)
        if self.bandwidth_bps <= 0:
            raise ValueError("bandwidth_bps must be > 0")
        require_finite("bandwidth_std_bps", self.bandwidth_std_bps, minimum=0.0)


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecEstimate:
    """Predicted execution time of one task on one target (seconds): mean and std."""

    mean_s: float
    std_s: float = 0.0

    def __post_init__(self) -> None:
        require_finite("mean_s", self.mean_s, minimum=0.0)
        require_finite("std_s", self.std_s, minimum=0.0)


@dataclass(kw_only=True, slots=True)
class Candidate:
    """One possible target for one task, with everything the cost model needs, pre-resolved.

    Built by core/candidates.py (or the simulator's oracle) from data validated where it
    entered (the view's telemetry ingest, config, scenario files), clamped into range there;
    one per target per task, not changed once built.
    """

    node_id: str
    placement: Placement
    liveness: Liveness = Liveness.ONLINE
    age_s: float = 0.0  # how old the state below is
    slots: int = 1
    running: int = 0
    queued: int = 0
    est_wait_s: float = 0.0  # predicted queueing delay before a slot frees up
    wait_std_s: float = 0.0
    battery: float | None = None  # 0..1 of the target, None = mains powered
    power: PowerModel = field(default_factory=PowerModel)
    link: LinkEstimate | None = None  # None for local
    exec: ExecEstimate = field(default_factory=lambda: ExecEstimate(mean_s=0.0))
    supports_type: bool = True
    money_cost: float = 0.0  # per task (cloud)
    max_queue: int | None = None  # admission limit of the target, when known
    # The deciding node's own radio power and battery: it sends the input and receives the
    # output of an offloaded task (None = same as `power` / mains powered).
    origin_power: PowerModel | None = None
    origin_battery: float | None = None
    excluded: bool = False  # e.g. the node that forwarded this task to us (no ping-pong)
    # It refused an attempt and has not reported since (feedback.Refusals): no capacity.
    refused: bool = False
    # The z of the latency quantile on this target, calibrated from its past errors
    # (core/calibration.py); None = the normal z of `latency_quantile`.
    z_quantile: float | None = None


@dataclass(kw_only=True, slots=True)
class CandidateEval:
    """The cost model's verdict on one candidate for one task (not changed once built)."""

    node_id: str
    placement: Placement
    latency_mean_s: float
    latency_q_s: float  # the high quantile the deadline is judged on
    energy_j: float
    money: float
    score: float  # lower is better; inf when infeasible
    feasible: bool
    reason: RejectReason | None = None
    latency_std_s: float = 0.0  # spread of the predicted latency

    def as_dict(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "placement": self.placement.value,
            "latency_mean_s": self.latency_mean_s,
            "latency_q_s": self.latency_q_s,
            "energy_j": self.energy_j,
            "money": self.money,
            "score": self.score if math.isfinite(self.score) else None,
            "feasible": self.feasible,
            "reason": self.reason.value if self.reason else None,
            "latency_std_s": self.latency_std_s,
        }


@dataclass(kw_only=True, slots=True)
class Decision:
    """A placement: the chosen target, the ranked fallbacks, and every candidate's breakdown.

    `chosen is None` means nothing was feasible; the evaluations say why for each candidate.
    Not changed once built.
    """

    policy: str
    chosen: CandidateEval | None
    fallbacks: tuple[CandidateEval, ...]
    evaluations: tuple[CandidateEval, ...]
    # True when no candidate was predicted to meet the deadline and the policy, configured to
    # try anyway, ranked those that failed only on the deadline by their latency quantile.
    best_effort: bool = False

    @property
    def feasible(self) -> bool:
        return self.chosen is not None

    def ranked(self) -> tuple[CandidateEval, ...]:
        """The chosen target followed by the fallbacks, in order of preference."""
        return ((self.chosen,) if self.chosen is not None else ()) + self.fallbacks


@dataclass(kw_only=True, slots=True)
class NodeState:
    """What one node is known to be doing, as last reported (its own telemetry + state).

    Never changed once built: the view builds a new one for each report or liveness change,
    and snapshots share them."""

    node_id: str
    role: str = "edge"  # "edge" | "cloud"
    liveness: Liveness = Liveness.ONLINE
    incarnation: int = 0
    last_seen: float = 0.0  # observer's clock (`now`) when last heard from
    slots: int = 1
    running: int = 0
    queued: int = 0
    est_wait_s: float = 0.0
    cpu_util: float = 0.0
    battery: float | None = None
    power_w: float | None = None
    task_types: frozenset[str] = frozenset()

    def age(self, now: float) -> float:
        return max(0.0, now - self.last_seen)


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSnapshot:
    """A consistent, read-only view of the cluster that one decision (or a batch) reads."""

    now: float
    local: NodeState
    neighbours: tuple[NodeState, ...] = ()
