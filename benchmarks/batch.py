"""A numpy batch path: many tasks against one view at once (benchmarks only; was core/batch.py).

`BatchView.from_candidates` turns the candidate list of one task type into per-target arrays;
`decide_batch` then scores every (task, target) pair with the same formulas as
`costmodel.evaluate_candidate` and picks each task's lowest-cost feasible target. By default
the tasks are decided independently against the same view (as many single decisions at one
instant would be), fully vectorised. With `spread=True` (a burst) they are decided in order and each
one sees the queue the earlier ones built: a target's k-th task beyond its free slots waits
k·exec/slots longer, in the score and in the deadline check. That pass is a plain-Python
loop over n·m numbers (exact, but several times slower per task).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edgesched.core.costmodel import CostParams, check
from edgesched.core.model import Candidate, Liveness, OffloadPolicy, Placement, TaskSpec

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_PLACEMENTS = (Placement.LOCAL, Placement.NEIGHBOUR, Placement.CLOUD)
_OFFLOADS = (OffloadPolicy.LOCAL, OffloadPolicy.NEIGHBOURS, OffloadPolicy.ANYWHERE)
# _ALLOWED[offload code, placement code]
_ALLOWED = np.array([[p.allows(q) for q in _PLACEMENTS] for p in _OFFLOADS], dtype=bool)
MB = 1_000_000.0


def offload_codes(policies: Sequence[OffloadPolicy]) -> IntArray:
    """Offload policies as the integer codes `decide_batch` takes."""
    index = {p: i for i, p in enumerate(_OFFLOADS)}
    return np.fromiter((index[p] for p in policies), dtype=np.int64, count=len(policies))


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchView:
    """Per-target arrays (length m) of everything the cost model reads from a Candidate."""

    node_ids: tuple[str, ...]
    placement: IntArray  # index into (local, neighbour, cloud)
    static_ok: BoolArray  # type supported, not excluded/offline/stale/full/under the floor
    wait: FloatArray
    wait_var: FloatArray
    exec_mean: FloatArray  # at the reference input size
    exec_var: FloatArray
    exec_s_per_mb: FloatArray  # how the mean grows with input size beyond the reference
    ref_mb: float
    remote: FloatArray  # 1.0 when data crosses a link
    rtt: FloatArray
    rtt_var: FloatArray
    s_per_bit: FloatArray  # 1 / bandwidth
    bw_rel: FloatArray  # bandwidth std / mean
    compute_w: FloatArray  # joules per second of execution on the target (0 for the cloud)
    origin_tx: FloatArray
    origin_rx: FloatArray
    target_rx: FloatArray  # 0 unless a neighbour
    target_tx: FloatArray
    w_origin: FloatArray  # energy weights by battery
    w_target: FloatArray
    fixed_cost: FloatArray  # money and suspect penalty, already weighted
    free_slots: IntArray  # tasks the target can start at once (spread mode)
    step_s: FloatArray  # extra wait per task queued beyond them: exec / slots

    @classmethod
    def from_candidates(
        cls,
        candidates: Sequence[Candidate],
        params: CostParams,
        *,
        ref_input_bytes: float = 0.0,
        exec_s_per_mb: Sequence[float] | None = None,
    ) -> BatchView:
        """Arrays from the candidates of one task type (built for an input of
        `ref_input_bytes`); `exec_s_per_mb` per target extrapolates to other input sizes."""
        rows = [_row(c, params) for c in candidates]
        col = list(zip(*rows, strict=True)) if rows else [()] * len(_ROW_FIELDS)
        arrays = {name: np.asarray(values, dtype=np.float64) for name, values in zip(
            _ROW_FIELDS, col, strict=True)}
        slope = np.zeros(len(rows)) if exec_s_per_mb is None else np.asarray(
            exec_s_per_mb, dtype=np.float64)
        return cls(
            node_ids=tuple(c.node_id for c in candidates),
            placement=np.asarray([_PLACEMENTS.index(c.placement) for c in candidates],
                                 dtype=np.int64),
            static_ok=np.asarray([_static_ok(c, params) for c in candidates], dtype=bool),
            exec_s_per_mb=slope,
            ref_mb=ref_input_bytes / MB,
            free_slots=np.asarray(
                [max(0, c.slots - c.running - c.queued) for c in candidates], dtype=np.int64),
            step_s=np.asarray(
                [c.exec.mean_s / c.slots if c.slots > 0 else np.inf for c in candidates],
                dtype=np.float64),
            **arrays,
        )


_ROW_FIELDS = (
    "wait", "wait_var", "exec_mean", "exec_var", "remote", "rtt", "rtt_var", "s_per_bit",
    "bw_rel", "compute_w", "origin_tx", "origin_rx", "target_rx", "target_tx", "w_origin",
    "w_target", "fixed_cost",
)


def _row(c: Candidate, params: CostParams) -> tuple[float, ...]:
    link = c.link
    remote = c.placement is not Placement.LOCAL and link is not None
    neighbour = remote and c.placement is not Placement.CLOUD
    origin = c.origin_power or c.power
    compute = 0.0 if c.placement is Placement.CLOUD else c.power.compute_energy_j(1.0)
    origin_battery = c.battery if c.placement is Placement.LOCAL else c.origin_battery
    fixed = params.money_weight * c.money_cost
    if c.liveness is Liveness.SUSPECT:
        fixed += params.latency_weight * params.suspect_penalty_s
    return (
        c.est_wait_s, c.wait_std_s**2, c.exec.mean_s, c.exec.std_s**2, float(remote),
        link.rtt_s if remote and link else 0.0, link.rtt_std_s**2 if remote and link else 0.0,
        1.0 / link.bandwidth_bps if remote and link else 0.0,
        link.bandwidth_std_bps / link.bandwidth_bps if remote and link else 0.0,
        compute, origin.tx_w if remote else 0.0, origin.rx_w if remote else 0.0,
        c.power.rx_w if neighbour else 0.0, c.power.tx_w if neighbour else 0.0,
        params.energy_weight_at(origin_battery), params.energy_weight_at(c.battery), fixed,
    )


_PROBE = TaskSpec(task_type="", input_bytes=0.0, output_bytes=0.0, work=0.0)  # offload: anywhere


def _static_ok(c: Candidate, params: CostParams) -> bool:
    """Every constraint but the task-dependent ones (offload policy, deadline)."""
    return check(c, params, 0.0, None, _PROBE) is None


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchDecision:
    """Per task (length n): the chosen target index (-1 = nothing feasible) and its figures;
    per (task, target) the full matrices, for explanations."""

    chosen: IntArray
    score: FloatArray  # n x m, inf where infeasible
    latency_mean_s: FloatArray  # n x m
    latency_q_s: FloatArray  # n x m
    energy_j: FloatArray  # n x m
    feasible: BoolArray  # n x m, against the view alone
    extra_wait_s: FloatArray  # n: queueing behind earlier tasks of the batch (spread mode)

    def chosen_ids(self, view: BatchView) -> list[str | None]:
        return [view.node_ids[i] if i >= 0 else None for i in self.chosen.tolist()]


def decide_batch(
    view: BatchView,
    params: CostParams,
    *,
    input_bytes: FloatArray,
    output_bytes: FloatArray,
    remaining_s: FloatArray | None = None,
    offload: IntArray | None = None,
    spread: bool = False,
) -> BatchDecision:
    """Decide n tasks against one view. `remaining_s` uses NaN for "no deadline"; `offload`
    holds `offload_codes` (default: anywhere); `spread` feeds the batch's own load back."""
    n, m = len(input_bytes), len(view.node_ids)
    mb = (np.asarray(input_bytes, dtype=np.float64) / MB)[:, None]
    up = 8.0 * np.asarray(input_bytes, dtype=np.float64)[:, None] * view.s_per_bit
    down = 8.0 * np.asarray(output_bytes, dtype=np.float64)[:, None] * view.s_per_bit
    exec_mean = np.maximum(view.exec_mean + view.exec_s_per_mb * (mb - view.ref_mb), 0.0)
    mean = view.wait + exec_mean + up + down + view.rtt
    rel2 = view.bw_rel * view.bw_rel
    var = view.exec_var + view.wait_var + view.rtt_var + (up * up + down * down) * rel2
    q = mean + params.z * np.sqrt(var)
    e_origin = view.origin_tx * up + view.origin_rx * down
    e_target = view.compute_w * exec_mean + view.target_rx * up + view.target_tx * down
    score = params.latency_weight * mean + view.w_origin * e_origin + view.w_target * e_target
    score += view.fixed_cost
    ok = np.broadcast_to(view.static_ok, (n, m))
    if offload is not None:
        ok = ok & _ALLOWED[np.asarray(offload, dtype=np.int64)[:, None], view.placement]
    if remaining_s is not None:
        rem = np.asarray(remaining_s, dtype=np.float64)[:, None]
        ok = ok & ~(q > rem)  # NaN (no deadline) compares False: never violated
    score = np.where(ok, score, np.inf)
    extra = np.zeros(n)
    if m == 0:
        chosen = np.full(n, -1, dtype=np.int64)
    elif spread:
        chosen, extra = _spread(view, params, score, q, remaining_s)
    else:
        best = np.argmin(score, axis=1)
        chosen = np.where(np.isfinite(score[np.arange(n), best]), best, -1).astype(np.int64)
    return BatchDecision(
        chosen=chosen, score=score, latency_mean_s=mean, latency_q_s=q,
        energy_j=e_origin + e_target, feasible=ok, extra_wait_s=extra,
    )


