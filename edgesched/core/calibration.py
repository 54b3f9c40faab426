"""Calibrated latency quantiles: split-conformal correction of the prediction errors (pure).

The cost model judges a deadline on `T_q = mean + z·std` with z the normal quantile of
`latency_quantile` (1.645 for 0.95). That covers 95 % only if the errors are normal and the
spread is right; a queue model, a prior or a heavy-tailed execution time breaks both. This
module measures what the quantile really covers and corrects it per target:

- every finished attempt gives a normalised error `r = (actual - mean) / std` (std floored at
  a millisecond: an exact `sleep` on an idle node has almost none);
- a target's calibrated z is the conformal quantile of its last `window` errors: the
  ⌈(n+1)·q⌉-th smallest of n, so that, for exchangeable errors, a new error falls at or
  below it with probability ≥ q. Below `min_samples` errors the normal z is kept; it is
  computed again every `recompute_every` errors (sorting the window at every completion was
  a tenth of the simulator's time, and 10 new errors of 200 barely move the quantile);
- coverage (`actual <= T_q as predicted when the attempt was chosen`) is counted per placement
  over the same window: the daemon exports it (`edgesched_prediction_coverage_ratio`), the
  simulator reports it per policy.

Bounded: `window` floats per target, at most `max_targets` targets (least recently observed
dropped), `window` booleans per placement.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass

STD_FLOOR_S = 1e-3
# A calibrated z is kept within 0 (a high quantile is never below the mean) and 3.3, twice
# the normal z at 0.95: wider, a heavy-tailed workload's fast targets are ruled out for slow
# ones and the mean suffers (generated heavy_tail scenario: 1.087x greedy_latency's mean
# latency uncapped, 1.001x capped, coverage 0.931 -> 0.926).
Z_MIN, Z_MAX = 0.0, 3.3


@dataclass(frozen=True, kw_only=True, slots=True)
class CalibrationParams:
    quantile: float = 0.95
    window: int = 200
    min_samples: int = 20
    max_targets: int = 1024
    recompute_every: int = 10

    def __post_init__(self) -> None:
        if not 0.5 <= self.quantile < 1.0:
            raise ValueError(f"quantile must be within [0.5, 1), got {self.quantile!r}")
        if min(self.window, self.min_samples, self.max_targets, self.recompute_every) < 1:
            raise ValueError("window, min_samples, max_targets and recompute_every must be "
                             ">= 1")


def conformal_z(scores: list[float], quantile: float) -> float:
    """The ⌈(n+1)·q⌉-th smallest of `scores` (the largest when that exceeds n)."""
    ordered = sorted(scores)
    k = min(len(ordered), math.ceil((len(ordered) + 1) * quantile))
    return ordered[k - 1]


class QuantileCalibrator:
    """Per-target conformal z for the latency quantile, and coverage per placement."""

    def __init__(self, params: CalibrationParams | None = None) -> None:
        self.params = params or CalibrationParams()
        self._scores: OrderedDict[str, deque[float]] = OrderedDict()
        self._z: dict[str, float] = {}
        self._since: dict[str, int] = {}  # errors of a target since its z was computed
        self._hits: dict[str, deque[bool]] = {}

    def observe(self, target: str, placement: str, *, actual_s: float, mean_s: float,
                std_s: float, q_s: float) -> bool:
        """One finished attempt on `target`: its latency and what the decision predicted
        (mean, spread, and the quantile the deadline was judged on). False if not finite."""
        if not all(math.isfinite(v) for v in (actual_s, mean_s, std_s, q_s)):
            return False
        p = self.params
        hits = self._hits.get(placement)
        if hits is None:
            hits = self._hits[placement] = deque(maxlen=p.window)
        hits.append(actual_s <= q_s)
        scores = self._scores.get(target)
        if scores is None:
            scores = self._scores[target] = deque(maxlen=p.window)
            if len(self._scores) > p.max_targets:
                old, _ = self._scores.popitem(last=False)
                self._z.pop(old, None)
                self._since.pop(old, None)
        else:
            self._scores.move_to_end(target)
        scores.append((actual_s - mean_s) / max(std_s, STD_FLOOR_S))
        since = self._since.get(target, 0) + 1
        if len(scores) >= p.min_samples and (target not in self._z
                                             or since >= p.recompute_every):
            z = conformal_z(list(scores), p.quantile)
            self._z[target] = min(Z_MAX, max(Z_MIN, z))
            since = 0
        self._since[target] = since
        return True

    @property
    def zs(self) -> dict[str, float]:
        """target -> calibrated z, for the targets with enough errors (read, do not change)."""
        return self._z

    def coverage(self, placement: str) -> tuple[int, int]:
        """(attempts whose latency was within the predicted quantile, attempts) recently."""
        hits = self._hits.get(placement)
        return (sum(hits), len(hits)) if hits else (0, 0)

    def coverage_ratio(self, placement: str) -> float | None:
        hit, n = self.coverage(placement)
        return hit / n if n else None