def _spread(
    view: BatchView, params: CostParams, score: FloatArray, q: FloatArray,
    remaining_s: FloatArray | None,
) -> tuple[IntArray, FloatArray]:
    """Sequential greedy: task i takes its best target given the queue tasks 0..i-1 built."""
    n, m = score.shape
    rows, qrows = score.tolist(), q.tolist()
    rem = [math.inf] * n if remaining_s is None else [
        math.inf if math.isnan(r) else r for r in np.asarray(remaining_s, dtype=float).tolist()]
    free, step = view.free_slots.tolist(), view.step_s.tolist()
    taken = [0] * m
    w_t = params.latency_weight
    chosen, extra = [-1] * n, [0.0] * n
    for i in range(n):
        row, qrow, r = rows[i], qrows[i], rem[i]
        best, best_score, best_wait = -1, math.inf, 0.0
        for j in range(m):
            over = taken[j] - free[j] + 1
            wait = step[j] * over if over > 0 else 0.0
            s = row[j] + w_t * wait
            if s < best_score and qrow[j] + wait <= r:
                best, best_score, best_wait = j, s, wait
        if best >= 0:
            taken[best] += 1
            chosen[i], extra[i] = best, best_wait
    return np.asarray(chosen, dtype=np.int64), np.asarray(extra, dtype=np.float64)
